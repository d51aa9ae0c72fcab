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


def test_sample_matches_numpy_exactly_below_the_limit():
    rng = random.Random(1)
    values = [rng.lognormvariate(3, 1) for _ in range(1000)]
    s = Sample()
    s.extend(values)
    summary = s.summary()
    for key, q in stats.QUANTILES.items():
        assert summary[key] == round(float(np.percentile(values, q)), 3)
    assert summary["max"] == round(max(values), 3) and summary["n"] == 1000


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
    # $3.6/h at 11 tok/s: 3.6 / (11 * 3600) * 1000
    assert s["cost_per_1k_tokens_usd"] == pytest.approx(3.6 / (11 * 3600) * 1000, rel=1e-4)
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
