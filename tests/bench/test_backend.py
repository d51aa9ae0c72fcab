"""bench.backend + bench.measure against the mock server: every fault lands in its error kind."""

import asyncio
import gzip
import hashlib
import hmac
import re
import socket
import threading
import time

import orjson
import pytest

from bench.backend import Backend, SigV4Signer
from bench.measure import measure

BODY = orjson.dumps(
    {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8, "stream": True,
     "stream_options": {"include_usage": True}}
)


def send(url, body=BODY, headers=None, timeout=5.0, path="/chat/completions", **kwargs):
    async def go():
        backend = Backend(url + path, {"Content-Type": "application/json", **(headers or {})}, timeout, **kwargs)
        await backend.start()
        try:
            return await backend.send(body)
        finally:
            await backend.close()

    return asyncio.run(go())


def test_stamps_are_taken_in_the_protocol_per_read(mock_server):
    server = mock_server(ttft_ms=20, itl_ms=5)
    reply = send(server.url)
    rec = measure(reply)
    assert rec["ok"], rec
    # The request's write to the socket is stamped too: TTFT counts from there.
    assert reply.t_start_ns < reply.t_sent_ns < reply.marks[0][0]
    assert 0 <= rec["send_delay_ms"] < rec["ttft_ms"]
    # One stamp per socket read (a busy machine may coalesce chunks 5 ms apart into one read).
    assert len(reply.marks) >= 2
    assert [m[1] for m in reply.marks] == sorted(m[1] for m in reply.marks)
    # Each mark is one read: time and byte count both grow, and the last one covers the whole body.
    assert all(a[0] <= b[0] for a, b in zip(reply.marks, reply.marks[1:], strict=False)), reply.marks
    assert reply.marks[-1][1] == len(reply.body)
    # The role-only chunk arrives at once; TTFT waits for real content.
    # (From the request's start: the send stamp is taken after write() returns, and on busy cores the server
    # can read the request, and time its 20 ms, before this thread runs again.)
    assert rec["ttft_ms"] + rec["send_delay_ms"] >= 20
    assert len(rec["itl_ms"]) == 7 and min(rec["itl_ms"]) >= 0
    assert rec["output_tokens"] == 8 and rec["token_count_source"] == "usage"
    assert rec["server_ttft_ms"] >= 20 and len(rec["server_extra"]["mock_itl_ms"]) == 7


@pytest.mark.parametrize("stamping", ["task"])
def test_task_stamping_and_http2_client_give_the_same_record_shape(mock_server, stamping):
    server = mock_server()
    for kwargs in ({"stamping": stamping}, {"http2": True}):
        rec = measure(send(server.url, **kwargs))
        assert rec["ok"] and rec["output_tokens"] == 8 and len(rec["itl_ms"]) == 7, kwargs


def test_multi_token_chunks_with_and_without_usage(mock_server):
    server = mock_server(tokens_per_chunk=4, output_tokens=16)
    rec = measure(send(server.url))
    assert (rec["output_tokens"], rec["content_chunks"], rec["token_count_source"]) == (16, 4, "usage")
    assert len(rec["itl_ms"]) == 3
    server = mock_server(tokens_per_chunk=4, output_tokens=16, usage=False)
    rec = measure(send(server.url))
    assert (rec["output_tokens"], rec["token_count_source"]) == (4, "chunks")


@pytest.mark.parametrize(
    ("fault", "kind"),
    [
        ("http_401", "http_401"),
        ("http_404", "http_404"),
        ("http_429", "http_429"),
        ("http_500", "http_5xx"),
        ("http_503", "http_5xx"),
        ("disconnect", "disconnected"),
        ("stream_cut", "stream_cut"),
        ("truncated", "stream_cut"),
        ("malformed_sse", "malformed_sse"),
        ("stream_error", "stream_error"),
        ("stall", "timeout"),
        ("not_streaming", "not_streaming"),
        ("empty", "no_content"),
    ],
)
def test_each_fault_is_classified(mock_server, fault, kind):
    server = mock_server()
    rec = measure(send(server.url, headers={"X-Mock-Fault": fault}, timeout=0.5))
    assert rec["ok"] is False
    assert rec["error"] == kind, rec
    assert rec["error_detail"]
    assert "ttft_ms" not in rec


def test_buffered_stream_is_measured_but_flagged(mock_server):
    server = mock_server()
    rec = measure(send(server.url, headers={"X-Mock-Fault": "buffered"}))
    assert rec["ok"] and rec["single_read"] is True and rec["ttft_ms"] == rec["e2e_ms"]


def test_wrong_path_and_refused_connection(mock_server):
    server = mock_server()
    assert measure(send(server.url, path="/nope"))["error"] == "http_404"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, not listening: connections are refused
        rec = measure(send(f"http://127.0.0.1:{port}/v1"))
    assert rec["error"] == "connect"


def test_api_key_required_by_server(mock_server):
    server = mock_server(api_key="sekret")
    assert measure(send(server.url))["error"] == "http_401"
    assert measure(send(server.url, headers={"x-api-key": "sekret"}))["ok"]
    assert measure(send(server.url, headers={"Authorization": "Bearer sekret"}))["ok"]


def test_sigv4_signs_for_lambda(monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    signer = SigV4Signer("eu-west-1")
    headers = signer.sign("https://abc.lambda-url.eu-west-1.on.aws/v1/chat/completions", b"{}", {"Content-Type": "application/json"})
    assert headers["Authorization"].startswith("AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/")
    assert "/eu-west-1/lambda/aws4_request" in headers["Authorization"]
    assert "X-Amz-Date" in headers


def read_request(conn) -> tuple[bytes, bytes] | None:
    """One HTTP/1.1 request off a raw connection: (head, body), the body as long as its Content-Length says (or
    until the client closes); None when the client closed before a whole head."""
    data = b""
    while b"\r\n\r\n" not in data:
        piece = conn.recv(65536)
        if not piece:
            return None
        data += piece
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(request_headers(head).get("content-length", "0"))
    while len(body) < length:
        piece = conn.recv(65536)
        if not piece:
            break
        body += piece
    return head, body


class RawServer:
    """A raw HTTP/1.1 server on 127.0.0.1: each connection is handed to `_connection` on a thread of its own."""

    def __init__(self):
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/v1"
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._connection, args=(conn,), daemon=True).start()

    def _connection(self, conn):
        raise NotImplementedError

    def close(self):
        self.sock.close()


class OneRequestPerConnection(RawServer):
    """A raw HTTP/1.1 server that answers the first request of each connection (keep-alive) and closes the
    connection when a second one arrives on it: the race a client hits when it reuses a pooled
    connection at the instant the server's idle timeout closes it (uvicorn, cpp-httplib: 5 s)."""

    REPLY = (b'data: {"choices":[{"index":0,"delta":{"content":"hi"}}]}\n\n'
             b'data: {"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":1}}\n\ndata: [DONE]\n\n')

    def __init__(self):
        self.answered = 0
        super().__init__()

    def _connection(self, conn):
        with conn:
            for number in (1, 2):
                if read_request(conn) is None:
                    return
                if number == 2:
                    return  # closed under the client's reused connection
                self.answered += 1
                # in two reads (the second 50 ms later), as a stream comes: the reply is stamped per read
                cut = self.REPLY.index(b"\n\n") + 2
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                             b"Content-Length: %d\r\n\r\n" % len(self.REPLY) + self.REPLY[:cut])
                time.sleep(0.05)
                conn.sendall(self.REPLY[cut:])


def test_a_pooled_connection_closed_under_the_client_is_sent_again_once():
    server = OneRequestPerConnection()

    async def go():
        backend = Backend(server.url + "/chat/completions", {"Content-Type": "application/json"}, 5.0)
        await backend.start()
        try:
            return await backend.send(BODY), await backend.send(BODY)
        finally:
            await backend.close()

    try:
        first, second = asyncio.run(go())
    finally:
        server.close()
    assert not first.retried and measure(first)["ok"]
    rec = measure(second)
    assert rec["ok"] and rec["output_tokens"] == 1, rec
    assert second.retried and rec["retried"] is True
    # The clock runs from the first try: no send stamp (the retry's write) to count TTFT from.
    assert first.t_sent_ns > 0 and second.t_sent_ns == 0
    assert server.answered == 2


def test_a_server_that_drops_every_request_is_counted_without_a_retry(mock_server):
    # A new connection dropped is the server's failure (only a reused one is retried: test_connection_reuse).
    rec = measure(send(mock_server(faults={"disconnect": 1.0}).url))
    assert rec["error"] == "disconnected" and "retried" not in rec


def test_the_mock_times_its_ttft_from_the_socket_read(mock_server):
    from bench.mock_server import _ArrivalStamping, _StampingHandler

    server = mock_server(ttft_ms=20)
    assert isinstance(server._runner.server, _ArrivalStamping)
    assert isinstance(server._runner.server(), _StampingHandler)  # aiohttp still builds handlers this way
    rec = measure(send(server.url))
    assert 20 <= rec["server_ttft_ms"] <= rec["ttft_ms"] + rec["send_delay_ms"] + 1  # (send stamp: see above)


# ------------------------------------------------------------------ literal tables (mutation testing)


class CannedServer(RawServer):
    """A raw HTTP/1.1 server that answers every request with the same bytes and closes the connection. It keeps
    each request it read (`requests`: head, body) and, given `hold`, answers only once that is set."""

    def __init__(self, status: int, body: bytes, headers: dict[str, str] | None = None,
                 hold: threading.Event | None = None):
        head = f"HTTP/1.1 {status} X\r\nContent-Length: {len(body)}\r\nConnection: close\r\n"
        head += "".join(f"{name}: {value}\r\n" for name, value in (headers or {}).items())
        self.response = head.encode() + b"\r\n" + body
        self.hold = hold
        self.requests: list[tuple[bytes, bytes]] = []
        super().__init__()

    def _connection(self, conn):
        with conn:
            request = read_request(conn)
            if request is None:
                return
            self.requests.append(request)
            if self.hold is not None:
                self.hold.wait(10)
            conn.sendall(self.response)


def request_headers(head: bytes) -> dict[str, str]:
    """A request head's headers, names lower-cased (the request line left out)."""
    lines = head.decode("latin-1").split("\r\n")[1:]
    return {name.strip().lower(): value.strip() for name, _, value in (line.partition(":") for line in lines)}


@pytest.fixture
def canned():
    servers = []

    def start(*args, **kwargs):
        servers.append(CannedServer(*args, **kwargs))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def test_status_codes_map_to_their_error_kinds():
    from bench.backend import classify_status

    kinds = {status: classify_status(status) for status in (200, 302, 399, 400, 401, 402, 403, 404, 408, 409, 413,
                                                            429, 499, 500, 503, 599)}
    assert kinds == {200: "http_200", 302: "http_302", 399: "http_399", 400: "http_4xx", 401: "http_401",
                     402: "http_4xx", 403: "http_403", 404: "http_404", 408: "http_408", 409: "http_4xx",
                     413: "http_413", 429: "http_429", 499: "http_4xx", 500: "http_5xx", 503: "http_5xx",
                     599: "http_5xx"}


def test_gateway_headers_are_read_as_numbers_and_bad_ones_dropped():
    from bench.backend import _header_metrics

    assert _header_metrics({"x-ttft-ms": "12.5", "x-tokens-per-second": "40", "x-cost-per-1k-usd": "0.002"}) == {
        "ttft_ms": 12.5, "tokens_per_second": 40.0, "cost_per_1k_usd": 0.002}
    assert _header_metrics({"x-ttft-ms": "fast", "x-tokens-per-second": "7"}) == {"tokens_per_second": 7.0}
    assert _header_metrics({"x-other": "1"}) is None
    assert _header_metrics({"x-ttft-ms": "n/a"}) is None


def test_only_a_connection_closed_under_the_client_is_worth_a_second_try():
    import aiohttp
    from aiohttp.client_reqrep import ConnectionKey

    from bench.backend import closed_under_us

    key = ConnectionKey("127.0.0.1", 1, False, True, None, None, None)
    assert closed_under_us(aiohttp.ServerDisconnectedError())
    assert closed_under_us(aiohttp.ClientOSError(104, "reset"))
    assert not closed_under_us(aiohttp.ClientConnectorError(key, OSError(111, "refused")))
    assert not closed_under_us(aiohttp.ClientPayloadError("cut"))
    assert not closed_under_us(ValueError("x"))


def test_exceptions_are_classified_by_kind_and_whether_headers_had_come():
    import aiohttp
    import httpx
    from aiohttp.client_reqrep import ConnectionKey
    from yarl import URL

    from bench.backend import _classify_exception

    key = ConnectionKey("127.0.0.1", 1, False, True, None, None, None)
    info = aiohttp.RequestInfo(URL("http://x/"), "POST", {}, URL("http://x/"))
    cases = [
        (aiohttp.ClientConnectorError(key, OSError(111, "refused")), "connect", "connect"),
        (aiohttp.InvalidURL("nope"), "connect", "connect"),
        (aiohttp.ClientPayloadError("cut"), "disconnected", "stream_cut"),
        (aiohttp.ServerDisconnectedError(), "disconnected", "stream_cut"),
        (aiohttp.ClientOSError(104, "reset"), "disconnected", "stream_cut"),
        (aiohttp.ClientResponseError(info, (), status=400), "bad_response", "bad_response"),
        (httpx.ConnectError("refused"), "connect", "connect"),
        (httpx.RemoteProtocolError("eh"), "disconnected", "stream_cut"),
        (httpx.ReadError("eh"), "disconnected", "stream_cut"),
        (ConnectionResetError("reset"), "connect", "stream_cut"),
        (OSError("io"), "connect", "stream_cut"),
        (ValueError("odd"), "client_error", "client_error"),
    ]
    for exc, before_headers, after_headers in cases:
        assert _classify_exception(exc, 0)[0] == before_headers, exc
        assert _classify_exception(exc, 200)[0] == after_headers, exc
    kind, detail = _classify_exception(ValueError("x" * 400), 0)
    assert detail == ("ValueError: " + "x" * 400)[:300] and len(detail) == 300


@pytest.mark.parametrize("client", [{}, {"stamping": "task"}, {"http2": True}])
def test_an_error_reply_keeps_its_status_type_and_a_bounded_body(canned, client):
    body = b"E" * 250 + b"F" * 3000
    server = canned(503, body, {"Content-Type": "application/json", "X-TTFT-MS": "3"})
    reply = send(server.url, **client)
    assert reply.status == 503 and reply.error_kind == "http_5xx"
    assert reply.content_type == "application/json"
    assert reply.body == body[:2048]
    assert reply.error_detail == "HTTP 503: " + "E" * 200
    assert reply.header_metrics == {"ttft_ms": 3.0}
    assert reply.t_start_ns < reply.t_end_ns and not reply.retried


@pytest.mark.parametrize("client", [{}, {"stamping": "task"}, {"http2": True}])
def test_a_buffered_reply_keeps_its_body_content_type_and_gateway_headers(canned, client):
    body = (b'data: {"choices":[{"index":0,"delta":{"content":"hi"}}]}\n\n'
            b'data: {"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}\n\ndata: [DONE]\n\n')
    server = canned(200, body, {"Content-Type": "text/event-stream", "x-tokens-per-second": "12.5"})
    reply = send(server.url, **client)
    assert (reply.status, reply.error_kind, reply.body) == (200, None, body)
    assert reply.content_type == "text/event-stream"
    assert reply.header_metrics == {"tokens_per_second": 12.5}
    assert reply.marks and reply.marks[-1][1] == len(body)
    assert all(reply.t_start_ns <= t <= reply.t_end_ns for t, _ in reply.marks)


def test_a_timeout_names_the_limit(mock_server):
    reply = send(mock_server(ttft_ms=3000).url, timeout=0.25)
    assert reply.error_kind == "timeout"
    assert reply.error_detail == "no complete reply within --timeout 0.25s"


# ------------------------------------------------------------------ what each client sends and keeps (mutation testing)

CLIENTS = [{}, {"stamping": "task"}, {"http2": True}]
SSE_REPLY = (b'data: {"choices":[{"index":0,"delta":{"content":"hi"}}]}\n\n'
             b'data: {"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":1}}\n\ndata: [DONE]\n\n')


def send_twice(url, client, headers=None):
    async def go():
        backend = Backend(url + "/chat/completions", {"Content-Type": "application/json", **(headers or {})}, 5.0,
                          **client)
        await backend.start()
        try:
            return await backend.send(BODY), await backend.send(BODY)
        finally:
            await backend.close()

    return asyncio.run(go())


@pytest.mark.parametrize("client", CLIENTS)
def test_the_request_carries_the_body_and_every_header_given(canned, client):
    server = canned(200, SSE_REPLY, {"Content-Type": "text/event-stream"})
    reply = send(server.url, headers={"x-api-key": "sekret", "X-Tenant": "bench"}, **client)
    assert measure(reply)["ok"]
    [(head, body)] = server.requests
    assert head.startswith(b"POST /v1/chat/completions HTTP/1.1\r\n") and body == BODY
    sent = request_headers(head)
    assert (sent["content-type"], sent["x-api-key"], sent["x-tenant"]) == ("application/json", "sekret", "bench")


def sigv4_signature(secret: str, region: str, head: bytes, body: bytes) -> str:
    """The signature the server works out (AWS's documented SigV4 steps) from the request it received."""
    method, path, _ = head.split(b"\r\n", 1)[0].decode().split(" ")
    headers = request_headers(head)
    signed = re.search(r"SignedHeaders=([^,]+)", headers["authorization"])[1]
    amz_date = headers["x-amz-date"]
    canonical = "\n".join([method, path, "", *(f"{h}:{headers[h]}" for h in signed.split(";")), "", signed,
                           hashlib.sha256(body).hexdigest()])
    scope = f"{amz_date[:8]}/{region}/lambda/aws4_request"
    to_sign = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(canonical.encode()).hexdigest()])
    key = ("AWS4" + secret).encode()
    for part in (amz_date[:8], region, "lambda", "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    return hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()


@pytest.mark.parametrize("client", [{}, {"http2": True}])
def test_a_sigv4_signed_request_verifies_at_the_server_with_its_body_and_headers(canned, monkeypatch, client):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY")  # pragma: allowlist secret (AWS SigV4 docs example key)
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    server = canned(200, SSE_REPLY, {"Content-Type": "text/event-stream"})
    reply = send(server.url, signer=SigV4Signer("eu-west-1"), **client)
    assert measure(reply)["ok"], reply.error_detail
    [(head, body)] = server.requests
    headers = request_headers(head)
    assert body == BODY and headers["content-type"] == "application/json"
    assert "SignedHeaders=content-type;host;x-amz-date," in headers["authorization"]
    signature = headers["authorization"].rsplit("Signature=", 1)[1]
    assert signature == sigv4_signature("wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", "eu-west-1", head, body)


def test_sigv4_without_credentials_says_how_to_give_them(no_aws_credentials):
    with pytest.raises(ValueError) as refused:
        SigV4Signer("eu-west-1")
    assert all(name in str(refused.value) for name in ("--sigv4", "AWS_PROFILE", "AWS_ACCESS_KEY_ID"))


@pytest.mark.parametrize("client", CLIENTS)
def test_a_400_and_an_error_body_that_is_not_utf8_are_http_errors(canned, client):
    bad_request = canned(400, b'{"error":"max_tokens too large"}', {"Content-Type": "application/json"})
    reply = send(bad_request.url, **client)
    assert (reply.error_kind, reply.error_detail) == ("http_4xx", 'HTTP 400: {"error":"max_tokens too large"}')
    not_utf8 = canned(502, b"bad \xff gateway", {"Content-Type": "text/plain"})
    reply = send(not_utf8.url, **client)
    assert (reply.error_kind, reply.error_detail) == ("http_5xx", "HTTP 502: bad \ufffd gateway")


@pytest.mark.parametrize("client", CLIENTS)
def test_a_stream_without_a_content_type_is_still_measured(canned, client):
    reply = send(canned(200, SSE_REPLY).url, **client)
    assert reply.content_type == ""
    rec = measure(reply)
    assert rec["ok"] and rec["output_tokens"] == 1, rec


@pytest.mark.parametrize("client", CLIENTS)
def test_a_compressed_reply_is_read_decompressed(canned, client):
    server = canned(200, gzip.compress(SSE_REPLY), {"Content-Type": "text/event-stream", "Content-Encoding": "gzip"})
    reply = send(server.url, **client)
    assert reply.body == SSE_REPLY and measure(reply)["ok"]


@pytest.mark.parametrize("client", CLIENTS)
def test_a_reply_longer_than_the_read_buffers_arrives_whole(canned, client):
    # 9 MiB: more than aiohttp's flow control lets wait unread (2 x read_bufsize), which stalled the
    # protocol-stamped read (it reads only after the end) until --timeout.
    event = b'data: {"choices":[{"index":0,"delta":{"content":"' + b"x" * 1000 + b'"}}]}\n\n'
    body = event * (9 * 1024 * 1024 // len(event) + 1) + b"data: [DONE]\n\n"
    reply = send(canned(200, body, {"Content-Type": "text/event-stream"}).url, **client)
    # the last read is stamped too, though the server closed the connection with it
    assert (reply.error_kind, len(reply.body), reply.marks[-1][1]) == (None, len(body), len(body))
    assert reply.body == body


@pytest.mark.parametrize("client", [{"stamping": "task"}, {"http2": True}])
def test_task_stamps_count_the_bytes_so_far(mock_server, client):
    reply = send(mock_server(ttft_ms=5, itl_ms=10).url, **client)
    sizes = [n for _, n in reply.marks]
    # one mark per read (8 chunks 10 ms apart: at least two reads); the count grows to the whole body
    assert len(sizes) >= 2 and sizes == sorted(set(sizes)) and sizes[-1] == len(reply.body), sizes


def test_a_long_prompt_written_with_writelines_is_sent_whole_and_stamped(mock_server, monkeypatch):
    import aiohttp.http_writer

    # aiohttp writes headers and a body over 2 KiB with transport.writelines on Python >= 3.12.9 (not on
    # this 3.11, where it joins them): the send stamp must be taken there too.
    monkeypatch.setattr(aiohttp.http_writer, "SKIP_WRITELINES", False)
    prompt = orjson.dumps({"model": "m", "messages": [{"role": "user", "content": "word " * 4000}], "stream": True,
                           "max_tokens": 8, "stream_options": {"include_usage": True}})
    reply = send(mock_server(ttft_ms=20).url, body=prompt)
    assert measure(reply)["ok"], reply.error_detail  # (the mock answers a body cut short with a 400)
    assert reply.t_start_ns < reply.t_sent_ns < reply.marks[0][0]


@pytest.mark.parametrize("client", CLIENTS)
def test_cookies_set_by_the_server_are_not_sent_back(canned, client):
    # A load balancer's stickiness cookie (AWS ALB's AWSALB) sent back would pin every request to one target.
    server = canned(200, SSE_REPLY, {"Content-Type": "text/event-stream", "Set-Cookie": "AWSALB=target-1; Path=/"})
    # (by host name: aiohttp's cookie jar keeps none for an IP address)
    first, second = send_twice(server.url.replace("127.0.0.1", "localhost"), client)
    assert measure(first)["ok"] and measure(second)["ok"]
    assert ["cookie" in request_headers(head) for head, _ in server.requests] == [False, False]


@pytest.mark.parametrize("client", CLIENTS)
def test_proxy_settings_in_the_environment_are_ignored(canned, monkeypatch, client):
    proxy = canned(502, b"proxied")
    for name in ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.setenv(name, proxy.url.removesuffix("/v1"))
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    server = canned(200, SSE_REPLY, {"Content-Type": "text/event-stream"})
    reply = send(server.url, **client)
    assert measure(reply)["ok"], reply.error_detail
    assert (len(server.requests), proxy.requests) == (1, [])


class JumpingClockLoop(asyncio.SelectorEventLoop):
    """An event loop whose clock can be moved forward: every timer due in between fires at once."""

    jumped_s = 0.0

    def time(self) -> float:
        return super().time() + self.jumped_s


@pytest.mark.parametrize("client", CLIENTS)
def test_only_the_timeout_given_bounds_a_slow_reply(canned, client):
    # No library default cuts a reply short (aiohttp's total is 300 s, httpx's read timeout 5 s): an hour-long
    # --timeout holds. The clock jumps 301 s while the server holds the reply.
    hold = threading.Event()
    server = canned(200, SSE_REPLY, {"Content-Type": "text/event-stream"}, hold=hold)

    async def go():
        backend = Backend(server.url + "/chat/completions", {"Content-Type": "application/json"}, 3600.0, **client)
        await backend.start()
        try:
            pending = asyncio.ensure_future(backend.send(BODY))
            for _ in range(500):
                if server.requests:
                    break
                await asyncio.sleep(0.01)
            asyncio.get_running_loop().jumped_s += 301
            await asyncio.sleep(0.05)  # the timers due by now fire
            hold.set()
            return await pending
        finally:
            await backend.close()

    with asyncio.Runner(loop_factory=JumpingClockLoop) as runner:
        reply = runner.run(go())
    assert (reply.error_kind, reply.error_detail) == (None, None)
    assert measure(reply)["ok"]


def test_each_read_is_stamped_on_its_own_reply_over_a_kept_alive_connection():
    """Reply 1 in two reads on a kept-alive connection, then reply 2 whole in one read with `Connection:
    close` (the read that ends it also closes it): each read is stamped once, on its own reply."""
    first_part = SSE_REPLY[:SSE_REPLY.index(b"\n\n") + 2]
    sock = socket.create_server(("127.0.0.1", 0))

    def serve():
        conn, _ = sock.accept()
        with conn:
            for close in (False, True):
                data = b""
                while not data.endswith(BODY):
                    data += conn.recv(65536)
                head = (b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                        + (b"Connection: close\r\n" if close else b"")
                        + b"Content-Length: %d\r\n\r\n" % len(SSE_REPLY))
                if close:
                    conn.sendall(head + SSE_REPLY)
                else:
                    conn.sendall(head + first_part)
                    time.sleep(0.05)
                    conn.sendall(SSE_REPLY[len(first_part):])

    threading.Thread(target=serve, daemon=True).start()
    try:
        first, second = send_twice(f"http://127.0.0.1:{sock.getsockname()[1]}/v1", {})
    finally:
        sock.close()
    assert measure(first)["ok"] and measure(second)["ok"]
    assert [n for _, n in first.marks] == [len(first_part), len(SSE_REPLY)]
    assert [n for _, n in second.marks] == [len(SSE_REPLY)]
    assert first.marks[1][0] < second.t_start_ns


def test_the_end_of_a_chunked_reply_read_on_its_own_adds_no_mark():
    """A chunked reply with `Connection: close` whose terminator (no payload byte) comes in a read of its own:
    that read ends the reply and closes the connection, and is no new byte count to stamp."""
    sock = socket.create_server(("127.0.0.1", 0))

    def serve():
        conn, _ = sock.accept()
        with conn:
            data = b""
            while not data.endswith(BODY):
                data += conn.recv(65536)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n"
                         b"Transfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n" % (len(SSE_REPLY), SSE_REPLY))
            time.sleep(0.05)
            conn.sendall(b"0\r\n\r\n")

    threading.Thread(target=serve, daemon=True).start()
    try:
        reply = send(f"http://127.0.0.1:{sock.getsockname()[1]}/v1")
    finally:
        sock.close()
    assert measure(reply)["ok"]
    assert [n for _, n in reply.marks] == [len(SSE_REPLY)]
