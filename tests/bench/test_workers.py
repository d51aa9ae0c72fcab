"""bench.workers with more than one worker: message routing, a worker dying, record batches larger than
the pipe, and runs that keep every record received when something fails in the parent."""

from __future__ import annotations

import itertools
import json
import logging
import multiprocessing
import os
import signal
import threading
import time
from dataclasses import asdict
from multiprocessing.connection import Connection
from pathlib import Path

import orjson
import pytest

from bench import runner as runner_module
from bench.config import BenchConfig, Level, split_level
from bench.prompts import Distribution
from bench.runner import run_benchmark
from bench.workers import WorkerError, WorkerPool, _Sender, worker_main


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


# ------------------------------------------------------------------ survivors of mutation testing
# Each test below was written against a mutant that the tests above let through (docs/testing.md).

class FakeProcess:
    """Stands in for a worker process in the parent's bookkeeping: nothing is spawned. `on_start` is what the
    process says before the parent closes its copies of the pipe ends (None: it dies without a word)."""

    def __init__(self, on_start=None, alive: bool = False, exits_on_join: bool = False):
        self.on_start, self.alive, self.exits_on_join = on_start, alive, exits_on_join
        self.joins: list = []
        self.terminated = False

    def start(self):
        if self.on_start is not None:
            self.on_start()

    def is_alive(self):
        return self.alive

    def join(self, timeout=None):
        self.joins.append(timeout)
        if self.exits_on_join:
            self.alive = False

    def terminate(self):
        self.terminated, self.alive = True, False


def says_ready(pool: WorkerPool, w: int):
    writer = pool._child_ends[w][1]
    return lambda: writer.send_bytes(b'{"t": "ready"}')


def command_reader(pool: WorkerPool, w: int) -> Connection:
    """A second handle on worker w's command pipe, still open after the pool closes its own."""
    return Connection(os.dup(pool._child_ends[w][0].fileno()), writable=False)


def in_threads(pool: WorkerPool) -> WorkerPool:
    """Run each worker process's own target (worker_main, its pipe ends, its share of the config) in a thread of
    this process instead, so the process pool's wiring is exercised where mutmut sees it."""
    spawn = multiprocessing.get_context("spawn").Process
    for handle in pool._handles:
        # spawned (not forked from a parent running threads), daemonic (a parent that exits never waits for it),
        # and told it is a process (it then ignores Ctrl-C, which the parent handles)
        assert isinstance(handle, spawn) and handle.daemon
        assert handle._target is worker_main and handle._args[3] is False
    pool.in_thread = True
    pool._handles = [threading.Thread(target=worker_main, args=(*h._args[:3], True), daemon=True)
                     for h in pool._handles]
    return pool


def level_done(msgs) -> bool:
    return any(m["t"] in ("level_done", "fatal", "died") for _, m in msgs)


def test_three_process_workers_run_in_threads_get_their_share_and_their_dataset_stride(mock_server, tmp_path):
    server = mock_server(ttft_ms=1, itl_ms=0)
    dataset = tmp_path / "prompts.jsonl"
    dataset.write_text("".join(json.dumps({"prompt": f"question {n}"}) + "\n" for n in range(5)))
    cfg = config(server.url, tmp_path, concurrency=(3,), requests=7, workers=3, dataset=str(dataset))
    pool = in_threads(WorkerPool(3, {**cfg.worker_config("t"), "flush_interval_s": 0.01}))
    try:
        pool.start(timeout_s=20)
        pool.start_level(split_level(cfg, cfg.levels()[0], 3, 0))
        messages = collect(pool, lambda msgs: sum(m["t"] == "level_done" for _, m in msgs) == 3)
        assert not [m for _, m in messages if m["t"] in ("fatal", "died")]
        records = {w: [r for v, m in messages if v == w and m["t"] == "records" for r in m["records"]]
                   for w in range(3)}
        assert {w: sorted(r["id"] for r in rs) for w, rs in records.items()} == {0: [0, 3, 6], 1: [1, 4], 2: [2, 5]}
        assert all(r["worker"] == w and r["ok"] for w, rs in records.items() for r in rs)
        assert {w: m["sent"] for w, m in messages if m["t"] == "level_done"} == {0: 3, 1: 2, 2: 2}
        assert server.state.count == 7
    finally:
        pool.close()


def test_a_worker_process_that_exits_before_it_is_ready_is_a_start_error_naming_it(tmp_path):
    pool = WorkerPool(2, config("http://127.0.0.1:9", tmp_path).worker_config("t"))
    # worker 0 says ready, worker 1 dies without a word: its pipe reads EOF once the parent has closed
    # its own copy of the write end
    pool._handles = [FakeProcess(on_start=says_ready(pool, 0)), FakeProcess()]
    try:
        with pytest.raises(WorkerError, match="^worker 1 exited unexpectedly$"):
            pool.start(timeout_s=2)
    finally:
        pool.close()


def test_worker_processes_that_say_ready_start_and_close_tells_each_to_exit_then_terminates_the_stuck(tmp_path):
    pool = WorkerPool(2, config("http://127.0.0.1:9", tmp_path).worker_config("t"))
    commands = [command_reader(pool, w) for w in range(2)]
    exits, stuck = FakeProcess(alive=True, exits_on_join=True), FakeProcess(alive=True)
    exits.on_start, stuck.on_start = says_ready(pool, 0), says_ready(pool, 1)
    pool._handles = [exits, stuck]
    pool.start(timeout_s=0.5)  # both are ready at once: well within half a second
    pool.close(timeout_s=0)  # no time left to wait: each is joined for 0 s, the one still alive is terminated
    assert [orjson.loads(c.recv_bytes()) for c in commands] == [{"cmd": "exit"}, {"cmd": "exit"}]
    assert (exits.joins, exits.terminated) == ([0.0], False)
    assert (stuck.joins, stuck.terminated) == ([0.0], True)
    for c in commands:
        c.close()


def test_close_waits_for_a_worker_thread_within_its_timeout_and_never_terminates_it(tmp_path):
    pool = WorkerPool(0, config("http://127.0.0.1:9", tmp_path).worker_config("t"))
    thread = FakeProcess(alive=True)  # a worker thread that does not exit in time: threads cannot be killed
    pool._handles = [thread]
    pool.close(timeout_s=0.5)
    assert len(thread.joins) == 1 and 0 < thread.joins[0] <= 0.5 and not thread.terminated  # waits, within 0.5 s


def test_an_in_thread_worker_never_keeps_the_interpreter_from_exiting(tmp_path):
    pool = WorkerPool(0, config("http://127.0.0.1:9", tmp_path).worker_config("t"))
    assert pool._handles[0].daemon
    pool._handles = []
    pool.close()


def test_a_dead_worker_is_reported_once_after_the_records_it_sent(tmp_path):
    pool = WorkerPool(0, config("http://127.0.0.1:9", tmp_path).worker_config("t"))
    pool._handles = []  # nothing runs: the test writes what a worker would, then "dies"
    try:
        writer = pool._child_ends[0][1]
        writer.send_bytes(orjson.dumps({"t": "records", "records": [{"id": 7}]}))
        writer.close()
        messages = collect(pool, lambda msgs: any(m["t"] == "died" for _, m in msgs), timeout_s=5)
        assert messages == [(0, {"t": "records", "records": [{"id": 7}]}),
                            (0, {"t": "died", "error": "worker 0 exited unexpectedly"})]
        assert pool.poll(0.05) == []  # its pipe is never reported again
        pool.send(0, {"cmd": "stop"})  # no error writing to the dead worker
    finally:
        pool.close()


@pytest.mark.parametrize("loop, uvloop_used", [("asyncio", False), ("uvloop", True), ("auto", True), (None, True)])
def test_the_worker_runs_the_event_loop_asked_for(tmp_path, monkeypatch, loop, uvloop_used):
    import uvloop

    made = []
    real = uvloop.new_event_loop
    monkeypatch.setattr(uvloop, "new_event_loop", lambda: made.append(1) or real())
    cfg = config("http://127.0.0.1:9", tmp_path, loop=loop or "auto").worker_config("t")
    if loop is None:
        del cfg["loop"]  # an embedding caller's config without it: "auto"
    pool = WorkerPool(0, cfg)
    try:
        pool.start(timeout_s=20)
    finally:
        pool.close()
    assert bool(made) is uvloop_used


def counting_clock(start: float, step: float):
    counter = itertools.count()
    return lambda: start + step * next(counter)


def test_an_in_thread_worker_reports_its_own_thread_cpu_time_for_a_level(tmp_path, monkeypatch):
    # --workers 0 shares the process with the display: the worker's CPU is its thread's, not the process's
    monkeypatch.setattr(time, "thread_time", counting_clock(100.0, 0.25))
    monkeypatch.setattr(time, "process_time", counting_clock(100.0, 0.5))
    cfg = config("http://127.0.0.1:9", tmp_path, workers=0, requests=0)
    pool = WorkerPool(0, cfg.worker_config("t"))
    try:
        pool.start(timeout_s=20)
        pool.start_level(split_level(cfg, cfg.levels()[0], 1, 0))  # nothing to send: no other clock reads
        ((_, done),) = collect(pool, level_done)
        assert (done["t"], done["cpu_s"], done["sent"]) == ("level_done", 0.25, 0)
    finally:
        pool.close()


def test_a_worker_process_ignores_ctrl_c_and_reports_its_process_cpu_time(tmp_path, monkeypatch):
    # worker_main as a spawned process runs it, here in the main thread (signal handlers can only be set there)
    monkeypatch.setattr(time, "thread_time", counting_clock(100.0, 0.25))
    monkeypatch.setattr(time, "process_time", counting_clock(100.0, 0.5))
    cfg = config("http://127.0.0.1:9", tmp_path, workers=1, requests=0)
    command_r, command_w = multiprocessing.Pipe(duplex=False)
    result_r, result_w = multiprocessing.Pipe(duplex=False)
    spec = split_level(cfg, cfg.levels()[0], 1, 0)[0]
    command_w.send_bytes(orjson.dumps({"cmd": "level", "spec": asdict(spec)}))
    command_w.send_bytes(orjson.dumps({"cmd": "exit"}))
    previous = signal.getsignal(signal.SIGINT)
    try:
        worker_main(command_r, result_w, {**cfg.worker_config("t"), "worker": 0, "workers": 1}, False)
        assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)
    messages = []
    while result_r.poll(0):
        messages.append(orjson.loads(result_r.recv_bytes()))
    assert messages == [{"t": "ready"}, {"t": "level_done", "level": 0, "cpu_s": 0.5, "sent": 0}]
    for end in (command_r, command_w, result_r, result_w):
        end.close()


@pytest.mark.parametrize("how", ["exit", "parent gone"])
def test_a_worker_told_to_exit_or_left_by_its_parent_ends_without_a_word(tmp_path, how):
    pool = WorkerPool(0, config("http://127.0.0.1:9", tmp_path).worker_config("t"))
    try:
        pool.start(timeout_s=20)
        if how == "exit":
            pool.broadcast({"cmd": "exit"})
        else:
            pool._commands[0].close()  # the worker's command pipe reads EOF
        pool._handles[0].join(10)
        assert not pool._handles[0].is_alive()
        assert pool.poll(0.1) == []  # no fatal message: an exit is not an error
    finally:
        pool.close()


def test_a_stop_between_levels_is_ignored_and_the_next_level_runs_in_full(mock_server, tmp_path, caplog):
    server = mock_server(ttft_ms=1, itl_ms=0)
    cfg = config(server.url, tmp_path, concurrency=(2,), requests=3, workers=0)
    spec = split_level(cfg, cfg.levels()[0], 1, 0)[0]
    pool = WorkerPool(0, cfg.worker_config("t"))
    caplog.set_level(logging.ERROR)
    try:
        pool.start(timeout_s=20)
        for _ in range(2):  # a stop before the first level, and one after a level has ended
            pool.broadcast({"cmd": "stop"})
            pool.start_level([spec])
            messages = collect(pool, level_done)
            assert messages[-1][1]["t"] == "level_done" and messages[-1][1]["sent"] == 3
    finally:
        pool.close()
    assert server.state.count == 6
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]  # no "Exception in callback"


def test_a_long_flush_interval_batches_a_whole_level_into_one_message(mock_server, tmp_path):
    # Replies 300 ms apart: with the configured interval (an hour) nothing is flushed before the level ends.
    server = mock_server(ttft_ms=300, itl_ms=0)
    cfg = config(server.url, tmp_path, concurrency=(1,), requests=2, workers=0)
    pool = WorkerPool(0, {**cfg.worker_config("t"), "flush_interval_s": 3600})
    try:
        pool.start(timeout_s=20)
        pool.start_level(split_level(cfg, cfg.levels()[0], 1, 0))
        messages = collect(pool, level_done)
        assert [(m["t"], len(m.get("records", []))) for _, m in messages] == [("records", 2), ("level_done", 0)]
    finally:
        pool.close()


def test_an_in_thread_worker_runs_the_smallest_shares_and_skips_a_rate_share_without_slots(mock_server, tmp_path):
    server = mock_server(ttft_ms=1, itl_ms=0)
    cfg = config(server.url, tmp_path, concurrency=(1,), requests=1, workers=0)
    base = split_level(cfg, cfg.levels()[0], 1, 0)[0]
    assert (base.concurrency, base.requests, base.warmup) == (1, 1, 0)
    # a timed rate level of 1 slot over 2 workers: worker 1's share has no slot, no rate and no request count
    timed = config(server.url, tmp_path, concurrency=(1,), requests=None, duration_s=0.2, workers=0)
    idle = split_level(timed, Level(5, 1, 4.0, 0), 2, 0)[1]
    assert (idle.mode, idle.concurrency, idle.rate, idle.requests) == ("rate", 0, None, None)
    shares = [
        (base, 1, 1),  # one slot, one request
        (type(base)(**{**asdict(base), "level": 1, "requests": 0, "warmup": 1}), 1, 1),  # a warmup only
        (type(base)(**{**asdict(base), "level": 2, "requests": None, "duration_s": 0.2}), None, None),  # timed
        (idle, 0, 0),
    ]
    pool = WorkerPool(0, cfg.worker_config("t"))
    try:
        pool.start(timeout_s=20)
        for spec, sent, count in shares:
            before = server.state.count
            pool.start_level([spec])
            messages = collect(pool, level_done)
            (_, done) = messages[-1]
            assert (done["t"], done["level"]) == ("level_done", spec.level), done
            if sent is None:
                assert done["sent"] >= 1 and server.state.count - before == done["sent"]
            else:
                assert (done["sent"], server.state.count - before) == (sent, count)
    finally:
        pool.close()


def test_a_level_the_worker_cannot_run_is_a_fatal_message_naming_the_exception(tmp_path):
    pool = WorkerPool(0, config("http://127.0.0.1:9", tmp_path).worker_config("t"))
    try:
        pool.start(timeout_s=20)
        pool.send(0, {"cmd": "level", "spec": {"level": 0, "bogus": 1}})
        ((w, msg),) = collect(pool, level_done)
        assert (w, msg["t"]) == (0, "fatal")
        assert msg["error"].startswith("TypeError: ") and "bogus" in msg["error"]
    finally:
        pool.close()


def test_the_worker_builds_its_client_from_the_config(tmp_path, monkeypatch):
    from bench import backend as backend_module

    built = []

    class Recording(backend_module.Backend):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            built.append(self)

    monkeypatch.setattr(backend_module, "Backend", Recording)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-a-real-secret")  # pragma: allowlist secret
    for kw in ({"api_key": "k", "timeout_s": 7.5, "stamping": "task"}, {"http2": True, "sigv4": {"region": "eu-west-1"}}):
        pool = WorkerPool(0, config("http://127.0.0.1:9", tmp_path, **kw).worker_config("t"))
        try:
            pool.start(timeout_s=20)
        finally:
            pool.close()
    keyed, signed = built
    assert (keyed.url, keyed.timeout_s, keyed.http2, keyed.stamping, keyed.signer) == (
        "http://127.0.0.1:9/chat/completions", 7.5, False, "task", None)
    assert keyed.headers["Authorization"] == "Bearer k"
    assert signed.http2 is True and isinstance(signed.signer, backend_module.SigV4Signer)
    assert signed.signer._auth._region_name == "eu-west-1"


def test_sigv4_without_credentials_is_a_start_error_that_says_so(tmp_path, no_aws_credentials):
    pool = WorkerPool(0, config("http://127.0.0.1:9", tmp_path, sigv4={"region": "eu-west-1"}).worker_config("t"))
    try:
        with pytest.raises(WorkerError, match="--sigv4: no AWS credentials found"):
            pool.start(timeout_s=20)
    finally:
        pool.close()


def test_the_sender_gives_up_waiting_at_close_when_the_parent_stops_reading():
    reader, writer = multiprocessing.Pipe(duplex=False)
    sender = _Sender(writer)
    assert sender._thread.daemon  # a sender stuck on a full pipe never keeps the worker process alive
    sender.send({"pad": "x" * 1_000_000})  # far more than the pipe holds: the write blocks, nobody reads
    closing = threading.Thread(target=sender.close, kwargs={"timeout_s": 0.2}, daemon=True)
    closing.start()
    closing.join(10)
    try:
        assert not closing.is_alive()  # close() returned after its timeout, the write still pending
    finally:
        reader.close()  # the write fails, the sender ends
        sender._thread.join(10)
    assert not sender._thread.is_alive()
