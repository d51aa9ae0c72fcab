"""The time line and what the autoscaler did: exact figures from made-up records, then against the scripted mock."""

import json
import urllib.request

import orjson
import pytest

from bench.autoscaler import analyse, instance_hours, scale_events, scale_out_lags
from bench.config import BenchConfig
from bench.mock_capacity import Autoscale
from bench.profiles import parse_profile
from bench.runner import run_benchmark
from bench.stats import Slo
from bench.timeline import Timeline


def rec(start, end, ttft=100.0, ok=True, tokens=10, e2e=None):
    r = {"start_s": start, "end_s": end, "ok": ok, "warmup": False, "error": None if ok else "http_5xx"}
    if ok:
        r.update(ttft_ms=ttft, e2e_ms=e2e if e2e is not None else (end - start) * 1000, output_tokens=tokens,
                 tpot_ms=None)
    return r


def test_rows_put_requests_where_they_were_sent_and_tokens_where_they_finished():
    tl = Timeline(10, Slo(ttft_ms=500), duration_s=25)
    tl.add(rec(1, 2, ttft=100))
    tl.add(rec(2, 12, ttft=900, tokens=30))  # sent in window 0, finished in window 1
    tl.add(rec(3, 3.5, ok=False))
    tl.add(rec(21, 22, ttft=200))
    tl.add({**rec(4, 5), "warmup": True})
    tl.add_capacity(0.0, 1, 1)
    tl.add_capacity(9.0, 1, 2)
    tl.add_capacity(15.0, 2, 2)
    rows = tl.rows()
    assert [r["t_s"] for r in rows] == [0, 10, 20]
    assert [r["window_s"] for r in rows] == [10, 10, 5]  # the last is what is left of the 25 s
    assert [r["rps"] for r in rows] == [0.3, 0.0, 0.2]
    assert [r["output_tok_s"] for r in rows] == [1.0, 3.0, 2.0]
    assert rows[0]["ttft_ms"] == {"p50": 500.0, "p95": 860.0}
    assert rows[1]["ttft_ms"] == {"p50": None, "p95": None}
    assert [r["errors"] for r in rows] == [1, 0, 0]
    assert [r["slo_attainment"] for r in rows] == [pytest.approx(1 / 3, abs=1e-4), None, 1.0]
    assert [r["capacity"] for r in rows] == [{"current": 1, "desired": 2}, {"current": 2, "desired": 2},
                                             {"current": 2, "desired": 2}]
    assert set(rows[0]) == {"t_s", "window_s", "rps", "output_tok_s", "ttft_ms", "e2e_ms", "errors",
                            "slo_attainment", "capacity"}


def test_scale_events_from_polled_capacity():
    samples = [(0, 1, 1), (5, 1, 1), (10, 1, 3), (15, 2, 3), (20, 3, 3), (25, 3, 1), (30, 1, 1)]
    assert [(e["t_s"], e["kind"], e["from"], e["to"]) for e in scale_events(samples)] == [
        (10, "desired", 1, 3), (15, "ready", 1, 2), (20, "ready", 2, 3), (25, "desired", 3, 1), (30, "ready", 3, 1)]


def _rows(attainments, window=10):
    return [{"t_s": i * window, "window_s": window, "slo_attainment": a} for i, a in enumerate(attainments)]


def test_scale_out_lag_to_slo_and_to_capacity():
    profile = parse_profile("step:1@20s,5@40s,1@20s")
    rows = _rows([1, 1, 0.5, 0.9, 0.96, 1, 1, 1])  # violated from 20 to 40, good again at 40
    samples = [(0, 1, 1), (25, 1, 2), (35, 2, 2)]
    lags = scale_out_lags(rows, profile, samples, 0.95, 80)
    assert lags[1] == {"t_s": 20, "load_from": 1, "load_to": 5, "slo_back_s": 20,
                       "capacity_desired_s": 5, "capacity_ready_s": 15}
    assert lags[0]["slo_back_s"] == 0.0
    # A window exactly at the target meets it.
    assert scale_out_lags(_rows([1, 1, 0.5, 0.95, 1, 1, 1, 1]), profile, samples, 0.95, 80)[1]["slo_back_s"] == 10
    # Still violated when the profile ends: no recovery to report.
    assert scale_out_lags(_rows([1, 1, 0.5, 0.5, 0.5, 0.5]), parse_profile("step:1@20s,5@40s"), samples, 0.95,
                          60)[1]["slo_back_s"] is None


def test_instance_hours_integrate_the_polled_count():
    assert instance_hours([(0, 1, 1), (1800, 3, 3)], 3600, 7) == pytest.approx(0.5 + 1.5)
    assert instance_hours([(600, 2, 2)], 3600, 7) == pytest.approx(2)  # before the first poll: its value
    assert instance_hours([], 1800, 3) == pytest.approx(1.5)  # no reader: --instance-count throughout


def test_analysis_figures():
    profile = parse_profile("step:1@20s,5@40s")
    tl = Timeline(10, Slo(ttft_ms=500), duration_s=60)
    for t in (1, 11):
        tl.add(rec(t, t + 1))
    tl.add(rec(21, 22, ttft=900))
    tl.add(rec(22, 23, ok=False))  # 3 s before the scale event at 25: near it
    tl.add(rec(40, 41, ok=False))  # 15 s after: not near
    tl.add(rec(45, 46))
    tl.capacity = [(0, 1, 1), (25, 2, 2)]
    rows = tl.rows()
    result = analyse(tl, rows, profile, 0.95, price_per_hour=2.0, fixed_count=1, capacity_source="test")
    assert result["slo_violation_s"] == 20  # windows 20-30 (0 of 2 met) and 40-50 (1 of 2)
    assert result["windows_in_violation"] == 2
    assert result["failed_requests"] == 2
    assert result["failed_near_scale_events"] == 1
    assert [e["failed_near"] for e in result["scale_events"]] == [1, 1]
    assert result["instance_hours"] == pytest.approx((25 * 1 + 35 * 2) / 3600, abs=1e-6)
    assert result["cost_usd"] == pytest.approx(2 * 95 / 3600, abs=1e-6)
    assert result["cost_per_1k_tokens_usd"] == pytest.approx(2 * 95 / 3600 / 40 * 1000, abs=1e-6)


# -- against the scripted mock: the truth is its own log of capacity changes -------------------------------


def _truth(server_url: str, start_unix: float, t_step: float) -> dict:
    events = json.loads(urllib.request.urlopen(server_url.removesuffix("/v1") + "/capacity").read())["events"]
    ready = next(e for e in events if e["kind"] == "ready" and e["to"] > e["from"])
    desired = next(e for e in events if e["kind"] == "desired" and e["to"] > e["from"])
    return {"ready_s": ready["unix"] - start_unix - t_step, "desired_s": desired["unix"] - start_unix - t_step}


def _run(server, tmp_path, profile, **kw):
    cfg = BenchConfig(url=server.url + "/chat/completions", base_url=server.url, model="mock-model", workers=0,
                      progress=False, profile=parse_profile(profile), window_s=1.0, slo=Slo(ttft_ms=150),
                      capacity={"kind": "mock"}, capacity_interval_s=0.25, out_dir=tmp_path, price_per_hour=1.0,
                      **kw)
    result = run_benchmark(cfg)
    return result.summary


def test_step_profile_lag_and_violation_within_one_window_of_the_truth(mock_server, tmp_path):
    # 2 slots of ~60 ms: C=2 meets a 150 ms TTFT, C=8 waits ~3 services in the queue, until the scripted
    # autoscaler (queue > 1 for 1.5 s, ready 2.5 s later) brings 6 more slots; a closed loop leaves no backlog,
    # so the SLO is broken from the step exactly until the new slots serve.
    server = mock_server(ttft_ms=50, itl_ms=5, output_tokens=3, max_concurrent=2,
                         autoscale=Autoscale(max_slots=8, queue_above=1, sustain_s=1.5, provision_s=2.5, step=6))
    summary = _run(server, tmp_path, "cstep:2@4s,8@8s")
    truth = _truth(server.url, summary["levels"][0]["start_unix_s"], 4.0)
    auto = summary["autoscaler"]
    lag = auto["scale_out"][1]
    assert lag["t_s"] == 4.0
    assert abs(lag["capacity_ready_s"] - truth["ready_s"]) <= 1.0
    assert abs(lag["capacity_desired_s"] - truth["desired_s"]) <= 1.0
    assert abs(lag["slo_back_s"] - truth["ready_s"]) <= 1.0
    assert abs(auto["slo_violation_s"] - truth["ready_s"]) <= 1.0
    assert auto["failed_requests"] == 0
    assert [(e["kind"], e["from"], e["to"]) for e in auto["scale_events"]] == [("desired", 1, 4), ("ready", 1, 4)]
    rows = [orjson.loads(line) for line in (tmp_path / "timeline.jsonl").read_bytes().splitlines()]
    assert rows == summary["timeline"] and len(rows) == 12
    assert rows[0]["capacity"] == {"current": 1, "desired": 1} and rows[-1]["capacity"]["current"] == 4
    from bench.report import write_outputs

    charts = write_outputs(summary, tmp_path)
    assert tmp_path / "timeline.png" in charts
    report = (tmp_path / "report.md").read_text()
    assert "## The autoscaler" in report and "| load rise at |" in report
    assert f"Seconds in SLO violation: **{auto['slo_violation_s']:.1f} s**" in report


def test_rate_step_with_a_bounded_queue_counts_the_requests_turned_away(mock_server, tmp_path):
    # Open loop: 10/s, then 60/s on 2 slots of ~60 ms (~33/s): the queue (at most 2) overflows and the mock
    # answers 503 until 6 more slots serve (~133/s). Queued requests still meet the 150 ms TTFT; the ones
    # turned away do not, so the windows between the step and the new slots are in violation.
    server = mock_server(ttft_ms=50, itl_ms=5, output_tokens=3, max_concurrent=2, max_queue=2,
                         autoscale=Autoscale(max_slots=8, queue_above=1, sustain_s=1.0, provision_s=2.0, step=6))
    summary = _run(server, tmp_path, "step:10@3s,60@7s", arrival="constant", concurrency=(256,))
    truth = _truth(server.url, summary["levels"][0]["start_unix_s"], 3.0)
    auto = summary["autoscaler"]
    rejected = json.loads(urllib.request.urlopen(server.url.removesuffix("/v1") + "/capacity").read())["rejected"]
    assert rejected > 0 and auto["failed_requests"] == rejected
    assert abs(auto["scale_out"][1]["capacity_ready_s"] - truth["ready_s"]) <= 1.0
    assert abs(auto["slo_violation_s"] - truth["ready_s"]) <= 1.0
    assert auto["failed_near_scale_events"] > 0
    assert all(r["errors"] == 0 for r in summary["timeline"][:3])  # nothing turned away before the step
