"""Load-generating workers: each has its own event loop; the parent only aggregates and displays.

`--workers P` (P >= 1) starts P processes (spawned, so no state is shared), each running a share of every
level; one event loop per process keeps a busy loop from inflating TTFT at high concurrency.
`--workers 0` runs one worker in a thread of this process (for tests and embedding: no start-up cost,
but it shares the interpreter with the display).

Wire protocol over two one-way multiprocessing Pipes per worker, orjson-encoded dicts:
  parent -> worker: {"cmd": "level", "spec": {...}} | {"cmd": "stop"} | {"cmd": "exit"}
  worker -> parent: {"t": "ready"} | {"t": "fatal", "error": str} | {"t": "records", "records": [...]}
                    | {"t": "level_done", "level": n, "cpu_s": s, "sent": n}
Records are batched every 50 ms so the pipe costs one write per batch, not per request.

Two pipes, not one duplex one: the worker's event loop watches the command pipe, and uvloop (libuv)
makes a watched descriptor non-blocking. On a shared duplex socket that made a record batch larger
than the socket buffer go out in part (BlockingIOError mid-message) and the parent read garbage. The
result pipe is never watched, so it stays blocking, and one sender thread writes every message whole,
in order, without stalling the event loop while the parent catches up.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import multiprocessing.connection
import queue
import signal
import threading
import time
from dataclasses import asdict

import orjson

FLUSH_INTERVAL_S = 0.05


class WorkerError(RuntimeError):
    pass


class _Sender:
    """Writes worker -> parent messages whole and in order, from a thread of its own."""

    def __init__(self, conn):
        self._conn = conn
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._broken = False
        self._thread = threading.Thread(target=self._run, name="bench-worker-sender", daemon=True)
        self._thread.start()

    def send(self, msg: dict) -> None:
        self._queue.put(orjson.dumps(msg))

    def _run(self) -> None:
        while True:
            data = self._queue.get()
            if data is None:
                return
            if self._broken:
                continue
            try:
                self._conn.send_bytes(data)
            except OSError:  # the parent is gone: nothing left to tell
                self._broken = True

    def close(self, timeout_s: float = 30.0) -> None:
        """Send what is queued, then stop."""
        self._queue.put(None)
        self._thread.join(timeout_s)


def _make_prompts(cfg: dict):
    from bench.workloads import make_prompts

    return make_prompts(cfg["prompts"], cfg["worker"], cfg["workers"])


def worker_main(commands, results, cfg: dict, in_thread: bool) -> None:
    """`commands`: the pipe the parent writes to; `results`: the pipe this worker writes to."""
    if not in_thread:
        # Ctrl-C goes to the whole process group: only the parent reacts, then tells workers to stop.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    sender = _Sender(results)
    try:
        _run_worker(commands, sender, cfg, in_thread)
    finally:
        sender.close()


def _run_worker(commands, sender: _Sender, cfg: dict, in_thread: bool) -> None:
    loop_factory = None
    if cfg.get("loop", "auto") in ("auto", "uvloop"):
        try:
            import uvloop

            loop_factory = uvloop.new_event_loop
        except ImportError:
            if cfg.get("loop") == "uvloop":
                sender.send({"t": "fatal", "error": "--loop uvloop: uvloop is not installed"})
                return
    clock = time.thread_time if in_thread else time.process_time
    try:
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            runner.run(_serve(commands, sender, cfg, clock))
    except Exception as exc:  # reported to the parent, which prints it and exits non-zero
        sender.send({"t": "fatal", "error": f"{type(exc).__name__}: {exc}"})


async def _serve(conn, sender: _Sender, cfg: dict, clock) -> None:
    from bench.backend import Backend, SigV4Signer
    from bench.scheduler import LevelRunner, LevelSpec, RequestOptions

    loop = asyncio.get_running_loop()
    try:
        signer = SigV4Signer(**cfg["sigv4"]) if cfg.get("sigv4") else None
        prompts = _make_prompts(cfg)
    except Exception as exc:
        sender.send({"t": "fatal", "error": str(exc)})
        return
    backend = Backend(
        cfg["url"], cfg["headers"], cfg["timeout_s"], http2=cfg["http2"], signer=signer, stamping=cfg["stamping"]
    )
    await backend.start()
    options = RequestOptions(**cfg["options"])
    pending: list[dict] = []
    commands: asyncio.Queue = asyncio.Queue()
    current: dict = {"runner": None}

    def flush() -> None:
        if pending:
            sender.send({"t": "records", "records": pending})
            pending.clear()

    def on_command() -> None:
        try:
            msg = orjson.loads(conn.recv_bytes())
        except (EOFError, OSError):  # the parent is gone
            loop.remove_reader(conn.fileno())
            msg = {"cmd": "exit"}
        if msg["cmd"] == "stop":
            if current["runner"] is not None:
                current["runner"].stop()
        else:
            commands.put_nowait(msg)

    async def flusher() -> None:
        interval = cfg.get("flush_interval_s", FLUSH_INTERVAL_S)
        while True:
            await asyncio.sleep(interval)
            flush()

    loop.add_reader(conn.fileno(), on_command)
    flush_task = asyncio.ensure_future(flusher())
    sender.send({"t": "ready"})
    try:
        while True:
            msg = await commands.get()
            if msg["cmd"] == "exit":
                break
            spec = LevelSpec(**msg["spec"])
            runner = LevelRunner(backend, prompts, spec, options, pending.append, cfg["worker"], cfg["workers"])
            current["runner"] = runner
            cpu0 = clock()
            if spec.concurrency > 0 and (spec.requests is None or spec.requests > 0 or spec.warmup > 0):
                await runner.run()
            current["runner"] = None
            flush()
            sender.send({"t": "level_done", "level": spec.level, "cpu_s": clock() - cpu0, "sent": runner.sent})
    finally:
        loop.remove_reader(conn.fileno())
        flush_task.cancel()
        await backend.close()


class WorkerPool:
    """Parent side: start workers, hand out level shares, collect their messages."""

    def __init__(self, count: int, cfg: dict):
        self.in_thread = count == 0
        self.size = max(1, count)
        self._conns = []  # what each worker sends (the parent reads)
        self._commands = []  # what the parent sends each worker
        self._child_ends = []  # the worker's ends, closed here once a worker process holds its own
        self._handles = []
        ctx = multiprocessing.get_context("spawn")
        for w in range(self.size):
            command_r, command_w = multiprocessing.Pipe(duplex=False)
            result_r, result_w = multiprocessing.Pipe(duplex=False)
            wcfg = {**cfg, "worker": w, "workers": self.size}
            if self.in_thread:
                handle = threading.Thread(target=worker_main, args=(command_r, result_w, wcfg, True), daemon=True)
            else:
                handle = ctx.Process(target=worker_main, args=(command_r, result_w, wcfg, False), daemon=True)
            self._conns.append(result_r)
            self._commands.append(command_w)
            self._child_ends.append((command_r, result_w))
            self._handles.append(handle)

    def start(self, timeout_s: float = 60.0) -> None:
        for handle in self._handles:
            handle.start()
        if not self.in_thread:
            # A dead worker's result pipe then reads EOF: nothing in this process keeps its write end open.
            for ends in self._child_ends:
                for end in ends:
                    end.close()
            self._child_ends = []
        waiting = set(range(self.size))
        deadline = time.monotonic() + timeout_s
        while waiting:
            left = deadline - time.monotonic()
            if left <= 0:
                raise WorkerError(f"{len(waiting)} worker(s) did not start within {timeout_s:g}s")
            for w, msg in self.poll(left):
                if msg["t"] == "ready":
                    waiting.discard(w)
                elif msg["t"] in ("fatal", "died"):
                    raise WorkerError(msg.get("error", "a worker exited while starting"))

    def send(self, worker: int, msg: dict) -> None:
        try:
            self._commands[worker].send_bytes(orjson.dumps(msg))
        except OSError:
            pass  # the worker is gone; poll() reports it

    def broadcast(self, msg: dict) -> None:
        for w in range(self.size):
            self.send(w, msg)

    def start_level(self, specs: list) -> None:
        for w, spec in enumerate(specs):
            self.send(w, {"cmd": "level", "spec": asdict(spec)})

    def poll(self, timeout_s: float) -> list[tuple[int, dict]]:
        ready = multiprocessing.connection.wait(self._conns, timeout_s)
        out = []
        for conn in ready:
            w = self._conns.index(conn)
            try:
                data = conn.recv_bytes()
            except (EOFError, OSError):
                out.append((w, {"t": "died", "error": f"worker {w} exited unexpectedly"}))
                self._conns[w] = _ClosedConn()
                continue
            try:
                msg = orjson.loads(data)
            except orjson.JSONDecodeError as err:
                # Never crash the parent on one bad message: the caller stops the run and keeps what it has.
                msg = {"t": "fatal", "error": f"worker {w} sent a corrupt message ({len(data)} bytes): {err}"}
            out.append((w, msg))
        return out

    def close(self, timeout_s: float = 5.0) -> None:
        self.broadcast({"cmd": "exit"})
        deadline = time.monotonic() + timeout_s
        for handle in self._handles:
            if handle.is_alive() if hasattr(handle, "is_alive") else False:
                handle.join(max(0.0, deadline - time.monotonic()))
            if not self.in_thread and handle.is_alive():
                handle.terminate()
        for conn in (*self._conns, *self._commands):
            conn.close()
        for ends in self._child_ends:
            for end in ends:
                end.close()


class _ClosedConn:
    """Stands in for a dead worker's pipe so wait() ignores it."""

    def __init__(self):
        self._r, self._w = multiprocessing.Pipe(duplex=False)

    def fileno(self):
        return self._r.fileno()

    def send_bytes(self, data):
        raise OSError("worker is gone")

    def recv_bytes(self):
        raise EOFError

    def close(self):
        self._r.close()
        self._w.close()
