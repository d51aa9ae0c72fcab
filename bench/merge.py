"""`python -m bench merge DIR... --out DIR`: the shards of one run (`--shard I/N`) as one result.

Statistics are recomputed from every shard's per-request records (requests.jsonl), never by averaging
the shards' percentiles: the merged TTFT p99 is the p99 of all requests. Each shard's records are moved
onto one time line with the wall-clock start of its level (`start_unix_s` in summary.json), so the merged
duration (and with it throughput and goodput) spans the first request sent anywhere to the last one
finished. Concurrency and rate are the shards' sums; client CPU adds up. The output directory gets
summary.json, requests.jsonl (each record with its `shard`) and report.md, like a single run.
"""

from __future__ import annotations

import sys
from pathlib import Path

import orjson

from bench.cli_base import USAGE_EXIT, ArgParser
from bench.stats import Slo
from bench.workload_stats import WorkloadLevelStats


class MergeError(ValueError):
    """A directory that is not a shard of this run; the message names it and the fix."""


def _read(directory: Path) -> tuple[dict, list[dict]]:
    summary_path, records_path = directory / "summary.json", directory / "requests.jsonl"
    for path in (summary_path, records_path):
        if not path.is_file():
            raise MergeError(f"{directory}: no {path.name}; give the --out directory of a bench run (one per shard)")
    summary = orjson.loads(summary_path.read_bytes())
    records = []
    lines = records_path.read_bytes().splitlines()
    for number, line in enumerate(lines, 1):
        if line.strip():
            try:
                records.append(orjson.loads(line))
            except orjson.JSONDecodeError:
                # A shard killed mid-write leaves a cut last line; anything else is damage worth stopping for.
                if number != len(lines):
                    raise MergeError(f"{records_path}:{number}: not valid JSON") from None
    return summary, records


def _check_shards(runs: list[tuple[Path, dict, list]], partial: bool) -> None:
    first = runs[0][1]
    for directory, summary, _ in runs[1:]:
        for key in ("endpoint", "model"):
            if summary["target"].get(key) != first["target"].get(key):
                raise MergeError(
                    f"{directory}: {key} {summary['target'].get(key)!r} differs from {runs[0][0]}'s "
                    f"{first['target'].get(key)!r}; merge only shards of one run"
                )
    shards = [(d, (s["config"].get("shard") or {"index": 0, "count": 1})) for d, s, _ in runs]
    counts = {sh["count"] for _, sh in shards}
    if counts == {1}:
        return  # separate unsharded runs at the same target: merged as they are
    if len(counts) > 1:
        raise MergeError(f"the directories come from runs split {sorted(counts)} ways; merge the shards of one run")
    count = counts.pop()
    seen: dict[int, Path] = {}
    for directory, sh in shards:
        if sh["index"] in seen:
            raise MergeError(f"shard {sh['index']}/{count} is given twice: {seen[sh['index']]} and {directory}")
        seen[sh["index"]] = directory
    missing = sorted(set(range(count)) - set(seen))
    if missing and not partial:
        raise MergeError(
            f"shards {', '.join(f'{i}/{count}' for i in missing)} are missing; give every shard's directory, "
            "or --partial to merge what is here"
        )


def merge_runs(directories: list[Path], partial: bool = False) -> tuple[dict, list[dict]]:
    """The merged summary and records (records in time order, with `shard` and shifted times)."""
    if len(set(map(str, directories))) != len(directories):
        raise MergeError("a directory is given twice")
    runs = [(d, *_read(d)) for d in directories]
    _check_shards(runs, partial)
    first = runs[0][1]
    cfg = first["config"]
    slo = Slo(**{k: cfg["slo"].get(k) for k in ("ttft_ms", "tpot_ms", "e2e_ms")})
    price = cfg.get("price_per_hour_usd")
    total_price = None if price is None else price * cfg.get("instance_count", 1)
    level_count = max(len(s["levels"]) for _, s, _ in runs)
    merged_levels, all_records, warnings = [], [], []
    for index in range(level_count):
        present = [(i, s["levels"][index]) for i, (_, s, _) in enumerate(runs) if index < len(s["levels"])]
        if len(present) < len(runs):
            warnings.append(f"level {index}: only {len(present)} of {len(runs)} shards reached it")
        starts = [lv.get("start_unix_s") for _, lv in present]
        if any(t is None for t in starts):
            raise MergeError(f"level {index}: a shard's summary.json has no start_unix_s; rerun with this bench")
        t0 = min(starts)
        rate = None if present[0][1]["rate"] is None else sum(lv["rate"] for _, lv in present)
        stats = WorkloadLevelStats(index, sum(lv["concurrency"] for _, lv in present), rate, slo, total_price)
        stats.start_unix_s = t0
        stats.client_cpu_s = sum(lv.get("client_cpu_s", 0.0) for _, lv in present)
        stopped = [f"shard {runs[i][0].name}: {lv['stopped_early']}" for i, lv in present if lv.get("stopped_early")]
        stats.stopped_early = "; ".join(stopped) or None
        for i, lv in present:
            shift = lv["start_unix_s"] - t0
            for rec in runs[i][2]:
                if rec["level"] != index:
                    continue
                rec = {**rec, "shard": i}
                for key in ("scheduled_s", "start_s", "end_s"):
                    if key in rec:
                        rec[key] = round(rec[key] + shift, 6)
                stats.add(rec)
                all_records.append(rec)
        merged_levels.append(stats.summary())
    statuses = [s["status"] for _, s, _ in runs]
    summary = {
        "target": first["target"],
        "config": {**cfg, "shard": None, "workers": sum(s["config"].get("workers", 1) for _, s, _ in runs)},
        "client": {"merged_from": [s.get("client", {}).get("host") for _, s, _ in runs]},
        "run_id": "+".join(str(s.get("run_id")) for _, s, _ in runs),
        "started_at": min(str(s.get("started_at")) for _, s, _ in runs),
        "finished_at": max(str(s.get("finished_at")) for _, s, _ in runs),
        "status": "complete" if set(statuses) == {"complete"} else next(st for st in statuses if st != "complete"),
        "shards": [
            {"dir": str(d), "run_id": s.get("run_id"), "status": s["status"], "shard": s["config"].get("shard"),
             "host": s.get("client", {}).get("host"), "records": len(recs)}
            for d, s, recs in runs
        ],
        "levels": merged_levels,
    }
    if warnings:
        summary["warnings"] = warnings
    all_records.sort(key=lambda r: (r["level"], r["start_s"]))
    return summary, all_records


def main(argv: list[str]) -> int:
    p = ArgParser(prog="python -m bench merge", description=__doc__.split("\n")[0])
    p.add_argument("dirs", nargs="+", type=Path, help="each shard's results directory")
    p.add_argument("--out", type=Path, required=True, help="where the merged results go")
    p.add_argument("--partial", action="store_true", help="merge even if some shards are missing")
    p.add_argument("--no-charts", action="store_true")
    args = p.parse_args(argv)
    try:
        summary, records = merge_runs(args.dirs, args.partial)
    except MergeError as exc:
        print(f"{p.prog}: error: {exc}", file=sys.stderr)
        return USAGE_EXIT
    from bench.report import write_outputs
    from bench.runner import write_json

    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "requests.jsonl").write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in records))
    write_json(args.out / "summary.json", summary)
    write_outputs(summary, args.out, charts=not args.no_charts)
    print(f"merged {len(args.dirs)} shard(s), {len(records)} records -> {args.out}/ (summary.json, requests.jsonl, "
          "report.md)")
    return 0
