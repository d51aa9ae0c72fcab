"""bench.workers with more than one worker: message routing, a worker dying, record batches larger than
the pipe, and runs that keep every record received when something fails in the parent."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import asdict
from pathlib import Path

import pytest

from bench import runner as runner_module
from bench.config import BenchConfig, split_level
from bench.prompts import Distribution
from bench.runner import run_benchmark
from bench.workers import WorkerPool


def config(url: str, out: Path, **kw) -> BenchConfig:
    values = dict(url=url + "/chat/completions", base_url=url, model="m", concurrency=(4,), requests=12,
                  duration_s=None, warmup=0, input_tokens=Distribution("fixed", 8),
                  output_tokens=Distribution("fixed", 4), workers=2, out_dir=out, progress=False, timeout_s=30.0)
    values.update(kw)
    return BenchConfig(**values)


def collect(pool: WorkerPool, until, timeout_s: float = 60.0) -> list[tuple[int, dict]]:
    """poll() until `until(messages)` holds, or fail after timeout_s (a routing bug must not hang the suite)."""
    messages: list[tuple[int, dict]] = []
    deadline = time.monotonic() + timeout_s
    while not until(messages):
        assert time.monotonic() < deadline, f"gave up waiting; got {[(w, m['t']) for w, m in messages]}"
        messages.extend(pool.poll(0.1))
    return messages


def read_run(out: Path) -> tuple[dict, list[dict]]:
    summary = json.loads((out / "summary.json").read_text())
    records = [json.loads(line) for line in (out / "requests.jsonl").read_text().splitlines()]
    return summary, records


@pytest.fixture
def pools():
    started: list[WorkerPool] = []

    def make(count: int, cfg: BenchConfig) -> WorkerPool:
        pool = WorkerPool(count, cfg.worker_config("t"))
        started.append(pool)
        pool.start()
        return pool

    yield make
    for pool in started:
        pool.close()


def test_each_worker_gets_its_own_share_and_its_messages_are_routed_back_to_it(mock_server, tmp_path, pools):
    server = mock_server()
    cfg = config(server.url, tmp_path, concurrency=(3,), requests=7, workers=3)
    pool = pools(3, cfg)
    specs = split_level(cfg, cfg.levels()[0], pool.size, 0)
    assert [s.requests for s in specs] == [3, 2, 2]  # unequal shares: a misrouted spec shows
    pool.start_level(specs)
    done = lambda msgs: sum(m["t"] == "level_done" for _, m in msgs) == 3  # noqa: E731
    messages = collect(pool, done)
    assert not [m for _, m in messages if m["t"] in ("fatal", "died")]
    for w, msg in messages:
        if msg["t"] == "records":
            # Every record poll() attributes to worker w was made by worker w.
            assert {r["worker"] for r in msg["records"]} == {w}
            assert all(r["id"] % 3 == w for r in msg["records"])
    sent = {w: m["sent"] for w, m in messages if m["t"] == "level_done"}
    assert sent == {0: 3, 1: 2, 2: 2}
    per_worker = {w: sum(len(m["records"]) for v, m in messages if v == w and m["t"] == "records") for w in range(3)}
    assert per_worker == {0: 3, 1: 2, 2: 2}
    assert server.state.count == 7

    # A command goes to the worker it is addressed to only.
    pool.send(2, {"cmd": "level", "spec": asdict(specs[0])})
    messages = collect(pool, lambda msgs: any(m["t"] == "level_done" for _, m in msgs))
    assert {w for w, m in messages} == {2}
    assert [m["sent"] for _, m in messages if m["t"] == "level_done"] == [3]


def test_a_worker_that_dies_is_reported_and_its_pipe_ignored(mock_server, tmp_path, pools):
    server = mock_server()
    pool = pools(2, config(server.url, tmp_path))
    pool._handles[1].kill()
    messages = collect(pool, lambda msgs: any(m["t"] == "died" for _, m in msgs), timeout_s=20)
    assert [(w, m["t"]) for w, m in messages] == [(1, "died")]
    assert "worker 1 exited unexpectedly" in messages[0][1]["error"]
    pool.send(1, {"cmd": "stop"})  # no error writing to the dead worker
    assert pool.poll(0.05) == []  # its pipe is never reported again
    # The live worker still answers.
    cfg = config(server.url, tmp_path, requests=2, concurrency=(2,))
    pool.send(0, {"cmd": "level", "spec": asdict(split_level(cfg, cfg.levels()[0], 1, 0)[0])})
    messages = collect(pool, lambda msgs: any(m["t"] == "level_done" for _, m in msgs))
    assert {w for w, _ in messages} == {0}


class _KillingPool(WorkerPool):
    """A WorkerPool whose worker 1 is killed once the parent has received `after` records."""

    after = 4

    def poll(self, timeout_s):
        out = super().poll(timeout_s)
        self.received = getattr(self, "received", 0) + sum(
            len(m["records"]) for _, m in out if m["t"] == "records")
        if self.received >= self.after and self._handles[1].is_alive():
            self._handles[1].kill()
        return out


def test_a_worker_dying_mid_level_stops_the_run_with_every_record_received_kept(mock_server, tmp_path,
                                                                               monkeypatch):
    server = mock_server(ttft_ms=5, itl_ms=20)  # ~100 ms a request: the level is still running at the kill
    monkeypatch.setattr(runner_module, "WorkerPool", _KillingPool)
    out = tmp_path / "run"
    result = run_benchmark(config(server.url, out, requests=400, concurrency=(4,)))
    assert result.exit_code == 1
    summary, records = read_run(out)
    assert summary["status"] == "worker_error" and "worker 1 exited unexpectedly" in summary["error"]
    assert summary["finished_at"]
    (level,) = summary["levels"]  # the partial level is in the summary, as the records are in the log
    assert level["stopped_early"] == "run stopped: worker_error"
    assert 4 <= level["requests"] == len(records) < 400


def test_a_parent_side_crash_keeps_the_records_and_the_finished_levels(mock_server, tmp_path):
    server = mock_server()

    class BrokenDisplay:
        def start_level(self, level, cfg):
            self.level = level.index

        def update(self, stats):
            if self.level == 1 and stats.requests:
                raise RuntimeError("display broke")

        def end_level(self, stats):
            pass

    out = tmp_path / "run"
    cfg = config(server.url, out, concurrency=(2, 2), requests=40, workers=0,
                 output_tokens=Distribution("fixed", 30))
    with pytest.raises(RuntimeError, match="display broke"):
        run_benchmark(cfg, display=BrokenDisplay())
    summary, records = read_run(out)
    assert summary["status"] == "crashed" and summary["error"] == "RuntimeError: display broke"
    first, partial = summary["levels"]
    assert first["requests"] == 40 and partial["stopped_early"] == "run stopped: crashed"
    assert first["requests"] + partial["requests"] == len(records)


def test_corrupt_message_is_a_worker_error_not_a_parent_crash(tmp_path):
    pool = WorkerPool(0, config("http://127.0.0.1:9", tmp_path).worker_config("t"))
    try:
        # What a half-written batch looked like to the parent: bytes that are not one JSON message.
        pool._handles[0] = None
        writer = pool._child_ends[0][1]
        writer.send_bytes(b'{"t": "records", "records": [{"id"')
        ((w, msg),) = pool.poll(1.0)
        assert w == 0 and msg["t"] == "fatal" and "corrupt message" in msg["error"]
    finally:
        pool._handles = []
        pool.close()


class BusyDisplay:
    """A display whose first redraw takes 2 s: the parent reads nothing from the workers meanwhile."""

    def __init__(self):
        self.slept = False

    def start_level(self, level, cfg):
        pass

    def update(self, stats):
        if not self.slept:
            self.slept = True
            time.sleep(2.0)

    def end_level(self, stats):
        pass


def test_a_run_keeps_every_record_when_batches_outgrow_the_pipe_while_the_parent_is_busy(mock_server, tmp_path):
    # The same through run_benchmark with the worker in a thread (--workers 0): ~750 KB of records
    # pile up while the display holds the parent.
    server = mock_server(ttft_ms=1, itl_ms=0)
    out = tmp_path / "run"
    cfg = config(server.url, out, concurrency=(64,), requests=150, workers=0, loop="uvloop",
                 output_tokens=Distribution("fixed", 256))
    results = []
    thread = threading.Thread(target=lambda: results.append(run_benchmark(cfg, display=BusyDisplay())), daemon=True)
    thread.start()
    thread.join(60)  # the old pipe lost the level_done message in the garbage: the run never ended
    assert results, "the run did not finish within 60 s"
    summary, records = read_run(out)
    assert summary["status"] == "complete", summary.get("error")
    assert results[0].exit_code == 0
    assert len(records) == 150 and all(r["ok"] and len(r["itl_ms"]) == 255 for r in records)
    assert summary["levels"][0]["requests"] == 150
    assert len((out / "requests.jsonl").read_bytes()) > 2 * 212_992


def test_records_from_a_worker_process_arrive_whole_while_the_parent_is_busy(mock_server, tmp_path):
    # The crash as users met it: one worker process under uvloop at high concurrency, the parent busy
    # (2 cores, drawing the display). 150 replies of 256 tokens make ~750 KB of records, far more than a
    # socket's ~208 KB buffer holds while the parent is not reading. The old non-blocking duplex pipe
    # then wrote a batch in part (BlockingIOError mid-message) and the parent read garbage.
    server = mock_server(ttft_ms=1, itl_ms=0)
    cfg = config(server.url, tmp_path, concurrency=(64,), requests=150, workers=1, loop="uvloop",
                 output_tokens=Distribution("fixed", 256))
    pool = WorkerPool(1, cfg.worker_config("t"))
    try:
        pool.start()
        pool.start_level(split_level(cfg, cfg.levels()[0], 1, 0))
        time.sleep(2.0)  # a busy parent: nothing reads the pipe meanwhile
        messages = collect(pool, lambda msgs: any(m["t"] in ("level_done", "fatal", "died") for _, m in msgs))
    finally:
        pool.close()
    kinds = [m["t"] for _, m in messages]
    assert kinds[-1] == "level_done" and set(kinds[:-1]) == {"records"}, messages[-1]
    records = [r for _, m in messages[:-1] for r in m["records"]]
    assert len(records) == 150 and all(r["ok"] and len(r["itl_ms"]) == 255 for r in records)
    assert sorted(r["id"] for r in records) == list(range(150))
    assert sum(len(json.dumps(m)) for _, m in messages) > 2 * 212_992


# ------------------------------------------------------------------ in-thread worker (mutation testing)
# The worker's code runs in this process with --workers 0, so mutmut sees which tests reach it.


def test_an_in_thread_worker_runs_levels_batches_records_and_reports_each_level(mock_server, tmp_path):
    server = mock_server(ttft_ms=1, itl_ms=1)
    cfg = config(server.url, tmp_path, concurrency=(2,), requests=5, workers=0)
    pool = WorkerPool(0, {**cfg.worker_config("t"), "flush_interval_s": 0.01})
    assert (pool.in_thread, pool.size) == (True, 1)
    try:
        pool.start()
        spec = split_level(cfg, cfg.levels()[0], 1, 0)[0]
        pool.start_level([spec])
        messages = collect(pool, lambda msgs: any(m["t"] == "level_done" for _, m in msgs))
        kinds = [m["t"] for _, m in messages]
        assert kinds[-1] == "level_done" and set(kinds[:-1]) == {"records"}
        done = messages[-1][1]
        assert (done["level"], done["sent"]) == (0, 5) and 0 <= done["cpu_s"] < 30
        records = [r for _, m in messages[:-1] for r in m["records"]]
        assert sorted(r["id"] for r in records) == [0, 1, 2, 3, 4] and all(r["ok"] for r in records)
        # A share with nothing to send still answers, with nothing sent.
        for changes in ({"level": 3, "requests": 0, "warmup": 0}, {"level": 4, "concurrency": 0}):
            pool.start_level([type(spec)(**{**asdict(spec), **changes})])
            ((w, done),) = collect(pool, lambda msgs: any(m["t"] == "level_done" for _, m in msgs))
            assert (w, done["t"], done["level"], done["sent"]) == (0, "level_done", changes["level"], 0)
        assert server.state.count == 5
    finally:
        pool.close()
    assert not pool._handles[0].is_alive()  # exit ends the worker's thread


def test_stop_ends_a_level_early_and_the_worker_still_reports_it(mock_server, tmp_path):
    server = mock_server(ttft_ms=2000, itl_ms=1)  # replies that would take 2 s each
    cfg = config(server.url, tmp_path, concurrency=(2,), requests=50, workers=0)
    pool = WorkerPool(0, cfg.worker_config("t"))
    try:
        pool.start()
        pool.start_level(split_level(cfg, cfg.levels()[0], 1, 0))
        deadline = time.monotonic() + 10
        while server.state.in_flight < 2:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        pool.broadcast({"cmd": "stop"})
        messages = collect(pool, lambda msgs: any(m["t"] == "level_done" for _, m in msgs), timeout_s=1.5)
        (done,) = [m for _, m in messages if m["t"] == "level_done"]
        assert done["sent"] == 2  # the two in flight were cancelled, and nothing else was sent
        assert not [m for _, m in messages if m["t"] == "records" and m["records"]]
    finally:
        pool.close()


def test_a_worker_that_cannot_build_its_prompts_is_a_start_error(tmp_path):
    cfg = config("http://127.0.0.1:9", tmp_path, workers=0).worker_config("t")
    cfg["prompts"] = {**cfg["prompts"], "kind": "dataset", "path": str(tmp_path / "missing.json")}
    pool = WorkerPool(0, cfg)
    try:
        with pytest.raises(Exception) as raised:
            pool.start(timeout_s=20)
        assert type(raised.value).__name__ == "WorkerError" and "missing.json" in str(raised.value)
    finally:
        pool.close()


def test_a_worker_that_never_answers_is_a_start_timeout(tmp_path):
    from bench.workers import WorkerError

    pool = WorkerPool(0, config("http://127.0.0.1:9", tmp_path).worker_config("t"))
    pool._handles = [threading.Thread(target=lambda: None)]  # a worker that never says it is ready
    try:
        with pytest.raises(WorkerError, match=r"^1 worker\(s\) did not start within 0.2s$"):
            pool.start(timeout_s=0.2)
    finally:
        pool.close()


def test_uvloop_asked_for_and_missing_is_a_fatal_message(tmp_path, monkeypatch):
    import builtins

    from bench.workers import WorkerError

    real_import = builtins.__import__

    def no_uvloop(name, *args, **kwargs):
        if name == "uvloop":
            raise ImportError("no uvloop")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_uvloop)
    pool = WorkerPool(0, config("http://127.0.0.1:9", tmp_path, loop="uvloop").worker_config("t"))
    try:
        with pytest.raises(WorkerError, match="^--loop uvloop: uvloop is not installed$"):
            pool.start(timeout_s=20)
    finally:
        pool.close()
    # "auto" falls back to asyncio's own loop instead.
    pool = WorkerPool(0, config("http://127.0.0.1:9", tmp_path, loop="auto").worker_config("t"))
    try:
        pool.start(timeout_s=20)
    finally:
        pool.close()


def test_the_sender_writes_every_message_in_order_and_stops_quietly_when_the_parent_is_gone():
    import multiprocessing

    import orjson

    from bench.workers import _Sender

    reader, writer = multiprocessing.Pipe(duplex=False)
    sender = _Sender(writer)
    for n in range(100):
        sender.send({"n": n})
    sender.close(timeout_s=10)
    assert [orjson.loads(reader.recv_bytes())["n"] for _ in range(100)] == list(range(100))
    assert not sender._thread.is_alive()
    reader, writer = multiprocessing.Pipe(duplex=False)
    reader.close()  # the parent is gone
    sender = _Sender(writer)
    sender.send({"n": 1})
    sender.send({"n": 2})
    sender.close(timeout_s=10)
    assert sender._broken and not sender._thread.is_alive()
