"""bench.search: the decision logic on literal probe sequences, judging a level, and the whole search
against the mock server with a known capacity (N slots, fixed service time, the rest queue)."""

from __future__ import annotations

import json

import pytest

import bench
from bench.cli import build_parser, parse_fraction
from bench.config import DEFAULT_RATE_CAP, BenchConfig, UsageError
from bench.search import (
    Search,
    SearchPlan,
    SearchSlo,
    SearchSpec,
    by_load,
    describe_result,
    from_args,
    judge,
    report_lines,
)


def drive(search: Search, met) -> list:
    """Run a search against a pure function load -> met; the loads probed, in order."""
    loads = []
    while (load := search.next()) is not None:
        loads.append(load)
        search.record(load, met(load))
    return loads


# ------------------------------------------------------------------------------------- the decision


def test_rate_grows_by_two_then_bisects_to_the_precision():
    s = Search("max_rate", start=1, precision=0.05)
    assert drive(s, lambda r: r <= 37) == [1, 2, 4, 8, 16, 32, 64, 48, 40, 36, 38, 37]
    assert (s.answer, s.missed_at, s.stop_reason) == (37, 38, "precision reached")
    assert s.missed_at - s.answer <= 0.05 * s.answer


@pytest.mark.parametrize("truth", [0.3, 1.0, 2.7, 13.0, 99.0, 640.0])
@pytest.mark.parametrize("precision", [0.02, 0.1])
def test_rate_answer_is_within_the_precision_below_the_truth(truth, precision):
    s = Search("max_rate", start=1, precision=precision, max_probes=30)
    drive(s, lambda r: r <= truth)
    assert s.stop_reason == "precision reached"
    assert s.answer <= truth < s.missed_at
    assert s.missed_at - s.answer <= precision * s.answer + 0.001 * s.answer  # 4 significant digits


def test_concurrency_is_an_integer_and_ends_one_apart():
    s = Search("max_concurrency", start=1, precision=0.05)
    assert drive(s, lambda c: c <= 5) == [1, 2, 4, 8, 6, 5]
    assert (s.answer, s.missed_at) == (5, 6) and all(isinstance(c, int) for c, _ in s.probes)
    big = Search("max_concurrency", start=1, precision=0.05)
    drive(big, lambda c: c <= 300)
    assert big.answer <= 300 < big.missed_at and big.missed_at - big.answer <= 0.05 * big.answer


def test_loads_exactly_the_precision_apart_are_close_enough():
    s = Search("max_rate", start=4, precision=0.25)
    assert drive(s, lambda r: r <= 4.2) == [4, 8, 6, 5]  # 5 - 4 == 25% of 4: done, no probe at 4.5
    assert (s.answer, s.missed_at) == (4, 5)


def test_a_first_probe_that_misses_shrinks_the_load():
    s = Search("max_rate", start=8, precision=0.05)
    assert drive(s, lambda r: r <= 1.5) == [8, 4, 2, 1, 1.5, 1.75, 1.625, 1.562]
    assert s.answer == 1.5 and s.missed_at == 1.562 and s.stop_reason == "precision reached"


def test_bounds_and_max_probes_always_end_the_search():
    low = Search("max_rate", start=1, lower=0.25)
    assert drive(low, lambda r: False) == [1, 0.5, 0.25]
    assert low.answer is None and low.stop_reason == "even the lower bound 0.25 missed the SLO"
    high = Search("max_concurrency", start=4.0, upper=20.0)  # as the flags give them
    assert drive(high, lambda c: True) == [4, 8, 16, 20] and high.upper == 20 and isinstance(high.upper, int)
    assert high.answer == 20 and "upper bound 20 met the SLO" in high.stop_reason
    short = Search("max_rate", start=1, max_probes=5)
    assert len(drive(short, lambda r: r <= 1000)) == 5
    assert short.answer == 16 and short.stop_reason.startswith("max probes (5)")


def test_a_noisy_probe_never_puts_the_answer_above_a_miss():
    s = Search("max_rate", start=10)
    s.record(10, True)
    s.record(20, False)
    s.record(25, True)  # met above a miss: not believed
    assert (s.answer, s.missed_at) == (10, 20)
    s.record(8, False)  # a miss below the answer: the answer falls below it
    assert (s.answer, s.missed_at) == (None, 8)
    s.record(5, True)
    assert s.answer == 5


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"kind": "max_rps", "start": 1}, "search kind"),
        ({"kind": "max_rate", "start": 1, "precision": 0}, "--search-precision"),
        ({"kind": "max_rate", "start": 1, "precision": 1}, "--search-precision"),
        ({"kind": "max_rate", "start": 5, "lower": 6}, "lower <= start <= upper"),
        ({"kind": "max_rate", "start": 5, "upper": 4}, "lower <= start <= upper"),
        ({"kind": "max_concurrency", "start": 1.5}, "whole number"),
        ({"kind": "max_rate", "start": 1, "max_probes": 0}, "--search-max-probes"),
    ],
)
def test_bad_search_settings_are_named(kwargs, needle):
    with pytest.raises(ValueError, match=needle):
        Search(**kwargs)


def test_an_slo_is_required_and_checked():
    with pytest.raises(ValueError, match="needs an SLO"):
        SearchSlo()
    with pytest.raises(ValueError, match="percentile"):
        SearchSlo(ttft_ms=100, percentile="p97")
    with pytest.raises(ValueError, match="--slo-e2e-ms"):
        SearchSlo(e2e_ms=-1)


# ------------------------------------------------------------------------------------------ judging


def level(ttft95=100.0, tpot95=20.0, e2e95=1500.0, requests=100, failed=0, **extra):
    def stats(p95):
        return None if p95 is None else {"p50": p95 / 2, "p90": p95 * 0.9, "p95": p95, "p99": p95 * 3}

    return {"requests": requests, "failed": failed, "ttft_ms": stats(ttft95), "tpot_ms": stats(tpot95),
            "e2e_ms": stats(e2e95), "stopped_early": None, **extra}


def test_judge_every_limit_at_the_percentile_and_the_error_rate():
    slo = SearchSlo(ttft_ms=200, tpot_ms=25, e2e_ms=2000, max_error_rate=0.02)
    ok = judge(level(), slo)
    assert ok.met and ok.why == "met"
    assert ok.figures == {"ttft_ms_p95": 100.0, "tpot_ms_p95": 20.0, "e2e_ms_p95": 1500.0, "error_rate": 0.0}
    assert judge(level(ttft95=200.0), slo).met  # at the limit still meets it
    assert judge(level(ttft95=201.0), slo).why == "TTFT p95 201.0 > 200 ms"
    assert judge(level(tpot95=26.0, e2e95=2100.0), slo).why == "TPOT p95 26.0 > 25 ms; E2E p95 2,100.0 > 2000 ms"
    assert judge(level(failed=2), slo).met
    assert judge(level(failed=3), slo).why == "errors 3.0% > 2.0%"
    assert judge(level(failed=100), slo).why == "every request failed"
    assert judge(level(requests=0), slo).why == "no request measured"
    assert judge(level(tpot95=None), slo).why == "no TPOT measured"
    assert judge(level(stopped_early="interrupted (Ctrl-C)"), slo).why == "stopped early: interrupted (Ctrl-C)"


def test_judge_reads_the_percentile_it_is_given():
    # p99 is 3x p95 in these levels: p95 meets 250 ms, p99 does not.
    assert judge(level(ttft95=100.0), SearchSlo(ttft_ms=250)).met
    p99 = judge(level(ttft95=100.0), SearchSlo(ttft_ms=250, percentile="p99"))
    assert not p99.met and p99.figures["ttft_ms_p99"] == 300.0


def test_plan_makes_levels_records_probes_and_reports_the_operating_point(tmp_path):
    cfg = BenchConfig(url="http://h/v1/chat/completions", base_url="http://h/v1", model="m", concurrency=(64,),
                      warmup=None, out_dir=tmp_path)
    plan = SearchPlan(cfg, SearchSpec("max_rate", SearchSlo(ttft_ms=200), precision=0.2, start=2))
    runs = {2.0: 80.0, 4.0: 120.0, 8.0: 900.0, 6.0: 150.0, 7.0: 400.0}  # rate -> TTFT p95
    made = []
    for lv in plan.levels():
        made.append((lv.index, lv.concurrency, lv.rate, lv.warmup))
        plan.record({**level(ttft95=runs[lv.rate]), "rate": lv.rate, "concurrency": lv.concurrency,
                     "goodput_rps": lv.rate * 0.9, "output_throughput_tok_s": lv.rate * 64,
                     "cost_per_1k_tokens_usd": 1 / lv.rate, "cost_per_1m_tokens_usd": 1000 / lv.rate,
                     "valid": lv.rate not in (4.0, 6.0), "why": ["send delay p95 7 ms"] if lv.rate in (4.0, 6.0) else []})
    assert made == [(0, 64, 2.0, 2), (1, 64, 4.0, 4), (2, 64, 8.0, 8), (3, 64, 6.0, 6), (4, 64, 7.0, 7)]
    result = plan.result()
    assert result["kind"] == "max_rate" and result["max_rate_rps"] == 6.0 and result["first_miss"] == 7.0
    assert result["level"] == 3 and result["goodput_rps"] == 6.0 * 0.9
    assert result["cost_per_1k_tokens_usd"] == 1 / 6.0 and result["output_throughput_tok_s"] == 6.0 * 64
    assert result["slo"] == {"ttft_ms": 200, "tpot_ms": None, "e2e_ms": None, "percentile": "p95",
                             "max_error_rate": 0.01}
    assert result["stopped"] == "precision reached" and result["precision"] == 0.2
    assert [p["rate"] for p in result["probes"]] == [2.0, 4.0, 8.0, 6.0, 7.0]
    assert [p["met"] for p in result["probes"]] == [True, True, False, True, False]
    assert result["probes"][2]["why"] == "TTFT p95 900.0 > 200 ms" and result["probes"][2]["ttft_ms_p95"] == 900.0
    # Client-bound probes are judged on their figures and flagged; a warning where it decides the answer.
    assert [p["valid"] for p in result["probes"]] == [True, False, True, False, True]
    assert result["probes"][1]["invalid_why"] == ["send delay p95 7 ms"] and result["probes"][0]["invalid_why"] is None
    assert result["warnings"] == ["the answer (rate 6) was measured with the client as a bottleneck (send delay p95 "
                                  "7 ms): raise --workers or use a quieter client machine"]
    text = "\n".join(report_lines({"search": result}))
    assert "warning: the answer (rate 6)" in text
    assert "## Operating point" in text and "6 req/s; 7 missed" in text and "$0.16667 per 1k tokens" in text
    assert "| 8 | no | 900.0 |" in text


# --------------------------------------------------------------------------------------- the flags

URL = "http://127.0.0.1:9/v1"


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--find-max-rate", "--find-max-concurrency", "--slo-ttft-ms", "1"], "not both"),
        (["--find-max-rate", "--requests", "9"], "needs an SLO"),
        (["--find-max-rate", "--slo-ttft-ms", "100"], "each probe's length"),
        (["--find-max-rate", "--rate", "1,2", "--slo-ttft-ms", "1", "--requests", "9"], "drop --rate"),
        (["--find-max-concurrency", "--concurrency", "4", "--slo-ttft-ms", "1", "--requests", "9"],
         "drop --concurrency"),
        (["--find-max-rate", "--concurrency", "4,8", "--slo-ttft-ms", "1", "--requests", "9"], "in-flight cap"),
        (["--find-max-rate", "--slo-ttft-ms", "1", "--requests", "9", "--search-precision", "0"],
         "--search-precision"),
        (["--find-max-rate", "--slo-ttft-ms", "1", "--requests", "9", "--search-start", "50", "--search-max", "10"],
         "lower <= start <= upper"),
        (["--find-max-concurrency", "--slo-ttft-ms", "1", "--requests", "9", "--search-start", "2.5"], "whole number"),
        (["--find-max-rate", "--slo-ttft-ms", "1", "--requests", "9", "--slo-percentile", "p97"], "--slo-percentile"),
        (["--find-max-rate", "--slo-ttft-ms", "1", "--requests", "9", "--shard", "0/2"], "--shard"),
        (["--metrics-interval", "0"], "--metrics-interval"),
    ],
)
def test_bad_search_flags_exit_2_with_one_line(capsys, argv, needle):
    assert bench.run([URL, "--model", "m", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert needle in err


# ----------------------------------------------------------------- against a server of known capacity

# The mock serves SLOTS requests at once and queues the rest; each takes TTFT + (TOKENS - 1) x ITL.
# Margins are wide (TTFT 50 ms unqueued, ~400 ms queued, SLO 200 ms) and the load runs in a worker
# process of its own, so a busy machine (stalls of 70 ms seen at load average 8 on 2 cores) does not
# move the answer.
SLOTS, TTFT_MS, ITL_MS, TOKENS = 3, 50, 20, 16
SERVICE_S = (TTFT_MS + (TOKENS - 1) * ITL_MS) / 1000  # 0.35 s
SLO_TTFT_MS = 200  # a request that waits for a slot waits a good part of SERVICE_S: it misses


def search_run(server, out, *args):
    code = bench.run([server.url, "--workers", "1", "--max-tokens", str(TOKENS), "--out", str(out),
                      "--no-progress", "--no-charts", "--slo-ttft-ms", str(SLO_TTFT_MS), "--metrics-interval", "200ms",
                      *args])
    return code, json.loads((out / "summary.json").read_text())


def test_max_concurrency_is_the_servers_slots(tmp_path, mock_server):
    # Closed loop: up to SLOTS clients never wait (TTFT ~ 20 ms); one more and every cycle one request
    # waits a whole service time (~350 ms) for a slot: 1 in SLOTS+1 requests, over the 5% of p95.
    server = mock_server(ttft_ms=TTFT_MS, itl_ms=ITL_MS, max_concurrent=SLOTS)
    code, summary = search_run(server, tmp_path / "run", "--find-max-concurrency", "--requests", "24",
                               "--search-start", "2")
    assert code == 0 and summary["status"] == "complete"
    search = summary["search"]
    assert search["kind"] == "max_concurrency" and search["stopped"] == "precision reached"
    assert (search["max_concurrency"], search["first_miss"]) == (SLOTS, SLOTS + 1)
    probes = {p["concurrency"]: p for p in search["probes"]}
    assert [p["concurrency"] for p in search["probes"]] == [2, 4, 3]
    assert all(p["met"] == (c <= SLOTS) for c, p in probes.items())
    assert probes[4]["why"].startswith("TTFT p95 ")
    assert search["level"] == 2 and search["goodput_rps"] == summary["levels"][2]["goodput_rps"] > 0
    # The server's own view agrees: a queue only where the probe missed.
    waiting = {lv["concurrency"]: lv["server_metrics"]["vllm:num_requests_waiting"]["max"] for lv in summary["levels"]}
    assert waiting[2] == waiting[3] == 0 and waiting[4] >= 1
    report = (tmp_path / "run" / "report.md").read_text()
    assert "## Operating point" in report and "Highest concurrency meeting TTFT p95 <= 200 ms" in report


def test_max_rate_lands_within_the_precision_of_the_capacity(tmp_path, mock_server):
    # Constant arrivals: below slots / SERVICE_S (22.9 req/s) no request waits; above it the queue grows
    # by (1 - capacity/rate) x SERVICE_S / slots per request, so over 60 requests p95 TTFT passes the SLO
    # about 6% above the capacity. The answer must be within --search-precision below that.
    slots = 8
    capacity = slots / SERVICE_S
    server = mock_server(ttft_ms=TTFT_MS, itl_ms=ITL_MS, max_concurrent=slots)
    code, summary = search_run(server, tmp_path / "run", "--find-max-rate", "--arrival", "constant",
                               "--requests", "60", "--search-start", "8", "--search-precision", "10%",
                               "--price-per-hour", "3.6")
    search = summary["search"]
    assert code == 0 and search["stopped"] == "precision reached"
    answer, miss = search["max_rate_rps"], search["first_miss"]
    assert miss - answer <= 0.1 * answer
    assert capacity / 1.1 * 0.95 <= answer <= capacity * 1.1 and miss > capacity
    point = summary["levels"][search["level"]]
    assert point["rate"] == answer and search["cost_per_1k_tokens_usd"] == point["cost_per_1k_tokens_usd"] > 0
    assert all(p["met"] == (p["rate"] <= answer) for p in search["probes"])


def test_a_probe_stopped_by_the_error_limit_missed_and_the_search_goes_on(tmp_path, mock_server):
    # SLOTS slots and no queue: a third request in flight gets a 503, so past SLOTS the error rate is
    # about a third and --max-error-rate stops that probe early; the search carries on below it.
    server = mock_server(ttft_ms=TTFT_MS, itl_ms=ITL_MS, max_concurrent=2, max_queue=0)
    code, summary = search_run(server, tmp_path / "run", "--find-max-concurrency", "--requests", "30",
                               "--max-error-rate", "5%", "--search-start", "2")
    search = summary["search"]
    assert code == 0 and summary["status"] == "complete" and search["stopped"] == "precision reached"
    assert [p["concurrency"] for p in search["probes"]] == [2, 4, 3] and search["max_concurrency"] == 2
    assert search["slo"]["max_error_rate"] == 0.05
    # (503s come back at once, so the failing slots cycle fast: the first 20 requests can all be errors)
    for probe in search["probes"][1:]:
        assert probe["why"] in ("every request failed", f"errors {probe['error_rate']:.1%} > 5.0%")
    assert "over --max-error-rate" in summary["levels"][1]["stopped_early"]


def test_a_concurrency_probe_shorter_than_its_concurrency_is_warned_about(tmp_path):
    cfg = BenchConfig(url="http://h/v1/chat/completions", base_url="http://h/v1", model="m", out_dir=tmp_path)
    plan = SearchPlan(cfg, SearchSpec("max_concurrency", SearchSlo(ttft_ms=200), start=8, upper=16))
    for lv in plan.levels():
        plan.record({**level(requests=12), "rate": None, "concurrency": lv.concurrency})
    assert [p["concurrency"] for p in plan.probes] == [8, 16]
    assert plan.result()["warnings"] == [
        "the probe at concurrency 16 measured 12 requests, fewer than its concurrency: the server never held "
        "that many at once; give --requests of at least the concurrency, or --duration"]


# ------------------------------------------------------- edges the mutation run found unchecked (bench.search)


def test_a_met_probe_at_the_first_miss_is_not_believed():
    # Noise the other way round: the same load first missed, then met. The answer stays below the miss.
    s = Search("max_rate", start=10)
    s.record(10, True)
    s.record(20, False)
    s.record(20, True)
    assert (s.answer, s.missed_at) == (10, 20)


def test_a_miss_at_the_answer_drops_it_to_the_highest_met_below():
    same = Search("max_rate", start=10)
    same.record(10, True)
    same.record(10, False)  # the same load met, then missed: it is not an answer any more
    assert (same.answer, same.missed_at) == (None, 10)
    lower = Search("max_rate", start=5)
    for load, met in ((5, True), (10, True), (20, False), (8, False)):
        lower.record(load, met)
    assert (lower.answer, lower.missed_at) == (5, 8)  # 10 is above the new miss; 5 met below it


def test_rate_bisection_stops_where_four_significant_digits_cannot_split_the_loads():
    # A precision finer than the 4-digit rounding: 1 and 1.001 have no load between them (1.0005 rounds
    # to 1), nor 1.001 and 1.002 (1.0015 rounds to 1.002). The search stops there instead of re-probing.
    for truth, answer, miss in ((1.0004, 1.0, 1.001), (1.0016, 1.001, 1.002)):
        s = Search("max_rate", start=1, precision=0.0001, max_probes=30)
        probes = drive(s, lambda r, truth=truth: r <= truth)
        assert probes == [1, 2, 1.5, 1.25, 1.125, 1.062, 1.031, 1.015, 1.007, 1.003, 1.002, 1.001]
        assert (s.answer, s.missed_at, s.stop_reason) == (answer, miss, "precision reached")
        assert s.next() is None and s.stop_reason == "precision reached"


def test_one_probe_and_start_at_the_upper_bound_are_valid_searches():
    one = Search("max_rate", start=3, max_probes=1)
    assert drive(one, lambda r: True) == [3] and one.answer == 3
    assert one.stop_reason == "max probes (1) reached before the precision"
    top = Search("max_rate", start=5, upper=5)
    assert drive(top, lambda r: True) == [5] and top.stop_reason.startswith("the upper bound 5 met")


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"kind": "max_rps", "start": 1}, "expected one of max_rate, max_concurrency"),
        ({"kind": "max_rate", "start": 1, "lower": 0}, "search rate: need 0 < lower"),
        ({"kind": "max_concurrency", "start": 5, "upper": 4}, "search concurrency: need 0 < lower"),
        ({"kind": "max_concurrency", "start": 1.5}, "search start 1.5: a concurrency is a whole number"),
        ({"kind": "max_concurrency", "start": 4, "lower": 2.5}, "search lower 2.5"),
        ({"kind": "max_concurrency", "start": 4, "upper": 7.5}, "search upper 7.5"),
        ({"kind": "max_rate", "start": 1, "growth": 1}, "search growth 1"),
    ],
)
def test_bad_search_settings_name_the_setting_and_the_search(kwargs, needle):
    with pytest.raises(ValueError, match=needle):
        Search(**kwargs)


def test_slo_limits_and_error_rate_bounds():
    assert SearchSlo(tpot_ms=0.5).limits() == [("tpot", 0.5)]  # sub-millisecond TPOT limits are fine
    assert SearchSlo(ttft_ms=1, max_error_rate=0).max_error_rate == 0  # zero tolerance is a valid SLO
    for bad in ({"ttft_ms": 0}, {"ttft_ms": 1, "max_error_rate": 1}, {"ttft_ms": 1, "max_error_rate": 1.5}):
        with pytest.raises(ValueError, match="ttft|max error rate"):
            SearchSlo(**bad)
    with pytest.raises(ValueError, match="expected one of p50, p90, p95, p99"):
        SearchSlo(ttft_ms=100, percentile="p97")


def test_errors_at_exactly_one_percent_still_meet_the_slo():
    slo = SearchSlo(ttft_ms=200)  # the default limit, 1 %
    assert judge(level(failed=1), slo).met
    assert judge(level(failed=2), slo).why == "errors 2.0% > 1.0%"
    assert judge(level(requests=3, failed=1), slo).figures["error_rate"] == 0.3333  # 4 digits


def test_spec_defaults_and_explicit_bounds_reach_the_search():
    slo = SearchSlo(ttft_ms=200)

    def made(spec):
        s = spec.new_search()
        return (s.start, s.lower, s.upper, s.max_probes, s.precision)

    assert made(SearchSpec("max_rate", slo)) == (1.0, 0.01, 10_000.0, 16, 0.05)
    assert made(SearchSpec("max_concurrency", slo)) == (1, 1, 4096, 16, 0.05)
    assert made(SearchSpec("max_rate", slo, start=0.005)) == (0.005, 0.005, 10_000.0, 16, 0.05)  # below the min
    assert made(SearchSpec("max_rate", slo, start=20_000)) == (20_000, 0.01, 20_000, 16, 0.05)  # above the max
    assert made(SearchSpec("max_rate", slo, precision=0.1, start=2, lower=0.5, upper=100, max_probes=5)) == (
        2, 0.5, 100, 5, 0.1)


def test_descriptions_on_the_console():
    slo = SearchSlo(ttft_ms=200, e2e_ms=1500.5, percentile="p99", max_error_rate=0.05)
    assert slo.describe() == "TTFT p99 <= 200 ms, E2E p99 <= 1500.5 ms, errors <= 5.0%"
    assert SearchSpec("max_rate", slo).describe() == (
        "search: the highest rate (req/s) meeting TTFT p99 <= 200 ms, E2E p99 <= 1500.5 ms, errors <= 5.0%, to 5%")
    assert SearchSpec("max_concurrency", SearchSlo(tpot_ms=30), precision=0.1).describe() == (
        "search: the highest concurrency meeting TPOT p95 <= 30 ms, errors <= 1.0%, to 10%")


def _concurrency_plan(tmp_path):
    cfg = BenchConfig(url="http://h/v1/chat/completions", base_url="http://h/v1", model="m", out_dir=tmp_path)
    slo = SearchSlo(ttft_ms=200, e2e_ms=3000, percentile="p99", max_error_rate=0.05)
    return SearchPlan(cfg, SearchSpec("max_concurrency", slo, start=2, upper=8))


def test_concurrency_plan_report_at_p99_with_limits_met_exactly(tmp_path):
    plan = _concurrency_plan(tmp_path)
    # concurrency -> (TTFT p95, failed of 100); p99 is 3x p95 in these levels, E2E p99 is 3000 ms: at its limit
    runs = {2: (20.0, 0), 4: (50.0, 5), 8: (300.0, 10), 6: (80.0, 0), 5: (65.0, 0)}
    made = []
    for lv in plan.levels():
        made.append((lv.index, lv.concurrency, lv.rate))
        ttft95, failed = runs[lv.concurrency]
        plan.record({**level(ttft95=ttft95, tpot95=None, e2e95=1000.0, failed=failed), "rate": None,
                     "concurrency": lv.concurrency, "goodput_rps": lv.concurrency * 0.9,
                     "output_throughput_tok_s": lv.concurrency * 57.68, "valid": True, "why": []})
    assert made == [(0, 2, None), (1, 4, None), (2, 8, None), (3, 6, None), (4, 5, None)]
    result = plan.result()
    assert (result["max_concurrency"], result["first_miss"], result["level"]) == (5, 6, 4)
    assert (result["bounds"], result["max_probes"], result["stopped"]) == ([1, 8], 16, "precision reached")
    assert [p["goodput_rps"] for p in result["probes"]] == [1.8, 3.6, 7.2, 5.4, 4.5]
    assert result["warnings"] == []
    assert report_lines({"search": result}) == [
        "## Operating point", "",
        "Highest concurrency meeting TTFT p99 <= 200 ms, E2E p99 <= 3000 ms, errors <= 5.0%: 5 concurrent requests; "
        "6 missed (precision reached, 5 probes)",
        "at that point: goodput 4.50 req/s, 288 output tok/s", "",
        "Probes in the order run (precision 5%, bounds 1 to 8, at most 16 probes); times in ms at p99:", "",
        "| concurrency | met | TTFT p99 | TPOT p99 | E2E p99 | errors | why |", "|---|---|---|---|---|---|---|",
        "| 2 | yes | 60.0 | - | 3,000.0 | 0.0% | met |",
        "| 4 | yes | 150.0 | - | 3,000.0 | 5.0% | met |",
        "| 8 | no | 900.0 | - | 3,000.0 | 10.0% | errors 10.0% > 5.0%; TTFT p99 900.0 > 200 ms |",
        "| 6 | no | 240.0 | - | 3,000.0 | 0.0% | TTFT p99 240.0 > 200 ms |",
        "| 5 | yes | 195.0 | - | 3,000.0 | 0.0% | met |",
        "",
    ]


def test_a_search_where_nothing_met_reports_why_it_stopped(tmp_path):
    cfg = BenchConfig(url="http://h/v1/chat/completions", base_url="http://h/v1", model="m", out_dir=tmp_path)
    plan = SearchPlan(cfg, SearchSpec("max_rate", SearchSlo(ttft_ms=200, tpot_ms=30), start=1, lower=0.5))
    levels = iter([level(ttft95=None, requests=0), level(failed=100)])
    for lv in plan.levels():
        plan.record({**next(levels), "rate": lv.rate, "concurrency": lv.concurrency})
    result = plan.result()
    assert (result["max_rate_rps"], result["level"], result["goodput_rps"]) == (None, None, None)
    assert report_lines({"search": result})[:3] == [
        "## Operating point", "",
        "No rate probed met the SLO (TTFT p95 <= 200 ms, TPOT p95 <= 30 ms, errors <= 1.0%); even the lower bound 0.5 "
        "missed the SLO"]
    assert report_lines({"search": result})[-5:-1] == [
        "| rate (req/s) | met | TTFT p95 | TPOT p95 | E2E p95 | errors | why |", "|---|---|---|---|---|---|---|",
        "| 1 | no | - | 20.0 | 1,500.0 | - | no request measured |",
        "| 0.5 | no | 100.0 | 20.0 | 1,500.0 | 100.0% | every request failed |"]
    conc = SearchPlan(cfg, SearchSpec("max_concurrency", SearchSlo(ttft_ms=200), start=1))
    for lv in conc.levels():
        conc.record({**level(failed=100), "rate": None, "concurrency": lv.concurrency})
    assert describe_result(conc.result()) == [
        "No concurrency probed met the SLO (TTFT p95 <= 200 ms, errors <= 1.0%); even the lower bound 1 missed the SLO"]


def test_a_search_that_met_at_its_upper_bound_names_no_miss(tmp_path):
    cfg = BenchConfig(url="http://h/v1/chat/completions", base_url="http://h/v1", model="m", out_dir=tmp_path)
    plan = SearchPlan(cfg, SearchSpec("max_concurrency", SearchSlo(ttft_ms=200), start=8, upper=16))
    for lv in plan.levels():
        plan.record({**level(), "rate": None, "concurrency": lv.concurrency, "goodput_rps": 12.5,
                     "output_throughput_tok_s": 800.0})
    assert describe_result(plan.result()) == [
        "Highest concurrency meeting TTFT p95 <= 200 ms, errors <= 1.0%: 16 concurrent requests (the upper bound 16 "
        "met the SLO: capacity is at least that, 2 probes)",
        "at that point: goodput 12.50 req/s, 800 output tok/s"]


def test_the_operating_point_is_the_believed_answer_and_a_client_bound_first_miss_is_warned(tmp_path):
    cfg = BenchConfig(url="http://h/v1/chat/completions", base_url="http://h/v1", model="m", out_dir=tmp_path)
    plan = SearchPlan(cfg, SearchSpec("max_rate", SearchSlo(ttft_ms=200), start=10))
    for rate, ttft, valid in ((10.0, 100.0, True), (20.0, 900.0, False), (25.0, 150.0, True)):
        plan.record({**level(ttft95=ttft), "rate": rate, "concurrency": 256, "goodput_rps": rate / 2,
                     "output_throughput_tok_s": rate * 40, "cost_per_1k_tokens_usd": 0.01 / rate,
                     "cost_per_1m_tokens_usd": 10 / rate,
                     "valid": valid, "why": [] if valid else ["send delay p95 7 ms", "client CPU 97%"]})
    result = plan.result()
    assert describe_result(result)[:2] == [
        "Highest rate meeting TTFT p95 <= 200 ms, errors <= 1.0%: 10 req/s; 20 missed (running, 3 probes)",
        "at that point: goodput 5.00 req/s, 400 output tok/s, $0.00100 per 1k tokens ($1.00 per 1M)"]
    # 25 met above the miss at 20: not believed, so the operating point is the level at 10
    assert (result["max_rate_rps"], result["level"], result["goodput_rps"]) == (10.0, 0, 5.0)
    assert result["warnings"] == ["the first miss (rate 20) was measured with the client as a bottleneck (send delay "
                                  "p95 7 ms; client CPU 97%): raise --workers or use a quieter client machine"]
    assert result["stopped"] == "running"  # asked before the search ended
    assert plan.result("complete")["stopped"] == "running"
    assert plan.result("interrupted")["stopped"] == "run stopped: interrupted"


def test_a_concurrency_probe_with_as_many_requests_as_its_concurrency_is_not_warned_about(tmp_path):
    cfg = BenchConfig(url="http://h/v1/chat/completions", base_url="http://h/v1", model="m", out_dir=tmp_path)
    plan = SearchPlan(cfg, SearchSpec("max_concurrency", SearchSlo(ttft_ms=200), start=12, upper=12))
    for lv in plan.levels():
        plan.record({**level(requests=12), "rate": None, "concurrency": lv.concurrency})
    assert plan.result()["max_concurrency"] == 12 and plan.result()["warnings"] == []


def test_by_load_sorts_a_searchs_levels_for_the_charts():
    plain = {"levels": [{"concurrency": 8, "rate": None}, {"concurrency": 2, "rate": None}]}
    assert by_load(plain) is plain  # levels in the order run are already by load
    rates = {"search": {"kind": "max_rate"}, "levels": [{"rate": 4.0}, {"rate": 16.0}, {"rate": 8.0}]}
    assert [lv["rate"] for lv in by_load(rates)["levels"]] == [4.0, 8.0, 16.0]
    conc = {"search": {"kind": "max_concurrency"},
            "levels": [{"concurrency": 4, "rate": None}, {"concurrency": 8, "rate": None}, {"concurrency": 6, "rate": None}]}
    assert [lv["concurrency"] for lv in by_load(conc)["levels"]] == [4, 6, 8]
    assert by_load(conc)["search"] == {"kind": "max_concurrency"}


def _flags(*argv):
    args = build_parser().parse_args([URL, *argv])
    return from_args(args, parse_fraction, DEFAULT_RATE_CAP)


def test_flags_make_the_search_and_the_levels_concurrency():
    assert _flags("--requests", "9") == (None, None)  # no search asked
    spec, conc = _flags("--find-max-rate", "--slo-ttft-ms", "200", "--requests", "50")
    assert conc == (256,)  # a rate search's in-flight cap
    assert spec == SearchSpec("max_rate", SearchSlo(ttft_ms=200, percentile="p95", max_error_rate=0.01), 0.05,
                              None, None, None, 16)
    spec, conc = _flags("--find-max-rate", "--concurrency", "32", "--slo-tpot-ms", "30", "--slo-e2e-ms", "5000",
                        "--slo-percentile", "p99", "--max-error-rate", "100%", "--search-precision", "10%",
                        "--search-start", "4", "--search-min", "1", "--search-max", "64", "--search-max-probes", "8",
                        "--duration", "30s")
    assert conc == (32,)
    # a 100 % error limit would meet a probe where every request failed but one: held just under 1
    assert spec == SearchSpec("max_rate", SearchSlo(tpot_ms=30, e2e_ms=5000, percentile="p99", max_error_rate=0.9999),
                              0.1, 4, 1, 64, 8)
    spec, conc = _flags("--find-max-concurrency", "--slo-ttft-ms", "200", "--max-error-rate", "5%", "--requests", "9")
    assert conc == (1,) and spec.kind == "max_concurrency" and spec.slo.max_error_rate == 0.05
    with pytest.raises(UsageError, match="--concurrency 0: must be >= 1"):
        _flags("--find-max-rate", "--concurrency", "0", "--slo-ttft-ms", "1", "--requests", "9")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--find-max-rate", "--find-max-concurrency"], "give --find-max-rate or --find-max-concurrency, not both"),
        (["--find-max-rate", "--requests", "9", "--rate", "1,2"], "^--find-max-rate chooses the rates itself: drop --rate"),
        (["--find-max-concurrency", "--requests", "9", "--concurrency", "4"],
         "^--find-max-concurrency chooses the concurrency itself: drop --concurrency "
         r"\(--search-start/--search-min/--search-max bound it\)"),
        (["--find-max-concurrency", "--requests", "9", "--shard", "0/2"], "^--find-max-concurrency decides each probe"),
        (["--find-max-rate", "--requests", "9", "--shard", "0/2"], "^--find-max-rate decides each probe"),
        (["--find-max-rate", "--requests", "9", "--concurrency", "4,8"],
         "^--concurrency '4,8': with --find-max-rate it is the in-flight cap, one number$"),
        (["--find-max-rate", "--concurrency", "0"], "^--concurrency 0: must be >= 1"),
        (["--find-max-concurrency"], "^--find-max-concurrency: give each probe's length, .*--search-max-probes"),
        (["--find-max-rate", "--requests", "9", "--max-error-rate", "0"], "^--max-error-rate '0'"),
        (["--find-max-rate", "--requests", "9", "--search-precision", "0"], "^--search-precision '0'"),
        (["--find-max-rate", "--requests", "9", "--search-start", "50", "--search-max", "10"],
         "lower <= start <= upper"),
    ],
)
def test_bad_flags_are_refused_before_any_request(argv, message):
    with pytest.raises(UsageError, match=message):
        _flags(*argv, "--slo-ttft-ms", "100")


def test_each_flag_alone_picks_its_search():
    rate, _ = _flags("--find-max-rate", "--slo-ttft-ms", "1", "--requests", "9", "--concurrency", "1")
    conc, _ = _flags("--find-max-concurrency", "--slo-ttft-ms", "1", "--requests", "9")
    assert (rate.kind, conc.kind) == ("max_rate", "max_concurrency")
    assert _flags("--find-max-rate", "--slo-ttft-ms", "1", "--requests", "9", "--concurrency", "1")[1] == (1,)
