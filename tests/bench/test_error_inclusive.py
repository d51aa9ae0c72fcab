"""Error-inclusive percentiles (bench.stats): a failed request counts as infinitely slow.

Worked by hand with the same linear interpolation as numpy: of n requests, rank q/100 x (n - 1); a rank
whose upper neighbour is a failure is a failure (interpolating towards infinity), `None` in JSON.
"""

import json

import pytest

from bench.progress import format_all
from bench.stats import LevelStats, Sample, Slo
from bench.trust import report_lines
from tests.bench.test_stats import failed, ok


def sample(values) -> Sample:
    s = Sample()
    s.extend(values)
    return s


@pytest.mark.parametrize(
    ("values", "failures", "expected"),
    [
        # n = 5: p50 rank 2 -> the third success (30); p90 rank 3.6 lies between 40 and a failure.
        ([40, 10, 30, 20], 1, {"p50": 30.0, "p90": None, "p95": None, "p99": None, "n": 5, "failed": 1}),
        # 99 successes 1..99 and one failure: p95 rank 94.05 -> 95.05; p99 rank 98.01 touches the failure.
        (range(1, 100), 1, {"p50": 50.5, "p90": 90.1, "p95": 95.05, "p99": None, "n": 100, "failed": 1}),
        # No failure: the success-only figures exactly.
        (range(10, 110, 10), 0, {"p50": 55.0, "p90": 91.0, "p95": 95.5, "p99": 99.1, "n": 10, "failed": 0}),
        # One success: p0 is it; anything past rank 0 of two is a failure.
        ([7], 1, {"p50": None, "p90": None, "p95": None, "p99": None, "n": 2, "failed": 1}),
        ([7], 0, {"p50": 7.0, "p90": 7.0, "p95": 7.0, "p99": 7.0, "n": 1, "failed": 0}),
        ([], 3, {"p50": None, "p90": None, "p95": None, "p99": None, "n": 3, "failed": 3}),
        ([], 0, {"p50": None, "p90": None, "p95": None, "p99": None, "n": 0, "failed": 0}),
    ],
)
def test_percentiles_with_failures_as_infinitely_slow(values, failures, expected):
    assert sample(values).summary_with_failures(failures) == expected


def test_no_failure_gives_the_success_only_percentiles():
    s = sample([3.0, 1.0, 4.0, 1.0, 5.0, 9.0, 2.0, 6.0])
    plain = s.summary()
    assert {k: plain[k] for k in ("p50", "p90", "p95", "p99")} == {
        k: v for k, v in s.summary_with_failures(0).items() if k.startswith("p")
    }


def level_with_failures() -> LevelStats:
    lv = LevelStats(0, 4, None, Slo(), None)
    for ttft, e2e in ((10, 100), (20, 200), (30, 300), (40, 400)):
        lv.add(ok(ttft, e2e, 5))
    lv.add(failed("http_5xx"))
    return lv


def test_a_level_summary_carries_them_and_stays_strict_json():
    s = level_with_failures().summary()
    assert s["ttft_ms_all"] == {"p50": 30.0, "p90": None, "p95": None, "p99": None, "n": 5, "failed": 1}
    assert s["e2e_ms_all"] == {"p50": 300.0, "p90": None, "p95": None, "p99": None, "n": 5, "failed": 1}
    assert s["ttft_ms"]["p90"] == 37.0  # the success-only figure is still there
    json.dumps(s, allow_nan=False)  # no Infinity/NaN literal anywhere


def test_console_and_report_print_failed_where_a_percentile_is_a_failure():
    s = level_with_failures().summary()
    assert format_all(s["ttft_ms_all"]) == "p50 30.0  p90 failed  p95 failed  p99 failed"
    lines = report_lines({"levels": [s]})
    assert "| c=4 | 1 / 5 | 30.0 | failed | failed | failed | 300.0 | failed | failed | failed |" in lines
    assert any("Over 1% of the requests failed at c=4 (20.0 %)" in line for line in lines)


def test_a_clean_level_adds_no_trust_section():
    lv = LevelStats(0, 4, None, Slo(), None)
    for ttft in range(10, 20):
        lv.add(ok(ttft, 100, 5))
    assert report_lines({"levels": [lv.summary()]}) == []


# The mutation run of bench/trust.py (python tests/mutants.py trust): the section of report.md word for word, as
# the reader acts on it: which level was throttled (and the config keys that lift the usage plan), which is
# invalid and why, which failed past 1 % (exactly 1 % is not past it), and every failing level's percentiles.


def level(concurrency, rate, requests, failed, throttled=0, why=(), ttft_all=None, e2e_all=None) -> dict:
    """A level of summary.json with the keys bench.trust reads (the figures given, not computed)."""
    nothing = {"p50": None, "p90": None, "p95": None, "p99": None}
    return {"concurrency": concurrency, "rate": rate, "requests": requests, "failed": failed,
            "error_share": round(failed / requests, 4), "valid": not why, "why": list(why),
            "throttled": {"count": throttled, "share": round(throttled / requests, 4)},
            "ttft_ms_all": ttft_all or nothing, "e2e_ms_all": e2e_all or nothing}


def test_the_trust_section_word_for_word():
    summary = {"levels": [
        level(8, None, 8, 2, throttled=2, ttft_all={"p50": 30.0, "p90": None, "p95": None, "p99": None},
              e2e_all={"p50": 300.0, "p90": 310.04, "p95": None, "p99": None}),
        level(64, 2.5, 20, 0, why=["client lag p99 57 ms (limit 50 ms)", "client CPU 95% of 1 process(es)"]),
        level(16, None, 100, 1, ttft_all={"p50": 12.34, "p90": 20.0, "p95": 25.0, "p99": None},
              e2e_all={"p50": 120.0, "p90": 200.0, "p95": 250.06, "p99": None}),  # exactly 1 %: not past it
        level(4, 0.5, 10, 3),
    ]}
    assert report_lines(summary) == [
        "## Can these numbers be trusted",
        "",
        "- **c=8 was throttled**: 2 of 8 requests (25.0 %) got HTTP 429. On the aws stack that is the API Gateway "
        "usage plan (10 req/s, burst 20 by default), not the model: for a capacity run raise "
        "`llm-inference:gatewayRateLimit` and `llm-inference:gatewayBurstLimit` (`pulumi config set`, then "
        "`pulumi up`; docs/bench.md).",
        "- **2.5 req/s is invalid** (the client was the bottleneck): client lag p99 57 ms (limit 50 ms); client CPU "
        "95% of 1 process(es).",
        "- Over 1% of the requests failed at c=8 (25.0 %), 0.5 req/s (30.0 %): the success-only percentiles above "
        "describe only the requests that got through.",
        "",
        "With failures counted as infinitely slow (what a user's SLO sees; \"failed\": the percentile falls on a "
        "failed request):",
        "",
        "| level | failed / all | TTFT p50 | TTFT p90 | TTFT p95 | TTFT p99 | E2E p50 | E2E p90 | E2E p95 | E2E p99 |",
        "|---|---|---|---|---|---|---|---|---|---|",
        "| c=8 | 2 / 8 | 30.0 | failed | failed | failed | 300.0 | 310.0 | failed | failed |",
        "| c=16 | 1 / 100 | 12.3 | 20.0 | 25.0 | failed | 120.0 | 200.0 | 250.1 | failed |",
        "| 0.5 req/s | 3 / 10 | failed | failed | failed | failed | failed | failed | failed | failed |",
        "",
    ]


def test_only_a_throttled_or_an_invalid_level_still_gets_the_section():
    throttled = level(8, None, 10, 0, throttled=1)  # counted apart from the failures here, to see it alone
    invalid = level(8, None, 10, 0, why=["send delay p95 12.0 ms (limit 10.0 ms)"])
    assert report_lines({"levels": [throttled]})[2].startswith("- **c=8 was throttled**: 1 of 10 requests (10.0 %)")
    assert report_lines({"levels": [invalid]})[2:] == [
        "- **c=8 is invalid** (the client was the bottleneck): send delay p95 12.0 ms (limit 10.0 ms).", ""]
