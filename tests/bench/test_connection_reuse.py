"""Keep-alive reuse against a real server that closes its connections after every N requests.

What the first `make demo` lost a request to: llama.cpp's llama-server (llama-cpp-python 0.3.36, cpp-httplib
0.58) closes the connection after every streamed reply, while announcing `Keep-Alive: timeout=5, max=100`
and no `Connection: close` (seen with http.client on one connection: the second request gets "Remote end
closed connection without response" or a broken pipe). Source: tools/server/server-http.cpp's
chunked_content_provider returns `has_next`, false after the last chunk's `sink.done()`, and cpp-httplib's
write_content_chunked takes a false return as Error::Canceled, so the response "fails" and
process_server_socket_core leaves its keep-alive loop. A pooled connection is then dead as soon as its
stream ends; a request put on it before the client saw the FIN fails at once, and at c=8 several are
dead together, so a retry through the pool can land on another. cpp-httplib also caps a connection at
CPPHTTPLIB_KEEPALIVE_MAX_COUNT requests (100; 5 in releases <= 0.12), announced with `Connection: close`
on the last, and any HTTP/1.1 server may close an idle connection as a request arrives (RFC 9112 9.3.1).

The server here makes each case exact: `announce` answers the Nth request with `Connection: close` and
closes; `silent` answers N requests as if it would keep the connection, then reads request N+1 and closes
without a byte of reply; `after_reply` closes right after each reply without saying so (llama-server's
way: whether the client sees the FIN before reusing is a race); `midstream` cuts a reply after its
headers; `drop_all` closes every request, on new connections too.
"""

from __future__ import annotations

import asyncio
import socket
import threading

import orjson
import pytest

from bench.backend import Backend
from bench.measure import measure

BODY = orjson.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, "stream": True})
CHUNK = b'data: {"choices":[{"index":0,"delta":{"content":"tok"}}]}\n\n'
REPLY = CHUNK * 2 + b'data: {"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":2}}\n\ndata: [DONE]\n\n'


class ClosingServer:
    """A raw asyncio HTTP/1.1 server on its own thread; counts connections, replies and dropped requests."""

    def __init__(self, mode: str, every: int):
        self.mode, self.every = mode, every
        self.connections = 0
        self.answered = 0
        self.dropped = 0
        self.served_per_connection: list[int] = []
        self.requests: list[tuple[bytes, bytes]] = []  # (head, body) of every request read
        self.in_flight = self.most_in_flight = 0
        self._all_in = asyncio.Event()
        self._loop = asyncio.new_event_loop()
        ready = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(ready,), daemon=True)
        self._thread.start()
        ready.wait(5)
        self.url = f"http://127.0.0.1:{self.port}/v1/chat/completions"

    def _run(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self._loop)
        self._server = self._loop.run_until_complete(asyncio.start_server(self._connection, "127.0.0.1", 0))
        self.port = self._server.sockets[0].getsockname()[1]
        ready.set()
        self._loop.run_forever()

    async def _read_request(self, reader: asyncio.StreamReader) -> bool:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError):
            return False
        length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length"))
        self.requests.append((head, await reader.readexactly(length)))
        return True

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        served = 0
        try:
            while await self._read_request(reader):
                last = served + 1 == self.every
                if self.mode == "gather":
                    await self._gather()
                if self.mode == "drop_all" or (self.mode == "silent" and served == self.every):
                    self.dropped += 1
                    return  # closed with the request read and not a byte of reply
                if self.mode == "midstream" and last:
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                                 b"Content-Length: %d\r\n\r\n" % len(REPLY) + CHUNK)
                    await writer.drain()
                    self.dropped += 1
                    return  # the reply began: a real failure, not a reuse race
                close = (self.mode in ("announce", "midstream") and last) or self.mode == "after_reply"
                self.answered += 1  # counted before the client can have the reply (and the test read the count)
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                             + (b"Connection: close\r\n" if close and self.mode != "after_reply" else b"")
                             + b"Content-Length: %d\r\n\r\n" % len(REPLY) + REPLY)
                await writer.drain()
                served += 1
                if close:
                    if self.mode == "after_reply":
                        # llama-server's close comes as its thread leaves the keep-alive loop; the 20 ms
                        # make the window in which the client reuses the connection certain, not luck.
                        await asyncio.sleep(0.02)
                    return  # `announce` said so in its headers; `after_reply` did not
        finally:
            self.served_per_connection.append(served)
            writer.close()

    async def _gather(self) -> None:
        """`gather`: hold each reply until `every` requests are in flight at once (or 5 s have passed)."""
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        if self.in_flight >= self.every:
            self._all_in.set()
        try:
            await asyncio.wait_for(self._all_in.wait(), 5)
        except TimeoutError:
            pass
        self.in_flight -= 1

    async def _shutdown(self) -> None:
        self._server.close()
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()


@pytest.fixture
def closing_server():
    servers = []

    def make(mode: str, every: int) -> ClosingServer:
        servers.append(ClosingServer(mode, every))
        return servers[-1]

    yield make
    for server in servers:
        server.close()


def run_load(url: str, requests: int, concurrency: int, stamping: str = "protocol", **client) -> list[dict]:
    """`requests` sends over one Backend, at most `concurrency` at a time, each in a task (as the scheduler)."""

    async def go():
        backend = Backend(url, {"Content-Type": "application/json", "x-api-key": "k"}, 5.0, stamping=stamping,
                          **client)
        await backend.start()
        slots = asyncio.Semaphore(concurrency)

        async def one():
            async with slots:
                return await backend.send(BODY)

        try:
            replies = await asyncio.gather(*(asyncio.ensure_future(one()) for _ in range(requests)))
        finally:
            await backend.close()
        return [measure(r) for r in replies]

    return asyncio.run(go())


@pytest.mark.parametrize("stamping", ["protocol", "task"])
def test_a_server_announcing_its_close_costs_no_error_and_no_retry(closing_server, stamping):
    server = closing_server("announce", every=2)
    records = run_load(server.url, requests=48, concurrency=8, stamping=stamping)
    assert [r["error"] for r in records if not r["ok"]] == []
    assert sum(1 for r in records if r.get("retried")) == 0
    # No connection was asked for a third request: aiohttp honoured `Connection: close`. (How many
    # connections there were depends on timing: a send may open one while another is being released.)
    assert (server.answered, server.dropped, max(server.served_per_connection)) == (48, 0, 2)


@pytest.mark.parametrize("stamping", ["protocol", "task"])
@pytest.mark.parametrize("every", [1, 3])
def test_a_request_on_a_connection_closed_under_it_is_sent_again_on_a_new_one(closing_server, stamping, every):
    server = closing_server("silent", every=every)
    records = run_load(server.url, requests=48, concurrency=8, stamping=stamping)
    assert [r["error_detail"] for r in records if not r["ok"]] == []
    assert all(r["output_tokens"] == 2 for r in records)
    retried = sum(1 for r in records if r.get("retried"))
    # Each dropped request was on a reused connection and was retried once, on a new connection.
    assert retried == server.dropped > 0
    assert server.answered == 48
    # and the retry is the same request: its body and headers
    assert len(server.requests) == 48 + retried
    assert all(body == BODY for _, body in server.requests)
    assert all(b"\r\ncontent-type: application/json\r\n" in head.lower() and b"\r\nx-api-key: k\r\n" in head.lower()
               for head, _ in server.requests)


@pytest.mark.parametrize("stamping", ["protocol", "task"])
def test_a_server_closing_after_every_streamed_reply_without_saying_so_costs_no_error(closing_server, stamping):
    server = closing_server("after_reply", every=1)
    records = run_load(server.url, requests=64, concurrency=8, stamping=stamping)
    assert [r["error_detail"] for r in records if not r["ok"]] == []
    assert server.answered == 64 and max(server.served_per_connection) == 1
    # Queued sends reuse a released connection within the 20 ms: those requests lost the race, were sent
    # again on a new connection, and only those.
    assert 0 < sum(1 for r in records if r.get("retried")) <= 64 - 8


def test_a_reply_cut_after_its_headers_counts_and_is_not_retried(closing_server):
    server = closing_server("midstream", every=2)
    records = run_load(server.url, requests=16, concurrency=4)
    errors = sorted(r["error"] for r in records if not r["ok"])
    assert errors == ["stream_cut"] * server.dropped and server.dropped >= 4
    assert not any(r.get("retried") for r in records)
    assert sum(r["ok"] for r in records) == server.answered


def test_a_server_dropping_requests_on_new_connections_is_counted_without_a_retry(closing_server):
    server = closing_server("drop_all", every=1)
    records = run_load(server.url, requests=6, concurrency=3)
    assert [r["error"] for r in records] == ["disconnected"] * 6
    assert not any(r.get("retried") for r in records)
    assert (server.dropped, server.connections) == (6, 6)


def test_the_bench_reports_no_error_against_a_server_closing_every_request(closing_server, tmp_path):
    """The whole CLI at c=8 (in-process load): the level's errors are empty and the retries are counted."""
    from bench.cli import main

    server = closing_server("silent", every=1)
    out = tmp_path / "run"
    code = main([server.url, "--model", "m", "--concurrency", "8", "--requests", "40", "--warmup", "0",
                 "--workers", "0", "--no-progress", "--no-charts", "--no-server-metrics", "--out", str(out)])
    summary = orjson.loads((out / "summary.json").read_bytes())
    level = summary["levels"][0]
    assert code == 0, summary
    assert (level["requests"], level["succeeded"], level["errors"]) == (40, 40, {})
    assert level["retried"] == server.dropped == 32  # all but the first 8 sends got a reused connection


# ------------------------------------------------------------------ the pool's limits and clocks (mutation testing)


@pytest.mark.parametrize("client", [{}, {"stamping": "task"}, {"http2": True}])
def test_the_client_caps_no_connections_the_load_sets_the_concurrency(closing_server, client):
    # 101 at once: more than either library's default pool (100). The server answers once all are in.
    server = closing_server("gather", every=101)
    records = run_load(server.url, requests=101, concurrency=101, **client)
    assert [r["error_detail"] for r in records if not r["ok"]] == []
    assert (server.most_in_flight, server.connections) == (101, 101)


class Clock:
    """aiohttp's connector clock (`time.monotonic` in aiohttp.connector: keep-alive expiry, DNS cache), moved by hand."""

    def __init__(self, monkeypatch):
        import time

        import aiohttp.connector

        self.jumped_s = 0.0
        monkeypatch.setattr(aiohttp.connector, "monotonic", lambda: time.monotonic() + self.jumped_s)


def sends(url: str, clock: Clock, jumps_s: list[float], **kwargs) -> list[dict]:
    """One send per entry, one after the other on one Backend, the clock moved by the entry before each."""

    async def go():
        backend = Backend(url, {"Content-Type": "application/json"}, 5.0, **kwargs)
        await backend.start()
        records = []
        try:
            for jump in jumps_s:
                clock.jumped_s += jump
                records.append(measure(await backend.send(BODY)))
        finally:
            await backend.close()
        return records

    return asyncio.run(go())


@pytest.mark.parametrize("stamping", ["protocol", "task"])
def test_an_idle_connection_is_reused_for_4_s_then_dropped_before_the_server_does(closing_server, monkeypatch,
                                                                                   stamping):
    # uvicorn and cpp-httplib close an idle connection after 5 s; the client lets go of it after 4 s.
    clock = Clock(monkeypatch)
    server = closing_server("announce", every=100)  # keeps every connection open
    records = sends(server.url, clock, [0, 3.9, 0], stamping=stamping)
    assert all(r["ok"] for r in records) and server.connections == 1
    records = sends(server.url, clock, [0, 4.1], stamping=stamping)
    assert all(r["ok"] for r in records) and server.connections == 3  # the first two sends' connections


class StubResolver:
    """Resolves every host name to 127.0.0.1 and notes when (the clock's jump) each lookup was made (stands in
    for aiohttp's DefaultResolver)."""

    clock: Clock
    lookups: list[tuple[str, float]] = []

    def __init__(self, *args, **kwargs):
        pass

    async def resolve(self, host, port=0, family=socket.AF_INET):
        StubResolver.lookups.append((host, StubResolver.clock.jumped_s))
        return [{"hostname": host, "host": "127.0.0.1", "port": port, "family": socket.AF_INET, "proto": 0,
                 "flags": socket.AI_NUMERICHOST}]

    async def close(self):
        pass


def test_a_host_name_is_looked_up_once_then_again_after_5_minutes(closing_server, monkeypatch):
    import aiohttp.connector

    clock = Clock(monkeypatch)
    monkeypatch.setattr(aiohttp.connector, "DefaultResolver", StubResolver)
    monkeypatch.setattr(StubResolver, "lookups", [])
    monkeypatch.setattr(StubResolver, "clock", clock, raising=False)
    server = closing_server("announce", every=1)  # a new connection for every request
    url = server.url.replace("127.0.0.1", "inference.test")
    records = sends(url, clock, [0, 0, 299, 1.5])
    assert all(r["ok"] for r in records) and server.connections == 4
    # the first send's, then none until the answer is 5 minutes old
    assert StubResolver.lookups == [("inference.test", 0), ("inference.test", 300.5)]
