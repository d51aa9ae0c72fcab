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
