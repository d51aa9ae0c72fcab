"""HTTP client for the load path: send one chat-completions request, keep the body and arrival times.

The hot path does nothing but read and stamp. With aiohttp (HTTP/1.1, the default) the stamp is taken
in the connection protocol's `data_received`, i.e. in the event-loop callback that read the socket,
before the response coroutine is even woken: a busy loop delays when we *process* a chunk, not when we
say it arrived. Parsing happens after the stream ends (bench.sse). `trust_env=False` and a dummy cookie
jar keep netrc/proxy/cookie work off every request; read buffers are large so a long reply never pauses
the socket. `--http2` uses httpx + h2, stamping as chunks are iterated (less exact; say so).
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import http.cookiejar
from dataclasses import dataclass, field
from time import perf_counter_ns

import aiohttp
from aiohttp.client_proto import ResponseHandler

# Gateway headers on buffered replies (issue 4's contract), mapped to our server_* names.
HEADER_METRICS = {
    "x-ttft-ms": "ttft_ms",
    "x-tokens-per-second": "tokens_per_second",
    "x-cost-per-1k-usd": "cost_per_1k_usd",
}
READ_BUFSIZE = 4 * 1024 * 1024
# Idle pooled connections are dropped before the servers' own idle timeout (uvicorn, which vLLM runs on,
# and llama.cpp's cpp-httplib both close after 5 s): reusing one the server is closing fails at once.
KEEPALIVE_S = 4.0
ERROR_BODY_LIMIT = 2048


@dataclass(slots=True)
class RawReply:
    t_start_ns: int
    # When the request's last byte was handed to the socket (0: not known, e.g. --http2); TTFT and E2E
    # count from here, and `t_sent_ns - t_start_ns` is the client's own send delay.
    t_sent_ns: int = 0
    t_end_ns: int = 0
    status: int = 0
    content_type: str = ""
    body: bytes = b""
    marks: list = field(default_factory=list)
    header_metrics: dict | None = None
    error_kind: str | None = None
    error_detail: str | None = None
    # Sent again on a fresh connection after a pooled one was closed under it (see Backend.send).
    retried: bool = False


class _SendStampingTransport:
    """The connection's transport, noting when request bytes are handed to the socket.

    aiohttp (on Python < 3.12) writes a request body from a task of its own that runs only when the
    loop gets to it: under load, milliseconds after `post()` was called. TTFT counts from the write.
    """

    __slots__ = ("_transport", "_protocol")

    def __init__(self, transport, protocol: _StampingProtocol):
        self._transport = transport
        self._protocol = protocol

    def write(self, data) -> None:
        self._transport.write(data)
        self._protocol.sent_ns = perf_counter_ns()

    def writelines(self, chunks) -> None:
        self._transport.writelines(chunks)
        self._protocol.sent_ns = perf_counter_ns()

    def __getattr__(self, name: str):
        return getattr(self._transport, name)


class _StampingProtocol(ResponseHandler):
    """aiohttp's response protocol, plus `(arrival ns, payload bytes so far)` after every socket read and
    the time of the last request write (`sent_ns`)."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        super().__init__(loop)
        self.marks: list[tuple[int, int]] | None = None
        self.marked_payload = None
        self.sent_ns = 0

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self.transport = _SendStampingTransport(self.transport, self)

    def data_received(self, data: bytes) -> None:
        t = perf_counter_ns()
        if not data:  # aiohttp's own call as it resumes reading (after a read of the reply's body): no socket read
            super().data_received(data)
            return
        before = self._payload
        bytes_before = before.total_bytes if before is not None else 0
        super().data_received(data)
        payload = self._payload
        if payload is None and before is not None and before.total_bytes != bytes_before:
            # This read ended the reply and the connection was closed at once (`Connection: close`), which
            # drops the protocol's payload: the read is stamped all the same (else the reply's last events
            # took the time of the read before).
            payload = before
        if payload is not None:
            if payload is not self.marked_payload:
                self.marked_payload = payload
                self.marks = []
            self.marks.append((t, payload.total_bytes))

    def pause_reading(self) -> None:
        # Never paused: the reply is read whole after its end (`wait_eof`, see Backend._send_aiohttp), so the
        # flow control that pauses the socket once 2 x read_bufsize (8 MiB) wait unread would wait for ever: a
        # longer reply ran into --timeout. The body is kept whole anyway.
        pass


# Per request (each send runs in a task of its own, with its own context): whether the connection the
# last attempt got came out of the keep-alive pool, and whether the next one must be a new connection.
_POOLED = contextvars.ContextVar("bench_pooled_connection", default=False)
_FRESH_ONLY = contextvars.ContextVar("bench_fresh_connection_only", default=False)


class PoolAwareConnector(aiohttp.TCPConnector):
    """A TCPConnector that says whether a request got a kept-alive connection, and can skip the pool.

    An HTTP/1.1 server may close an idle kept-alive connection at any moment (RFC 9112 section 9.3.1:
    a client must be ready to retry); a request written just then fails before any reply. Only a
    request on a reused connection can fail that way, and its retry must not take another pooled one:
    at c=8 several can be dead at once (the first demo lost a request that way after one retry).
    """

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        if not hasattr(aiohttp.TCPConnector, "_get"):  # pragma: no cover - guarded by a test on the pinned aiohttp
            raise RuntimeError("aiohttp internals changed: BaseConnector._get is gone")

    async def _get(self, key, traces):
        if _FRESH_ONLY.get():
            return None  # the connector then opens a new connection (and pools it afterwards)
        conn = await super()._get(key, traces)
        _POOLED.set(conn is not None)
        return conn


class StampingConnector(PoolAwareConnector):
    """A TCPConnector whose connections stamp reads (see module docstring)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        if not hasattr(self, "_factory"):  # pragma: no cover - guarded by a test on the pinned aiohttp
            raise RuntimeError("aiohttp internals changed: TCPConnector._factory is gone")
        self._factory = functools.partial(_StampingProtocol, loop=self._loop)


def closed_under_us(exc: BaseException, pooled: bool = True) -> bool:
    """The request failed before any reply on a connection taken from the keep-alive pool, the way one
    does when the server closed that connection at that instant (cpp-httplib after its keep-alive max
    count or idle timeout, uvicorn after 5 s idle): sending once more on a new connection is safe. The
    same failure on a new connection is the server's, and is counted (`pooled` unknown: assumed)."""
    return (
        pooled
        and isinstance(exc, aiohttp.ServerDisconnectedError | aiohttp.ClientOSError)
        and not isinstance(exc, aiohttp.ClientConnectorError)
    )


def classify_status(status: int) -> str:
    if status in (401, 403, 404, 408, 413, 429):
        return f"http_{status}"
    if status >= 500:
        return "http_5xx"
    return "http_4xx" if status >= 400 else f"http_{status}"


def _header_metrics(headers) -> dict | None:
    found = {}
    for header, name in HEADER_METRICS.items():
        value = headers.get(header)
        if value is not None:
            try:
                found[name] = float(value)
            except ValueError:
                pass
    return found or None


class SigV4Signer:
    """Signs each request with the caller's AWS credentials (IAM-auth Lambda Function URLs)."""

    def __init__(self, region: str, service: str = "lambda"):
        import botocore.session
        from botocore.auth import SigV4Auth

        credentials = botocore.session.get_session().get_credentials()
        if credentials is None:
            raise ValueError(
                "--sigv4: no AWS credentials found; set AWS_PROFILE or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY"
            )
        self._auth = SigV4Auth(credentials, service, region)

    def sign(self, url: str, body: bytes, headers: dict) -> dict:
        from botocore.awsrequest import AWSRequest

        request = AWSRequest(method="POST", url=url, data=body, headers=dict(headers))
        self._auth.add_auth(request)
        return dict(request.headers.items())


class Backend:
    """One client per worker process. `send(body)` never raises: failures come back classified."""

    def __init__(
        self,
        url: str,
        headers: dict,
        timeout_s: float,
        *,
        http2: bool = False,
        signer: SigV4Signer | None = None,
        stamping: str = "protocol",
    ):
        self.url = url
        self.headers = headers
        self.timeout_s = timeout_s
        self.http2 = http2
        self.signer = signer
        self.stamping = "task" if http2 else stamping
        self._session: aiohttp.ClientSession | None = None
        self._httpx = None

    async def start(self) -> None:
        if self.http2:
            import httpx

            self._httpx = httpx.AsyncClient(
                http2=True, trust_env=False, timeout=None, limits=httpx.Limits(max_connections=None),
                # no cookie kept (aiohttp's DummyCookieJar): a load balancer's stickiness cookie sent back
                # would pin every request of a worker to one target
                cookies=http.cookiejar.CookieJar(http.cookiejar.DefaultCookiePolicy(allowed_domains=[])),
            )
            return
        connector_cls = StampingConnector if self.stamping == "protocol" else PoolAwareConnector
        connector = connector_cls(
            limit=0, ttl_dns_cache=300, enable_cleanup_closed=False, keepalive_timeout=KEEPALIVE_S
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            trust_env=False,
            cookie_jar=aiohttp.DummyCookieJar(),
            read_bufsize=READ_BUFSIZE,
            timeout=aiohttp.ClientTimeout(total=None),
            auto_decompress=True,
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
        if self._httpx is not None:
            await self._httpx.aclose()

    def _request_headers(self, body: bytes) -> dict:
        if self.signer is not None:
            return self.signer.sign(self.url, body, self.headers)
        return self.headers

    async def send(self, body: bytes) -> RawReply:
        headers = self._request_headers(body)
        reply = RawReply(t_start_ns=perf_counter_ns())
        try:
            async with asyncio.timeout(self.timeout_s):
                if self._httpx is not None:
                    await self._send_httpx(body, headers, reply)
                else:
                    _POOLED.set(False)
                    _FRESH_ONLY.set(False)
                    try:
                        await self._send_aiohttp(body, headers, reply)
                    except aiohttp.ClientError as exc:
                        # Closed before any reply on a kept-alive connection (or before the body could be
                        # written): the race of reusing a connection the server was closing. Like urllib3,
                        # send once more, on a new connection; the clock keeps running from the first
                        # try. A server that really drops requests fails the new connection too, and that
                        # is counted.
                        if not closed_under_us(exc, _POOLED.get()) or reply.status or reply.retried:
                            raise
                        reply.retried = True
                        _FRESH_ONLY.set(True)
                        await self._send_aiohttp(body, headers, reply)
        except TimeoutError:
            reply.error_kind = "timeout"
            reply.error_detail = f"no complete reply within --timeout {self.timeout_s:g}s"
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # classified, never propagated: one bad request must not stop a run
            reply.error_kind, reply.error_detail = _classify_exception(exc, reply.status)
        reply.t_end_ns = perf_counter_ns()
        return reply

    async def _send_aiohttp(self, body: bytes, headers: dict, reply: RawReply) -> None:
        async with self._session.post(self.url, data=body, headers=headers) as resp:
            reply.status = resp.status
            reply.content_type = resp.headers.get("Content-Type", "")
            reply.header_metrics = _header_metrics(resp.headers)
            content = resp.content
            if resp.status >= 400:
                reply.body = await content.read(ERROR_BODY_LIMIT)
                reply.error_kind = classify_status(resp.status)
                reply.error_detail = f"HTTP {resp.status}: {reply.body[:200].decode('utf-8', 'replace')}"
                return
            if self.stamping == "protocol":
                connection = resp.connection
                protocol = connection.protocol if connection is not None else None
                # One wake-up for the whole reply: the protocol already stamped every read.
                await content.wait_eof()
                reply.body = content.read_nowait(-1)
                if isinstance(protocol, _StampingProtocol) and protocol.marked_payload is content:
                    reply.marks = protocol.marks
                    if protocol.sent_ns > reply.t_start_ns and not reply.retried:
                        reply.t_sent_ns = protocol.sent_ns
                else:  # body was complete with the headers, before a connection was handed over
                    reply.marks = [(perf_counter_ns(), len(reply.body))]
            else:
                chunks = []
                marks = reply.marks
                total = 0
                async for chunk in content.iter_any():
                    t = perf_counter_ns()
                    total += len(chunk)
                    marks.append((t, total))
                    chunks.append(chunk)
                reply.body = b"".join(chunks)

    async def _send_httpx(self, body: bytes, headers: dict, reply: RawReply) -> None:
        async with self._httpx.stream("POST", self.url, content=body, headers=headers) as resp:
            reply.status = resp.status_code
            reply.content_type = resp.headers.get("content-type", "")
            reply.header_metrics = _header_metrics(resp.headers)
            if resp.status_code >= 400:
                reply.body = (await resp.aread())[:ERROR_BODY_LIMIT]
                reply.error_kind = classify_status(resp.status_code)
                reply.error_detail = f"HTTP {resp.status_code}: {reply.body[:200].decode('utf-8', 'replace')}"
                return
            chunks = []
            marks = reply.marks
            total = 0
            async for chunk in resp.aiter_bytes():
                t = perf_counter_ns()
                total += len(chunk)
                marks.append((t, total))
                chunks.append(chunk)
            reply.body = b"".join(chunks)


def _classify_exception(exc: Exception, status: int) -> tuple[str, str]:
    detail = f"{type(exc).__name__}: {exc}"[:300]
    after_headers = status != 0
    if isinstance(exc, aiohttp.ClientConnectorError | aiohttp.InvalidURL):
        return "connect", detail
    if isinstance(exc, aiohttp.ClientPayloadError | aiohttp.ServerDisconnectedError | aiohttp.ClientOSError):
        return ("stream_cut" if after_headers else "disconnected"), detail
    if isinstance(exc, aiohttp.ClientResponseError):
        return "bad_response", detail
    try:
        import httpx
    except ImportError:  # pragma: no cover
        httpx = None
    if httpx is not None:
        if isinstance(exc, httpx.ConnectError):
            return "connect", detail
        if isinstance(exc, httpx.RemoteProtocolError | httpx.ReadError):
            return ("stream_cut" if after_headers else "disconnected"), detail
    if isinstance(exc, ConnectionError | OSError):
        return ("stream_cut" if after_headers else "connect"), detail
    return "client_error", detail
