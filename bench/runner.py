"""Run every level of a benchmark over the worker pool and write the results as they come.

requests.jsonl gets every record as soon as the parent receives it (flushed per batch), and
summary.json is rewritten after every level, so Ctrl-C or a crash keeps everything measured so far.
The first Ctrl-C stops sending, cancels requests in flight and writes the partial results; a second
one stops waiting for the workers.
"""

from __future__ import annotations

import datetime as dt
import os
import platform
import socket
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from time import perf_counter_ns

import orjson

from bench.config import BenchConfig, Level, split_level
from bench.rtt import connect_rtt
from bench.search import SearchPlan
from bench.server_metrics import attach as attach_server_metrics
from bench.server_metrics import start_scraper
from bench.stats import LevelStats
from bench.target import server_identity
from bench.workers import WorkerError, WorkerPool
from bench.workload_stats import WorkloadLevelStats

MIN_REQUESTS_FOR_ERROR_RATE = 20
DRAIN_TIMEOUT_S = 15.0
LEVEL_START_DELAY_S = 0.05  # from handing out a level to its first request, so every worker starts together
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_ERROR_RATE, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
# A level's failures past stats.ERROR_SHARE_LIMIT (unless --allow-errors); an invalid level with --strict.
EXIT_ERRORS, EXIT_INVALID = 4, 5


@dataclass
class RunResult:
    summary: dict
    exit_code: int
    out_dir: Path


class RequestLog:
    """requests.jsonl, appended and flushed batch by batch."""

    def __init__(self, path: Path):
        self.path = path
        self._file = open(path, "wb")  # noqa: SIM115 - lives for the whole run

    def write(self, records: list[dict]) -> None:
        self._file.write(b"".join(orjson.dumps(r) + b"\n" for r in records))
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def write_json(path: Path, obj: dict) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_bytes(orjson.dumps(obj, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY))
    os.replace(tmp, path)


def _client_info() -> dict:
    try:
        load = os.getloadavg()
    except OSError:
        load = None
    return {
        "host": socket.gethostname(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "load_average_at_start": [round(x, 2) for x in load] if load else None,
    }


def run_benchmark(cfg: BenchConfig, display=None) -> RunResult:
    """Run all levels; never raises for request failures (they are counted), only for setup problems."""
    out = cfg.out_dir
    out.mkdir(parents=True, exist_ok=True)
    run_tag = uuid.uuid4().hex[:8]
    summary = {
        "target": {"url": cfg.base_url, "endpoint": cfg.url, "model": cfg.model, "label": cfg.label,
                   "server": server_identity(cfg.base_url, None if cfg.sigv4 else cfg.api_key)},
        "config": cfg.public(),
        # The network between client and endpoint (bench.rtt), measured before any load.
        "client": {**_client_info(), "rtt_to_endpoint": connect_rtt(cfg.base_url)},
        "run_id": run_tag,
        "started_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "status": "running",
        "levels": [],
    }
    write_json(out / "summary.json", summary)
    log = RequestLog(out / "requests.jsonl")
    pool = WorkerPool(cfg.workers, cfg.worker_config(run_tag))
    status = "complete"
    current: list[LevelStats] = []  # the level being measured, so a failure keeps its partial figures
    plan = SearchPlan(cfg, cfg.search) if cfg.search is not None else None
    scraper = start_scraper(cfg)
    from bench.level_capacity import LevelCapacity

    # Instances at each level's start and end (bench.level_capacity); profile runs poll their own.
    instances = LevelCapacity(cfg.capacity if cfg.profile is None else None, cfg.base_url)
    try:
        pool.start()
        if cfg.start_at is not None:  # --start-at: every shard starts its first level at the agreed time
            from bench.shard import wait_until

            wait_until(cfg.start_at - LEVEL_START_DELAY_S)
        for level in plan.levels() if plan is not None else cfg.levels():
            if scraper is not None:
                scraper.begin_level()
            instances_at_start = instances.read()
            stats, level_status = _run_level(cfg, level, pool, log, display, current)
            current.clear()
            level_summary = stats.summary()
            instances.attach(level_summary, instances_at_start, instances.read())
            if scraper is not None:
                attach_server_metrics(level_summary, scraper, summary, display)
            summary["levels"].append(level_summary)
            if getattr(stats, "profile_watch", None) is not None:
                stats.profile_watch.attach(summary, out)
            if plan is not None:
                plan.record(level_summary)
                summary["search"] = plan.result()
            write_json(out / "summary.json", summary)
            if level_status == "max_error_rate" and plan is not None:
                continue  # that probe missed the SLO; the search goes on below it
            if level_status != "complete":
                status = level_status
                break
    except WorkerError as exc:
        status = "worker_error"
        summary["error"] = str(exc)
    except KeyboardInterrupt:  # a second Ctrl-C while draining
        status = "interrupted"
    except Exception as exc:  # a bug or a full disk in this process: keep what was measured, then raise
        status = "crashed"
        summary["error"] = f"{type(exc).__name__}: {exc}"
        raise
    finally:
        try:
            pool.close()
        finally:
            log.close()
            if scraper is not None:
                scraper.close()
                summary["server_metrics"] = scraper.public()
            if plan is not None:
                summary["search"] = plan.result(status)
            if current:  # the level that was running when it stopped: its records so far
                partial = current[0]
                partial.stopped_early = partial.stopped_early or f"run stopped: {status}"
                try:
                    summary["levels"].append(partial.summary())
                    if getattr(partial, "profile_watch", None) is not None:
                        partial.profile_watch.attach(summary, out)
                except Exception as exc:  # the statistics themselves failed: requests.jsonl has the records
                    summary["partial_level_error"] = f"{type(exc).__name__}: {exc}"
            summary["status"] = status
            summary["finished_at"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
            write_json(out / "summary.json", summary)
    return RunResult(summary, _exit_code(summary, status, cfg), out)


def _exit_code(summary: dict, status: str, cfg: BenchConfig | None = None) -> int:
    if status == "interrupted":
        return EXIT_INTERRUPTED
    total = sum(lv["requests"] for lv in summary["levels"])
    ok = sum(lv["succeeded"] for lv in summary["levels"])
    if status == "worker_error" or (total and not ok) or not total:
        return EXIT_FAILED
    if status == "max_error_rate":
        return EXIT_ERROR_RATE
    from bench.stats import ERROR_SHARE_LIMIT

    # A search's probes past the breaking point fail by design; the search applies its own error limit.
    judged = cfg is None or cfg.search is None
    if judged and not (cfg is not None and cfg.allow_errors) and any(
        lv.get("error_share", 0) > ERROR_SHARE_LIMIT for lv in summary["levels"]
    ):
        return EXIT_ERRORS
    if cfg is not None and cfg.strict and any(lv.get("valid") is False for lv in summary["levels"]):
        return EXIT_INVALID
    return EXIT_OK


def _run_level(cfg: BenchConfig, level: Level, pool: WorkerPool, log: RequestLog, display, current=None):
    stats = WorkloadLevelStats(level.index, level.concurrency, level.rate, cfg.slo, cfg.total_price_per_hour)
    stats.client_processes = pool.size  # for the client CPU share (stats.CLIENT_CPU_LIMIT)
    if current is not None:
        current.append(stats)
    start_at = perf_counter_ns() + int(LEVEL_START_DELAY_S * 1e9)  # every worker starts at the same instant
    stats.start_unix_s = round(time.time() + LEVEL_START_DELAY_S, 6)  # the shards' common time line (bench merge)
    pool.start_level(split_level(cfg, level, pool.size, start_at))
    if cfg.profile is not None:  # --profile: the time line and the capacity poller (bench.autoscaler)
        from bench.autoscaler import ProfileWatch

        stats.profile_watch = ProfileWatch(cfg, start_at)
    watch = getattr(stats, "profile_watch", None)
    if display is not None:
        display.start_level(level, cfg)
    done: set[int] = set()
    status = "complete"
    stopping_since = None
    last_draw = 0.0
    while len(done) < pool.size:
        try:
            for w, msg in pool.poll(0.1):
                kind = msg["t"]
                if kind == "records":
                    log.write(msg["records"])
                    for rec in msg["records"]:
                        stats.add(rec)
                        if watch is not None:
                            watch.add(rec)
                elif kind == "level_done":
                    stats.client_cpu_s += msg["cpu_s"]
                    done.add(w)
                elif kind in ("fatal", "died"):
                    raise WorkerError(msg.get("error", "worker failed"))
            if (
                stopping_since is None
                and cfg.max_error_rate is not None
                and stats.requests >= MIN_REQUESTS_FOR_ERROR_RATE
                and stats.failed / stats.requests > cfg.max_error_rate
            ):
                stats.stopped_early = (
                    f"error rate {stats.failed / stats.requests:.1%} over --max-error-rate {cfg.max_error_rate:.1%}"
                )
                status = "max_error_rate"
                pool.broadcast({"cmd": "stop"})
                stopping_since = time.monotonic()
            if stopping_since is not None and time.monotonic() - stopping_since > DRAIN_TIMEOUT_S:
                break
            now = time.monotonic()
            if display is not None and now - last_draw >= 0.25:
                display.update(stats)
                last_draw = now
        except KeyboardInterrupt:
            if status == "interrupted":
                break  # a second Ctrl-C: stop waiting for the workers, keep what arrived
            stats.stopped_early = "interrupted (Ctrl-C)"
            status = "interrupted"
            pool.broadcast({"cmd": "stop"})
            stopping_since = time.monotonic()
    if display is not None:
        display.end_level(stats)
    return stats, status
