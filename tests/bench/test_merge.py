"""bench merge: shards merged from their records equal one run over the same records, exactly; the shard
split itself (concurrency, rate, requests, seeds); refusals that name the directory."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import orjson
import pytest

import bench
from bench.config import BenchConfig, Level, UsageError
from bench.merge import MergeError, merge_runs
from bench.shard import parse_start_at, shard_levels, wait_until
from bench.stats import Slo
from bench.workload_stats import WorkloadLevelStats

SLO = Slo(ttft_ms=50.0, e2e_ms=400.0)


def _record(rng: random.Random, i: int, level: int) -> dict:
    ok = rng.random() > 0.1
    start = round(rng.uniform(0, 20), 6)
    rec = {"id": i, "level": level, "worker": 0, "warmup": i % 17 == 0, "scheduled_s": start, "start_s": start,
           "client_lag_ms": round(rng.uniform(0, 3), 4), "prompt_tokens_target": 100, "ok": ok,
           "error": None if ok else rng.choice(["http_5xx", "timeout"]), "error_detail": None if ok else "x",
           "turn": 1 + i % 3}
    if ok:
        ttft = rng.lognormvariate(3, 0.6)
        itl = [round(rng.uniform(5, 15), 4) for _ in range(rng.randint(1, 6))]
        e2e = ttft + sum(itl)
        rec.update(ttft_ms=round(ttft, 4), e2e_ms=round(e2e, 4), itl_ms=itl, output_tokens=len(itl) + 1,
                   tpot_ms=round(sum(itl) / len(itl), 4), token_count_source="usage", prompt_tokens=120,
                   single_read=False)
    rec["end_s"] = round(start + (rec.get("e2e_ms") or 30) / 1000, 6)
    return rec


def _write_run(directory: Path, records: list[dict], *, shard: tuple[int, int], levels: list[dict],
               model: str = "m") -> None:
    directory.mkdir(parents=True)
    (directory / "requests.jsonl").write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in records))
    summary = {
        "target": {"url": "http://x/v1", "endpoint": "http://x/v1/chat/completions", "model": model, "label": "x"},
        "config": {"slo": {"ttft_ms": SLO.ttft_ms, "tpot_ms": None, "e2e_ms": SLO.e2e_ms}, "price_per_hour_usd": 3.6,
                   "instance_count": 2, "workers": 1, "shard": {"index": shard[0], "count": shard[1]}},
        "client": {"host": f"host{shard[0]}"}, "run_id": f"r{shard[0]}", "status": "complete",
        "started_at": "2026-12-01T10:00:00+00:00", "finished_at": "2026-12-01T10:01:00+00:00", "levels": levels,
    }
    (directory / "summary.json").write_text(json.dumps(summary))


def _single(records: list[dict], level: int, concurrency: int, rate=None, t0=1000.0) -> dict:
    stats = WorkloadLevelStats(level, concurrency, rate, SLO, 3.6 * 2)
    stats.start_unix_s = t0
    for rec in records:
        if rec["level"] == level:
            stats.add(rec)
    return stats.summary()


def test_shards_merged_equal_one_run_over_the_same_records_exactly(tmp_path):
    rng = random.Random(7)
    records = [_record(rng, i, level) for level in (0, 1) for i in range(600)]
    parts = [[], [], []]
    for rec in records:
        parts[rng.randrange(3)].append(rec)
    for s, part in enumerate(parts):
        levels = [{"concurrency": c, "rate": None, "start_unix_s": 1000.0, "client_cpu_s": 0.0, "stopped_early": None}
                  for c in (2, 4)]
        _write_run(tmp_path / f"shard{s}", part, shard=(s, 3), levels=levels)
    merged, merged_records = merge_runs([tmp_path / f"shard{s}" for s in range(3)])
    for level, concurrency in ((0, 6), (1, 12)):
        assert merged["levels"][level] == _single(records, level, concurrency)
    assert len(merged_records) == len(records) and merged["status"] == "complete"
    ttfts = [r["ttft_ms"] for r in records if r["level"] == 0 and r["ok"] and not r["warmup"]]
    assert merged["levels"][0]["ttft_ms"]["p99"] == round(float(np.percentile(ttfts, 99)), 3)
    # Per turn too: each turn's figures over all shards' records of that turn.
    turn2 = [r["ttft_ms"] for r in records if r["level"] == 1 and r["ok"] and not r["warmup"] and r["turn"] == 2]
    assert merged["levels"][1]["turns"]["2"]["ttft_ms"]["p50"] == round(float(np.percentile(turn2, 50)), 3)


def test_merge_puts_the_shards_on_one_time_line(tmp_path):
    rng = random.Random(1)
    a = [_record(rng, i, 0) for i in range(50)]
    b = [_record(rng, i, 0) for i in range(50)]
    level = {"concurrency": 2, "rate": 4.0, "client_cpu_s": 1.5, "stopped_early": None}
    _write_run(tmp_path / "a", a, shard=(0, 2), levels=[{**level, "start_unix_s": 1000.0}])
    _write_run(tmp_path / "b", b, shard=(1, 2), levels=[{**level, "start_unix_s": 1002.5}])  # started 2.5 s later
    merged, recs = merge_runs([tmp_path / "a", tmp_path / "b"])
    lv = merged["levels"][0]
    measured = [r for r in a if not r["warmup"]] + [{**r, "start_s": r["start_s"] + 2.5, "end_s": r["end_s"] + 2.5}
                                                     for r in b if not r["warmup"]]
    span = max(r["end_s"] for r in measured) - min(r["start_s"] for r in measured)
    assert lv["duration_s"] == round(span, 4)
    assert lv["rate"] == 8.0 and lv["concurrency"] == 4 and lv["client_cpu_s"] == 3.0 and lv["start_unix_s"] == 1000.0
    assert {r["shard"] for r in recs} == {0, 1}


def test_real_shards_against_the_mock_merge_into_the_whole_run(mock_server, tmp_path):
    server = mock_server(ttft_ms=3, itl_ms=1)
    for i in range(3):
        assert bench.run([server.url, "--model", "m", "--workers", "0", "--warmup", "0", "--max-tokens", "4",
                          "--concurrency", "4", "--requests", "10", "--shard", f"{i}/3", "--no-progress", "--no-charts",
                          "--out", str(tmp_path / f"s{i}")]) == 0
    shards = [json.loads((tmp_path / f"s{i}" / "summary.json").read_text()) for i in range(3)]
    assert [s["levels"][0]["concurrency"] for s in shards] == [2, 1, 1]  # 4 slots over 3 shards
    assert [s["levels"][0]["requests"] for s in shards] == [4, 3, 3]  # 10 requests over 3 shards
    assert bench.run(["merge", *(str(tmp_path / f"s{i}") for i in range(3)), "--out", str(tmp_path / "all"),
                      "--no-charts"]) == 0
    merged = json.loads((tmp_path / "all" / "summary.json").read_text())
    records = [json.loads(x) for x in (tmp_path / "all" / "requests.jsonl").read_text().splitlines()]
    lv = merged["levels"][0]
    assert lv["requests"] == 10 and lv["concurrency"] == 4 and len(records) == 10 == server.state.count
    assert lv["ttft_ms"]["p95"] == round(float(np.percentile([r["ttft_ms"] for r in records], 95)), 3)
    report = (tmp_path / "all" / "report.md").read_text()
    assert "merged from 3 shard(s)" in report


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("missing", "shards 2/3 are missing"),
        ("twice", "shard 1/3 is given twice"),
        ("model", "model 'other' differs"),
        ("split", "split \\[2, 3\\] ways"),
        ("empty", "no summary.json"),
    ],
)
def test_merge_refuses_what_is_not_one_runs_shards(tmp_path, case, message):
    level = [{"concurrency": 1, "rate": None, "start_unix_s": 1.0}]
    _write_run(tmp_path / "a", [], shard=(0, 3), levels=level)
    dirs = [tmp_path / "a"]
    if case == "missing":
        _write_run(tmp_path / "b", [], shard=(1, 3), levels=level)
        dirs.append(tmp_path / "b")
    elif case == "twice":
        _write_run(tmp_path / "b", [], shard=(1, 3), levels=level)
        _write_run(tmp_path / "c", [], shard=(1, 3), levels=level)
        dirs += [tmp_path / "b", tmp_path / "c"]
    elif case == "model":
        _write_run(tmp_path / "b", [], shard=(1, 3), levels=level, model="other")
        dirs.append(tmp_path / "b")
    elif case == "split":
        _write_run(tmp_path / "b", [], shard=(1, 2), levels=level)
        dirs.append(tmp_path / "b")
    else:
        (tmp_path / "b").mkdir()
        dirs.append(tmp_path / "b")
    with pytest.raises(MergeError, match=message):
        merge_runs(dirs)
    if case == "missing":
        assert merge_runs(dirs, partial=True)[0]["levels"][0]["concurrency"] == 2


def test_shard_split_adds_up_to_the_whole():
    levels = [Level(0, 10, None, 10), Level(1, 7, 9.0, 7)]
    parts = [shard_levels(levels, i, 3) for i in range(3)]
    assert [p[0].concurrency for p in parts] == [4, 3, 3] and sum(p[0].warmup for p in parts) == 10
    assert [p[1].rate for p in parts] == [3.0, 3.0, 3.0] and sum(p[1].concurrency for p in parts) == 7
    cfgs = [BenchConfig(url="u", base_url="b", model="m", requests=10, seed=5, shard=(i, 3)) for i in range(3)]
    assert [c.shard_requests for c in cfgs] == [4, 3, 3]
    assert len({c.shard_seed for c in cfgs}) == 3
    assert BenchConfig(url="u", base_url="b", model="m", seed=5).shard_seed == 5  # unsharded: --seed as given


def test_start_at_parsing_and_waiting():
    assert parse_start_at("2026-12-01T10:00:00Z", now=0) == 1796119200.0
    assert parse_start_at("1796119200.5", now=0) == 1796119200.5
    with pytest.raises(UsageError, match="expected an ISO 8601 time"):
        parse_start_at("tomorrow", now=0)
    clock = [100.0]
    slept = []

    def sleep(s):
        slept.append(s)
        clock[0] += s

    wait_until(102.5, sleep=sleep, clock=lambda: clock[0])
    assert slept == [1.0, 1.0, 0.5] and clock[0] == 102.5
