"""bench.stats: percentiles, goodput, SLO attainment, cost and the buffering warning."""

import random

import numpy as np
import pytest

from bench import stats
from bench.stats import LevelStats, Sample, Slo


def ok(ttft, e2e, tokens, itl=(), start=0.0, end=1.0, tpot=None, single=False, source="usage", **kw):
    rec = {
        "ok": True, "error": None, "warmup": False, "start_s": start, "end_s": end, "client_lag_ms": 0.1,
        "ttft_ms": ttft, "e2e_ms": e2e, "output_tokens": tokens, "itl_ms": list(itl),
        "tpot_ms": tpot if tpot is not None else ((e2e - ttft) / (tokens - 1) if tokens > 1 else None),
        "token_count_source": source, "single_read": single,
    }
    rec.update(kw)
    return rec


def failed(kind, start=0.0, end=0.5):
    return {"ok": False, "error": kind, "error_detail": f"{kind} happened", "warmup": False, "start_s": start,
            "end_s": end, "client_lag_ms": 0.2}


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        # Linear interpolation between order statistics (numpy's default), worked out by hand:
        # p90 of 10..50 sits at rank 0.9 x 4 = 3.6, i.e. 40 + 0.6 x 10 = 46.
        ([50, 10, 40, 20, 30], {"mean": 30.0, "p50": 30.0, "p90": 46.0, "p95": 48.0, "p99": 49.6,
                                "max": 50, "min": 10, "n": 5}),
        (list(range(10, 0, -1)), {"mean": 5.5, "p50": 5.5, "p90": 9.1, "p95": 9.55, "p99": 9.91,
                                  "max": 10, "min": 1, "n": 10}),
        ([3.0, 1.0, 2.0], {"mean": 2.0, "p50": 2.0, "p90": 2.8, "p95": 2.9, "p99": 2.98,
                           "max": 3.0, "min": 1.0, "n": 3}),
        ([7.25], {"mean": 7.25, "p50": 7.25, "p90": 7.25, "p95": 7.25, "p99": 7.25, "max": 7.25, "min": 7.25,
                  "n": 1}),
        ([1.0004, 2.0], {"mean": 1.5, "p50": 1.5, "p90": 1.9, "p95": 1.95, "p99": 1.99, "max": 2.0,
                         "min": 1.0, "n": 2}),  # rounded to 3 digits
    ],
)
def test_sample_percentiles_on_literal_samples(values, expected):
    s = Sample()
    s.extend(values)
    assert s.summary() == expected


def test_sample_percentile_extremes_and_empty():
    s = Sample()
    assert s.percentile(50) is None
    assert s.summary() == {"mean": None, "p50": None, "p90": None, "p95": None, "p99": None, "max": None,
                           "min": None, "n": 0}
    assert s.cdf() == ([], [])
    s.extend([4.0, 1.0, 3.0, 2.0])
    assert (s.percentile(0), s.percentile(25), s.percentile(100)) == (1.0, 1.75, 4.0)
    values, fractions = s.cdf(points=3)
    assert values == [1.0, 2.5, 4.0] and fractions == [0.0, 0.5, 1.0]


def test_histogram_percentiles_on_a_literal_sample(monkeypatch):
    monkeypatch.setattr(stats, "EXACT_LIMIT", 3)
    s = Sample()
    s.extend([10.0] * 50 + [1000.0] * 50)
    assert s.values is None and s.count == 100
    # Ranks 0..49 hold 10, 50..99 hold 1000: each percentile is its rank's bucket, within 0.1 %.
    assert s.percentile(0) == pytest.approx(10, rel=1e-3) and s.percentile(49) == pytest.approx(10, rel=1e-3)
    assert s.percentile(51) == pytest.approx(1000, rel=1e-3)
    assert s.percentile(99) == pytest.approx(1000, rel=1e-3) and s.percentile(100) <= 1000
    summary = s.summary()
    assert (summary["mean"], summary["max"], summary["min"], summary["n"]) == (505.0, 1000.0, 10.0, 100)
    assert summary["p50"] == pytest.approx(10, rel=1e-3) and summary["p90"] == pytest.approx(1000, rel=1e-3)
    # Values at or below 1 µs share one bucket and read back as 0 clipped to the minimum.
    tiny = Sample()
    tiny.extend([0.0, 0.0005, 0.0001, 0.0002])
    assert tiny.values is None and tiny.percentile(50) == 0.0


def test_sample_folds_into_histogram_within_resolution(monkeypatch):
    monkeypatch.setattr(stats, "EXACT_LIMIT", 100)
    rng = random.Random(2)
    values = [rng.uniform(1, 500) for _ in range(5000)]
    s = Sample()
    s.extend(values)
    assert s.values is None  # bounded memory from here on
    for q in (50, 90, 99):
        assert s.percentile(q) == pytest.approx(np.percentile(values, q), rel=0.01)
    assert s.summary()["mean"] == pytest.approx(np.mean(values), abs=1e-3)


def test_errors_are_counted_and_kept_out_of_latency_and_goodput():
    lv = LevelStats(0, 4, None, Slo(ttft_ms=100), price_per_hour=3.6)
    lv.add(ok(50, 500, 11, itl=[45] * 10, start=0.0, end=0.5))
    lv.add(ok(150, 600, 11, start=0.5, end=2.0))  # misses the TTFT SLO
    lv.add(failed("http_429", start=1.0, end=1.1))
    lv.add(failed("http_429"))
    lv.add({**ok(1, 1, 2), "warmup": True})
    s = lv.summary()
    assert (s["requests"], s["succeeded"], s["failed"], s["warmup_requests"]) == (4, 2, 2, 1)
    assert s["errors"] == {"http_429": 2}
    assert s["ttft_ms"]["n"] == 2 and s["ttft_ms"]["max"] == 150
    assert s["duration_s"] == 2.0
    assert s["request_throughput_rps"] == 1.0
    assert s["output_tokens"] == 22 and s["output_throughput_tok_s"] == 11.0
    assert s["goodput_rps"] == 0.5 and s["slo_attainment"] == 0.25
    # $3.6/h at 11 tok/s: 3.6 / (11 x 3600) x 1000 = 0.090909 per 1k tokens
    assert s["cost_per_1k_tokens_usd"] == 0.090909 and s["cost_per_1m_tokens_usd"] == 90.9091
    assert s["itl_ms"]["n"] == 10 and s["tpot_ms"]["p50"] == pytest.approx(((450 / 10) + 45) / 2)


def test_without_slo_goodput_counts_successes():
    lv = LevelStats(0, 1, None, Slo(), None)
    lv.add(ok(10, 20, 2, end=1.0))
    lv.add(failed("timeout"))
    s = lv.summary()
    assert s["goodput_rps"] == 1.0 and s["slo_attainment"] == 0.5 and s["cost_per_1k_tokens_usd"] is None


def test_slo_checks_tpot_and_e2e():
    slo = Slo(tpot_ms=10, e2e_ms=1000)
    assert slo.met(ok(10, 100, 11))
    assert not slo.met(ok(10, 200, 11))  # TPOT 19 ms
    assert not slo.met(ok(10, 1001, 1000))
    assert not slo.met(failed("connect"))


def test_buffering_and_chunk_count_warnings():
    lv = LevelStats(0, 1, None, Slo(), None)
    for i in range(4):
        lv.add(ok(400, 400, 20, itl=[0] * 19, single=True, source="chunks", start=i, end=i + 0.4))
    warnings = " ".join(lv.summary()["warnings"])
    assert "buffering" in warnings and "chunks" in warnings
    assert lv.summary()["token_count_source"] == "chunks"


def test_server_ttft_and_gateway_share():
    lv = LevelStats(0, 1, None, Slo(), None)
    lv.add(ok(50, 100, 5, server_ttft_ms=40))
    lv.add(ok(60, 100, 5, server_ttft_ms=41))
    s = lv.summary()
    assert s["server_ttft_ms"]["p50"] == 40.5 and s["gateway_share_ttft_ms"]["max"] == 19


def test_level_summary_in_full_on_a_literal_level():
    # Worked by hand: 5 measured requests from 0 to 2.5 s, 3 succeeded (24 tokens, 9.6 tok/s), 2 meet the
    # SLO (ttft <= 100 and e2e <= 550: the first and the third): goodput 0.8/s, attainment 2/5;
    # $3.6/h / (9.6 x 3600) x 1000 = 0.104167 per 1k; TPOT 450/10, 450/10, 480/1; CPU 600 ms / 6 requests.
    lv = LevelStats(2, 4, 8.0, Slo(ttft_ms=100, e2e_ms=550), price_per_hour=3.6)
    lv.add(ok(50, 500, 11, itl=[40, 50] * 5, start=0.0, end=0.5, send_delay_ms=2.0, prompt_tokens=7,
              server_ttft_ms=40, retried=True))
    lv.add(ok(150, 600, 11, start=0.5, end=2.0, prompt_tokens=5, send_delay_ms=4.0))
    lv.add(ok(60, 540, 2, start=1.0, end=1.5, source="chunks"))
    lv.add(failed("http_429", start=1.0, end=1.1))
    lv.add(failed("timeout", start=1.2, end=2.5))
    lv.add({**ok(1, 1, 2), "warmup": True})
    lv.client_cpu_s = 0.6

    def dist(mean, p50, p90, p95, p99, mx, mn, n):
        return {"mean": mean, "p50": p50, "p90": p90, "p95": p95, "p99": p99, "max": mx, "min": mn, "n": n}

    assert lv.summary() == {
        "concurrency": 4, "rate": 8.0, "requests": 5, "succeeded": 3, "failed": 2,
        "errors": {"http_429": 1, "timeout": 1},
        "error_examples": {"http_429": "http_429 happened", "timeout": "timeout happened"},
        "duration_s": 2.5, "request_throughput_rps": 1.2, "output_tokens": 24, "prompt_tokens": 12,
        "output_throughput_tok_s": 9.6, "token_count_source": "mixed",
        "ttft_ms": dist(86.667, 60.0, 132.0, 141.0, 148.2, 150, 50, 3),
        "itl_ms": dist(45.0, 45.0, 50.0, 50.0, 50.0, 50, 40, 10),
        "tpot_ms": dist(190.0, 45.0, 393.0, 436.5, 471.3, 480.0, 45.0, 3),
        "e2e_ms": dist(546.667, 540.0, 588.0, 594.0, 598.8, 600, 500, 3),
        # Failures as infinitely slow: of 5, rank 2 (p50) is the slowest success, ranks past 2 fail.
        "ttft_ms_all": {"p50": 150.0, "p90": None, "p95": None, "p99": None, "n": 5, "failed": 2},
        "e2e_ms_all": {"p50": 600.0, "p90": None, "p95": None, "p99": None, "n": 5, "failed": 2},
        "throttled": {"count": 1, "share": 0.2}, "error_share": 0.4,
        "valid": True, "why": [],  # 5 requests: too few to judge the client
        "goodput_rps": 0.8, "slo_attainment": 0.4,
        "cost_per_1k_tokens_usd": 0.104167, "cost_per_1m_tokens_usd": 104.1667,
        "client_lag_ms": dist(0.14, 0.1, 0.2, 0.2, 0.2, 0.2, 0.1, 5),
        "client_send_delay_ms": dist(3.0, 3.0, 3.8, 3.9, 3.98, 4.0, 2.0, 2),
        "retried": 1,
        "server_ttft_ms": dist(40.0, 40.0, 40.0, 40.0, 40.0, 40, 40, 1),
        "gateway_share_ttft_ms": dist(10.0, 10.0, 10.0, 10.0, 10.0, 10, 10, 1),
        "warmup_requests": 1, "client_cpu_s": 0.6, "client_cpu_share": 0.24,
        "client_cpu_ms_per_request": 100.0, "stopped_early": None,
        "warnings": ["throttled: 1 of 5 requests (20.0%) got HTTP 429, the gateway's usage plan limit (aws "
                     "stack: 10 req/s, burst 20 by default), not the model's capacity; for a capacity run "
                     "raise it: pulumi config set llm-inference:gatewayRateLimit <req/s> and "
                     "llm-inference:gatewayBurstLimit <n> (docs/bench.md)",
                     "errors: 2 of 5 requests failed (40.0%, over 1%): the success-only percentiles leave "
                     "them out; see *_all for the error-inclusive ones",
                     "output tokens are counted as content chunks for some/all replies (no `usage` from the "
                     "server); throughput and TPOT are only exact if each chunk carries one token"],
    }


def test_an_empty_level_summary():
    s = LevelStats(0, 1, None, Slo(), 1.0).summary()
    assert (s["requests"], s["duration_s"], s["request_throughput_rps"], s["output_throughput_tok_s"]) == (0, 0.0, 0.0, 0.0)
    assert (s["goodput_rps"], s["slo_attainment"], s["cost_per_1k_tokens_usd"], s["token_count_source"]) == (
        0.0, None, None, None)
    assert s["client_send_delay_ms"] is None and s["server_ttft_ms"] is None and s["warnings"] == []
    assert s["client_cpu_ms_per_request"] == 0.0


def test_warnings_word_for_word():
    lv = LevelStats(0, 2, 5.0, Slo(), None)
    for i in range(10):
        lv.add({**ok(95, 100, 5, start=i, end=i + 0.1), "client_lag_ms": 60.0 + i})
    lv.stopped_early = "interrupted (Ctrl-C)"
    assert lv.warnings() == [
        "buffering: median TTFT is over 90% of E2E; the stream is probably buffered on the way",
        "client lag p99 69 ms: the client or the concurrency cap could not keep the arrival schedule; raise "
        "--concurrency or --workers",
        "level stopped early: interrupted (Ctrl-C)",
    ]
    single = LevelStats(0, 2, None, Slo(), None)
    for i in range(3):
        single.add(ok(400, 400, 20, single=True, start=i, end=i + 0.4))
    assert single.warnings() == ["buffering: 3/3 replies arrived whole in one network read; a gateway or proxy is "
                                 "buffering the stream, so TTFT here is really E2E"]


@pytest.mark.parametrize(
    ("records", "expected"),
    [
        # Two successes only: too few to call it buffering, however it looks.
        ([dict(ttft=400, e2e=400, tokens=20, single=True)] * 2, []),
        # Two of three replies in one read is at least half: buffering; one of three is not.
        ([dict(ttft=10, e2e=400, tokens=20, single=True)] * 2 + [dict(ttft=10, e2e=400, tokens=20)], ["buffering: 2/3"]),
        ([dict(ttft=10, e2e=400, tokens=20, single=True)] + [dict(ttft=10, e2e=400, tokens=20)] * 2, []),
        # A one-token reply in one read is not buffering.
        ([dict(ttft=10, e2e=400, tokens=1, single=True)] * 3, []),
        # Median TTFT exactly 90 % of E2E counts; just below does not.
        ([dict(ttft=90, e2e=100, tokens=5)] * 3, ["buffering: median"]),
        ([dict(ttft=89, e2e=100, tokens=5)] * 3, []),
    ],
)
def test_buffering_warning_thresholds(records, expected):
    lv = LevelStats(0, 1, None, Slo(), None)
    for i, r in enumerate(records):
        lv.add(ok(r["ttft"], r["e2e"], r["tokens"], single=r.get("single", False), start=i, end=i + 0.5))
    got = lv.warnings()
    assert len(got) == len(expected) and all(w.startswith(e) for w, e in zip(got, expected, strict=True))


@pytest.mark.parametrize(("rate", "n", "lag", "warned"), [(5.0, 10, 51.0, True), (5.0, 10, 50.0, False),
                                                          (5.0, 9, 90.0, False), (None, 10, 90.0, False)])
def test_client_lag_warning_thresholds(rate, n, lag, warned):
    lv = LevelStats(0, 1, rate, Slo(), None)
    for i in range(n):
        lv.add({**ok(10, 100, 5, start=i, end=i + 0.1), "client_lag_ms": lag})
    assert any(w.startswith("client lag") for w in lv.warnings()) == warned


def test_slo_boundaries_are_inclusive():
    slo = Slo(ttft_ms=100, tpot_ms=10, e2e_ms=1000)
    assert slo.any and not Slo().any and Slo(e2e_ms=1).any
    assert slo.met(ok(100, 1000, 91))  # exactly at every limit (TPOT 900/90 = 10)
    assert not slo.met(ok(100.1, 1000, 91)) and not slo.met(ok(100, 1000.1, 1000))
    assert slo.met({**ok(50, 60, 1), "tpot_ms": None})  # one token: no TPOT to judge


def test_sample_min_max_track_equal_and_negative_values():
    s = Sample()
    s.extend([-1.0, -1.0, 5.0, 5.0])
    assert (s.min, s.max, s.total, s.count) == (-1.0, 5.0, 8.0, 4)


def test_level_summary_rounding_and_counting_on_awkward_numbers():
    # One short level with numbers that do not round evenly: every figure's rounding is pinned.
    lv = LevelStats(7, 1, None, Slo(), price_per_hour=0.5)
    assert (lv.level, lv.concurrency) == (7, 1)
    lv.add({**ok(10, 20, 2, start=0.0, end=0.123456, retried=True), "token_count_source": "usage"})
    lv.add({**failed(None, start=0.05, end=0.1), "error_detail": None, "retried": True})
    lv.add({**ok(1, 1, 2), "warmup": True})
    lv.add({**ok(1, 1, 2), "warmup": True})
    lv.client_cpu_s = 0.0001234
    s = lv.summary()
    assert s["duration_s"] == 0.1235 and s["request_throughput_rps"] == 8.1001
    assert s["output_throughput_tok_s"] == 16.2 and s["goodput_rps"] == 8.1001 and s["slo_attainment"] == 0.5
    assert s["cost_per_1k_tokens_usd"] == 0.008573 and s["cost_per_1m_tokens_usd"] == 8.5733
    assert (s["retried"], s["warmup_requests"], s["requests"]) == (2, 2, 2)
    assert s["errors"] == {"unknown": 1} and s["error_examples"] == {"unknown": ""}
    assert s["client_cpu_s"] == 0.0 and s["client_cpu_ms_per_request"] == 0.031
    assert s["gateway_share_ttft_ms"] is None and s["server_ttft_ms"] is None
    slow = LevelStats(0, 1, None, Slo(), price_per_hour=1.0)
    slow.add(ok(10, 20, 1, start=0.0, end=2.0))  # 0.5 tok/s over 2 s: still priced
    slow.client_cpu_s = 0.5
    s = slow.summary()
    assert s["output_throughput_tok_s"] == 0.5 and s["cost_per_1k_tokens_usd"] == 0.555556
    assert s["client_cpu_ms_per_request"] == 500.0


def test_token_sources_count_every_reply():
    lv = LevelStats(0, 1, None, Slo(), None)
    for source in ("usage", "usage", "chunks"):
        lv.add(ok(10, 20, 2, source=source))
    assert lv.token_sources == {"usage": 2, "chunks": 1} and lv.token_count_source() == "mixed"


@pytest.mark.parametrize(
    ("ratios", "warned"),
    [((500, 899, 1000), False),  # median 0.899: not buffering (the 51st percentile would be over 0.9)
     ((0, 0, 0), False)],  # e2e 0: no ratio at all
)
def test_ttft_over_e2e_warning_uses_the_median(ratios, warned):
    lv = LevelStats(0, 1, None, Slo(), None)
    for i, ttft in enumerate(ratios):
        e2e = 1000 if ttft else 0
        lv.add(ok(ttft, e2e, 5, start=i, end=i + 1))
    assert any(w.startswith("buffering") for w in lv.warnings()) == warned


def test_single_read_counts_replies_of_two_tokens_and_ratio_of_exactly_half():
    lv = LevelStats(0, 1, None, Slo(), None)
    for i in range(4):
        lv.add(ok(10, 400, 2, single=i < 2, start=i, end=i + 1))  # 2 of 4 in one read: exactly half
    assert lv.single_read == 2
    assert lv.warnings()[0].startswith("buffering: 2/4 replies arrived whole")


def test_client_lag_warning_is_on_p99_not_the_maximum():
    lv = LevelStats(0, 1, 5.0, Slo(), None)
    for i in range(100):
        lv.add({**ok(10, 100, 5, start=i, end=i + 0.1), "client_lag_ms": 100.0 if i == 99 else 0.0})
    assert lv.lag.percentile(99) == pytest.approx(1.0)
    assert not any(w.startswith("client lag") for w in lv.warnings())


def test_histogram_edges(monkeypatch):
    # Exactly EXACT_LIMIT values stay exact; one more folds.
    s = Sample()
    monkeypatch.setattr(stats, "EXACT_LIMIT", 4)
    s.extend([1.0, 2.0, 3.0, 4.0])
    assert s.values is not None
    s.add(5.0)
    assert s.values is None
    # A rank that lands exactly on a bucket's last value belongs to the next bucket (numpy's index 50).
    h = Sample()
    h.extend([10.0] * 50 + [1000.0] * 51)
    assert h.percentile(50) == pytest.approx(1000, rel=1e-3)
    # The first bucket above 1 µs reads back as its midpoint, not as 0.
    tiny = Sample()
    tiny.extend([0.0005, 0.0010005, 0.0010005, 0.0010005, 0.0010005])
    assert tiny.percentile(100) == pytest.approx(0.0010005, rel=1e-6)
    assert tiny.percentile(0) == 0.0005


def test_second_round_of_survivors():
    # The CDF for charts has 400 points by default.
    s = Sample()
    s.extend([1.0, 2.0])
    values, fractions = s.cdf()
    assert len(values) == len(fractions) == 400 and fractions[-1] == 1.0
    # A reply of 1 ms end to end still enters the TTFT/E2E ratio.
    lv = LevelStats(0, 1, None, Slo(), None)
    for i in range(3):
        lv.add(ok(0.95, 1.0, 5, start=i, end=i + 1))
    assert lv.warnings()[0].startswith("buffering: median TTFT")
    # The lag warning quotes p99, not the maximum.
    lag = LevelStats(0, 1, 5.0, Slo(), None)
    for i in range(100):
        lag.add({**ok(10, 100, 5, start=i, end=i + 0.1), "client_lag_ms": {98: 60.0, 99: 100.0}.get(i, 0.0)})
    assert lag.warnings()[0].startswith("client lag p99 60 ms")
    # Attainment is rounded to 4 digits.
    third = LevelStats(0, 1, None, Slo(ttft_ms=10), None)
    third.add(ok(5, 10, 2))
    third.add(ok(50, 60, 2))
    third.add(ok(50, 60, 2))
    assert third.summary()["slo_attainment"] == 0.3333


def test_exactly_one_microsecond_shares_the_floor_bucket(monkeypatch):
    monkeypatch.setattr(stats, "EXACT_LIMIT", 1)
    s = Sample()
    s.extend([0.0005, 0.001])
    assert s.percentile(100) == 0.0005  # the floor bucket reads 0, clipped to the minimum
