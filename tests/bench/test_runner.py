"""Whole runs of `python -m bench` against the in-process mock server: faults, SLOs, rate mode, early stops.

Runs use `--workers 0` (the load in a thread of this process) and short mock timings, except the Ctrl-C
test, which runs the real CLI in a subprocess (one worker process) and interrupts it like a terminal would.
"""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import bench
from bench.scheduler import arrival_gaps_ns

REPO = Path(__file__).resolve().parents[2]
STATS = ("mean", "p50", "p90", "p95", "p99", "max", "min", "n")
# The per-level keys docs/bench.md documents for summary.json.
LEVEL_KEYS = {
    "concurrency", "rate", "requests", "succeeded", "failed", "errors", "error_examples", "duration_s",
    "request_throughput_rps", "output_tokens", "prompt_tokens", "output_throughput_tok_s", "token_count_source",
    "ttft_ms", "itl_ms", "tpot_ms", "e2e_ms", "client_lag_ms", "goodput_rps", "slo_attainment",
    "cost_per_1k_tokens_usd", "cost_per_1m_tokens_usd", "client_send_delay_ms", "retried",
    "server_ttft_ms", "gateway_share_ttft_ms",
    "warmup_requests", "client_cpu_s", "client_cpu_ms_per_request", "stopped_early", "warnings",
    "ttft_ms_all", "e2e_ms_all", "throttled", "error_share", "valid", "why", "client_cpu_share",  # bench.stats
    "start_unix_s", "prompt_tokens_check",  # bench.workload_stats (shards' time line; requested vs counted)
    "server_metrics",  # bench.server_metrics: the mock serves /metrics
}  # fmt: skip
TOP_KEYS = {"target", "config", "client", "run_id", "started_at", "finished_at", "status", "levels",
            "server_metrics"}

# Mock fault -> the error kind the bench must record (as in test_backend), 1/16 of requests each, so each
# level of 16 requests (server requests 0-15, then 16-31) gets exactly one of each.
FAULT_KINDS = {
    "http_500": "http_5xx",
    "http_429": "http_429",
    "disconnect": "disconnected",
    "stream_cut": "stream_cut",
    "malformed_sse": "malformed_sse",
    "stream_error": "stream_error",
    "empty": "no_content",
    "stall": "timeout",
}
SLO_TTFT_MS = 40.0


def run_bench(url, out, *args):
    return bench.run([url, "--workers", "0", "--warmup", "0", "--max-tokens", "8", "--out", str(out),
                      "--no-progress", "--no-charts", *args])


def read_run(out: Path) -> tuple[dict, list[dict]]:
    summary = json.loads((out / "summary.json").read_text())
    records = [json.loads(line) for line in (out / "requests.jsonl").read_text().splitlines()]
    return summary, records


def test_mock_fault_mix_gives_each_kind_its_exact_share():
    from bench.mock_server import MockConfig, _State

    state = _State(MockConfig(faults={"http_500": 0.1, "stall": 0.05, "empty": 0.2}))
    picks = [state.pick_fault(i) for i in range(100)]
    assert {kind: picks.count(kind) for kind in ("http_500", "stall", "empty", None)} == {
        "http_500": 10, "stall": 5, "empty": 20, None: 65,
    }
    assert picks[:20].count("empty") == 4 and picks[:20].count("stall") == 1  # spread, not bunched


def test_fault_mix_at_two_levels(tmp_path, mock_server):
    faults = {kind: 1 / 16 for kind in FAULT_KINDS} | {"buffered": 1 / 16}
    server = mock_server(ttft_ms=5, itl_ms=10, faults=faults)
    out = tmp_path / "run"
    code = run_bench(server.url, out, "--model", "mock-model", "--concurrency", "2,4", "--requests", "16",
                     "--timeout", "500ms", "--slo-ttft-ms", str(SLO_TTFT_MS), "--price-per-hour", "3.6",
                     "--allow-errors")
    assert code == 0  # failures are counted; the run goes on through every level (exit 4 without the flag)
    summary, records = read_run(out)
    assert set(summary) == TOP_KEYS and summary["status"] == "complete"
    assert summary["config"]["slo"]["ttft_ms"] == SLO_TTFT_MS
    assert server.state.count == 32 and dict(server.state.by_fault) == dict.fromkeys(faults, 2)
    assert [lv["concurrency"] for lv in summary["levels"]] == [2, 4]
    assert len(records) == 32 and all(not r["warmup"] for r in records)

    for index, lv in enumerate(summary["levels"]):
        assert set(lv) == LEVEL_KEYS
        for metric in ("ttft_ms", "itl_ms", "tpot_ms", "e2e_ms", "client_lag_ms"):
            assert set(lv[metric]) == set(STATS), metric
        recs = [r for r in records if r["level"] == index]
        ok = [r for r in recs if r["ok"]]
        failed = [r for r in recs if not r["ok"]]
        assert lv["rate"] is None
        assert (lv["requests"], lv["succeeded"], lv["failed"]) == (16, 8, 8) == (len(recs), len(ok), len(failed))
        assert lv["errors"] == dict.fromkeys(FAULT_KINDS.values(), 1)
        assert sorted(r["error"] for r in failed) == sorted(FAULT_KINDS.values())
        assert set(lv["error_examples"]) == set(lv["errors"])
        # Failed requests stay out of every latency statistic but count in client lag.
        assert all("ttft_ms" not in r for r in failed)
        assert lv["ttft_ms"]["n"] == lv["e2e_ms"]["n"] == lv["tpot_ms"]["n"] == lv["succeeded"]
        assert lv["itl_ms"]["n"] == sum(len(r["itl_ms"]) for r in ok)
        assert lv["client_lag_ms"]["n"] == lv["requests"]
        assert lv["ttft_ms"]["max"] == pytest.approx(max(r["ttft_ms"] for r in ok), abs=1e-3)
        assert lv["output_tokens"] == 8 * 8 and lv["token_count_source"] == "usage"
        assert lv["duration_s"] > 0
        assert lv["request_throughput_rps"] == pytest.approx(8 / lv["duration_s"], rel=1e-3)
        assert lv["output_throughput_tok_s"] == pytest.approx(64 / lv["duration_s"], rel=1e-3)
        # $3.6/h = $0.001/s: cost per 1k tokens = 0.001 / (tok/s) * 1000.
        assert lv["cost_per_1k_tokens_usd"] == pytest.approx(1 / lv["output_throughput_tok_s"], rel=1e-3)
        # Goodput and SLO attainment: failures are in the denominator and never meet the SLO.
        met = sum(1 for r in ok if r["ttft_ms"] <= SLO_TTFT_MS)
        assert lv["slo_attainment"] == pytest.approx(met / 16, abs=1e-4)
        assert lv["goodput_rps"] == pytest.approx(met / lv["duration_s"], rel=1e-3)
        # The buffered reply arrives whole after ~75 ms: it succeeds but always misses the TTFT SLO.
        buffered = [r for r in ok if r["single_read"]]
        assert len(buffered) == 1 and buffered[0]["ttft_ms"] > SLO_TTFT_MS
        assert lv["slo_attainment"] <= 7 / 16


def test_every_request_failing_exits_1_with_summary(tmp_path, mock_server, capsys):
    server = mock_server(faults={"http_500": 1.0})
    out = tmp_path / "run"
    assert run_bench(server.url, out, "--model", "m", "--concurrency", "2", "--requests", "6") == 1
    summary, records = read_run(out)
    assert summary["status"] == "complete" and len(records) == 6
    lv = summary["levels"][0]
    assert (lv["requests"], lv["succeeded"], lv["failed"], lv["errors"]) == (6, 0, 6, {"http_5xx": 6})
    assert lv["ttft_ms"]["n"] == 0 and lv["ttft_ms"]["p50"] is None
    assert lv["goodput_rps"] == 0 and lv["slo_attainment"] == 0 and lv["token_count_source"] is None
    assert (out / "report.md").exists()
    assert "every request failed" in capsys.readouterr().err


def test_max_error_rate_stops_early_with_exit_3(tmp_path, mock_server):
    server = mock_server(faults={"http_500": 0.5})
    out = tmp_path / "run"
    code = run_bench(server.url, out, "--model", "m", "--concurrency", "2,4", "--requests", "400",
                     "--max-error-rate", "20%")
    assert code == 3
    summary, records = read_run(out)
    assert summary["status"] == "max_error_rate"
    assert len(summary["levels"]) == 1  # the next level never starts
    lv = summary["levels"][0]
    assert 20 <= lv["requests"] < 400 and lv["succeeded"] > 0
    assert "--max-error-rate" in lv["stopped_early"]
    assert any("stopped early" in w for w in lv["warnings"])
    assert len(records) == lv["requests"] and server.state.count < 400


@pytest.mark.parametrize("arrival", ["constant", "poisson"])
def test_rate_mode_arrivals_follow_the_schedule(tmp_path, mock_server, arrival):
    rate, n = 50.0, 25
    server = mock_server()
    out = tmp_path / "run"
    code = run_bench(server.url, out, "--model", "m", "--rate", str(rate), "--arrival", arrival,
                     "--concurrency", "16", "--requests", str(n), "--seed", "7")
    assert code == 0
    summary, records = read_run(out)
    assert summary["config"]["mode"] == "rate" and summary["config"]["arrival"] == arrival
    lv = summary["levels"][0]
    assert (lv["rate"], lv["concurrency"], lv["requests"], lv["succeeded"]) == (rate, 16, n, n)
    assert server.state.count == n

    # The schedule is exactly the seeded arrival process (one worker: its rng is "seed:level:worker").
    gaps = arrival_gaps_ns(rate, arrival, random.Random("7:0:0"))
    expected, t = [], 0
    for _ in range(n):
        expected.append(t / 1e9)
        t += int(next(gaps))
    scheduled = sorted(r["scheduled_s"] for r in records)
    assert scheduled == pytest.approx(expected, abs=2e-6)
    planned_gaps = [b - a for a, b in zip(expected, expected[1:], strict=False)]
    mean_gap = sum(planned_gaps) / len(planned_gaps)
    if arrival == "constant":
        assert all(g == pytest.approx(1 / rate, abs=1e-6) for g in planned_gaps)
    else:  # exponential gaps: spread out (CV near 1), mean near 1/rate
        sd = (sum((g - mean_gap) ** 2 for g in planned_gaps) / len(planned_gaps)) ** 0.5
        assert 0.5 / rate < mean_gap < 2 / rate and sd / mean_gap > 0.5

    # Requests go out on schedule, never early; lag is what the records and the summary say.
    for r in records:
        assert r["start_s"] >= r["scheduled_s"] - 1e-6
        assert r["client_lag_ms"] == pytest.approx(1000 * (r["start_s"] - r["scheduled_s"]), abs=0.01)
    assert lv["client_lag_ms"]["n"] == n
    # The server saw the offered rate. Requests never go out early, so the server cannot see them
    # faster than planned: its arrivals span at least the planned span, less however late the first
    # one went out (its client lag) and 20 ms of connection set-up. The upper side is only loose: a
    # busy machine delays single arrivals, which the client_lag figures above account for exactly.
    arrivals = sorted(server.state.arrivals_ns)
    seen_span = (arrivals[-1] - arrivals[0]) / 1e9
    planned_span = expected[-1] - expected[0]
    first_lag_s = min(records, key=lambda r: r["scheduled_s"])["client_lag_ms"] / 1000
    assert planned_span - first_lag_s - 0.02 <= seen_span <= planned_span + 1.0


def _lines(path: Path) -> int:
    try:
        return path.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


def _ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)


# SIGINT to the group as a terminal's Ctrl-C; the same with SIGINT ignored on entry, as for anything a
# non-interactive shell starts in the background (nohup, CI); SIGTERM to the bench alone (kill, timeout).
@pytest.mark.parametrize(
    ("sig", "group", "preexec"),
    [(signal.SIGINT, True, None), (signal.SIGINT, True, _ignore_sigint), (signal.SIGTERM, False, None)],
    ids=["ctrl-c", "ctrl-c-when-started-in-background", "sigterm"],
)
def test_ctrl_c_writes_partial_results(tmp_path, mock_server, sig, group, preexec):
    server = mock_server(ttft_ms=5, itl_ms=20)  # ~150 ms a request: plenty in flight when Ctrl-C comes
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "bench", server.url, "--model", "m", "--concurrency", "2", "--requests", "1000",
           "--warmup", "0", "--max-tokens", "8", "--workers", "1", "--out", str(out), "--no-progress", "--no-charts"]
    # A session of its own: SIGINT goes to the whole process group, as a terminal's Ctrl-C does.
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)}, preexec_fn=preexec)
    try:
        deadline = time.monotonic() + 60
        while _lines(out / "requests.jsonl") < 4 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert proc.poll() is None, proc.communicate()
        if group:
            os.killpg(proc.pid, sig)
        else:
            os.kill(proc.pid, sig)
        stdout, stderr = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 130, stderr.decode()
    summary, records = read_run(out)
    assert summary["status"] == "interrupted" and summary["finished_at"]
    lv = summary["levels"][0]
    assert lv["stopped_early"] == "interrupted (Ctrl-C)"
    assert 4 <= lv["requests"] == len(records) < 1000 and lv["succeeded"] == lv["requests"]
    assert lv["ttft_ms"]["n"] == lv["succeeded"]
    assert (out / "report.md").exists() and "interrupted" in (out / "report.md").read_text()
    assert b"interrupted" in stderr
