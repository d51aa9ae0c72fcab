"""The vLLM front (components.vllm_front) rendered and run: a real Caddy in front of a recording upstream.

The upstream stands in for vLLM: it records every request that reaches it, answers 401 to a `/v1` request
without the key (as vLLM's middleware does), streams server-sent events slowly, and can turn unhealthy.
The tests need the `caddy` binary (CI installs it: .ci/run); a missing one fails them, it never skips.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from components.vllm_front import HEALTH_PATH, METRICS_PATH, REFUSED_BODY, REFUSED_STATUS, caddyfile
from local.front import caddy_binary, wait_listening

API_KEY = "test-key-0123456789"  # pragma: allowlist secret (test value)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Upstream:
    port: int
    seen: list[tuple[str, str]] = field(default_factory=list)  # (method, raw path)
    healthy: bool = True
    server: ThreadingHTTPServer | None = None


def start_upstream() -> Upstream:
    upstream = Upstream(port=0)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:
            pass

        def _send(self, status: int, body: dict) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)

        def _handle(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            upstream.seen.append((self.command, self.path))
            path = self.path.split("?", 1)[0]
            if path == "/health":
                self._send(200 if upstream.healthy else 503, {})
            elif path.startswith("/v1") and self.headers.get("Authorization") != f"Bearer {API_KEY}":
                self._send(401, {"error": "Unauthorized"})
            elif path == "/v1/chat/completions" and b'"stream": true' in body:
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                for event in (b"data: first\n\n", b"data: second\n\n", b"data: [DONE]\n\n"):
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(event), event))
                    self.wfile.flush()
                    time.sleep(0.8)
                self.wfile.write(b"0\r\n\r\n")
            else:
                self._send(200, {"path": self.path, "method": self.command, "body": body.decode()})

        do_GET = do_POST = do_HEAD = do_PUT = do_DELETE = do_OPTIONS = _handle

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    upstream.port = server.server_address[1]
    upstream.server = server
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return upstream


@dataclass
class Front:
    port: int
    metrics_port: int
    upstream: Upstream
    config_dir: Path
    data_dir: Path
    process: subprocess.Popen


def request(
    port: int, method: str, path: str, body: bytes | None = None, headers: dict | None = None
) -> tuple[int, bytes, dict[str, str]]:
    """One request with the path sent exactly as given (no client-side normalisation)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.putrequest(method, path, skip_accept_encoding=True)
        for name, value in (headers or {}).items():
            conn.putheader(name, value)
        if body is not None:
            conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        response = conn.getresponse()
        return response.status, response.read(), {k.lower(): v for k, v in response.getheaders()}
    finally:
        conn.close()


@pytest.fixture(scope="module")
def front(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Front]:
    root = tmp_path_factory.mktemp("front")
    upstream = start_upstream()
    port, metrics_port = free_port(), free_port()
    config = root / "Caddyfile"
    config.write_text(caddyfile(f":{port}", f"127.0.0.1:{upstream.port}", metrics_listen=f":{metrics_port}"))
    config_dir, data_dir = root / "config", root / "data"
    config_dir.mkdir()
    data_dir.mkdir()
    log = root / "caddy.log"
    env = {**os.environ, "XDG_CONFIG_HOME": str(config_dir), "XDG_DATA_HOME": str(data_dir), "HOME": str(root)}
    with log.open("wb") as out:
        process = subprocess.Popen(
            [caddy_binary(), "run", "--config", str(config), "--adapter", "caddyfile"],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )
    try:
        wait_listening(port, process, log)
        wait_listening(metrics_port, process, log)
        yield Front(port, metrics_port, upstream, config_dir, data_dir, process)
    finally:
        process.terminate()
        process.wait(timeout=10)
        assert upstream.server is not None
        upstream.server.shutdown()


@pytest.fixture
def upstream(front: Front) -> Upstream:
    front.upstream.seen.clear()
    front.upstream.healthy = True
    return front.upstream


def test_v1_paths_reach_vllm_untouched_and_vllm_checks_the_key(front: Front, upstream: Upstream) -> None:
    status, body, _ = request(front.port, "GET", "/v1/models")
    assert status == 401, "the front holds no key: vLLM's own 401 comes back"
    auth = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"}
    status, body, _ = request(front.port, "GET", "/v1/models?limit=5&q=a%20b", headers=auth)
    assert status == 200
    assert json.loads(body)["path"] == "/v1/models?limit=5&q=a%20b"
    payload = b'{"model": "m", "messages": []}'
    status, body, _ = request(front.port, "POST", "/v1/chat/completions", payload, auth)
    assert status == 200 and json.loads(body)["body"] == payload.decode()
    assert upstream.seen == [
        ("GET", "/v1/models"),
        ("GET", "/v1/models?limit=5&q=a%20b"),
        ("POST", "/v1/chat/completions"),
    ]


# vLLM 0.8.4's routes outside /v1 (api_server.py), which its --api-key does not guard, and path tricks
# that a prefix check on a cleaned or case-folded path would let through.
REFUSED = [
    ("POST", "/invocations"),
    ("POST", "/tokenize"),
    ("POST", "/detokenize"),
    ("POST", "/pooling"),
    ("POST", "/score"),
    ("POST", "/rerank"),
    ("POST", "/classify"),
    ("POST", "/v2/rerank"),
    ("GET", "/metrics"),
    ("GET", "/version"),
    ("GET", "/ping"),
    ("POST", "/ping"),
    ("GET", "/load"),
    ("GET", "/docs"),
    ("GET", "/openapi.json"),
    ("GET", "/redoc"),
    ("POST", "/start_profile"),
    ("POST", "/reset_prefix_cache"),
    ("GET", "/"),
    ("GET", "/v1"),
    ("GET", "/v1x/models"),
    ("GET", "/V1/models"),
    ("POST", "/Invocations"),
    ("POST", "/v1/../invocations"),
    ("POST", "/v1/./../invocations"),
    ("POST", "/v1/%2e%2e/invocations"),
    ("POST", "/v1/%2E%2E/invocations"),
    ("POST", "/v1/.%2e/invocations"),
    ("POST", "/v1%2f..%2finvocations"),
    ("POST", "/%761/chat/completions"),
    ("POST", "//v1/chat/completions"),
    ("POST", "/v1//chat/completions"),
    ("POST", "/v1/\\..\\invocations"),
    ("POST", "//invocations"),
    ("POST", "/./invocations"),
    ("POST", "/health"),
    ("GET", "/HEALTH"),
    ("GET", "/health/"),
    ("GET", "/healthz"),
    ("GET", "/v1/../health/../invocations"),
    ("GET", "http://127.0.0.1/invocations"),
    ("OPTIONS", "/v1/chat/completions"),  # vLLM's key check skips OPTIONS
    ("OPTIONS", "/v1/models"),
]


@pytest.mark.parametrize(("method", "path"), REFUSED)
def test_everything_else_is_refused_before_vllm(front: Front, upstream: Upstream, method: str, path: str) -> None:
    status, body, headers = request(front.port, method, path, b"{}" if method == "POST" else None)
    assert status == REFUSED_STATUS, (path, status, body)
    assert json.loads(body) == json.loads(REFUSED_BODY)
    assert headers["content-type"].startswith("application/json")
    assert upstream.seen == [], f"{method} {path} reached vLLM"


def test_health_is_vllms_own(front: Front, upstream: Upstream) -> None:
    assert request(front.port, "GET", HEALTH_PATH)[0] == 200
    assert request(front.port, "HEAD", HEALTH_PATH)[0] == 200
    upstream.healthy = False
    assert request(front.port, "GET", HEALTH_PATH)[0] == 503, "the engine's health, not the front's"
    assert request(front.port, "GET", HEALTH_PATH + "?x=1")[0] == 503
    assert [path for _, path in upstream.seen][:3] == ["/health"] * 3


def test_metrics_only_on_their_own_listener(front: Front, upstream: Upstream) -> None:
    status, body, _ = request(front.metrics_port, "GET", METRICS_PATH)
    assert status == 200 and json.loads(body)["path"] == "/metrics"
    for method, path in [("GET", "/v1/models"), ("POST", "/invocations"), ("GET", "/health"),
                         ("POST", "/metrics"), ("GET", "/METRICS"), ("GET", "/v1/../metrics")]:  # fmt: skip
        assert request(front.metrics_port, method, path)[0] == REFUSED_STATUS, path
    assert request(front.port, "GET", METRICS_PATH)[0] == REFUSED_STATUS
    assert upstream.seen == [("GET", "/metrics")]


def test_stream_is_not_buffered(front: Front, upstream: Upstream) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", front.port, timeout=10)
    try:
        body = b'{"model": "m", "stream": true}'
        conn.request(
            "POST", "/v1/chat/completions", body,
            {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"},
        )  # fmt: skip
        started = time.monotonic()
        response = conn.getresponse()
        assert response.status == 200
        first = response.readline()
        first_at = time.monotonic() - started
        rest = response.read()
        total = time.monotonic() - started
    finally:
        conn.close()
    assert first == b"data: first\n"
    assert b"data: [DONE]" in rest
    # The upstream waits 0.8 s after each event: a buffering proxy would hold the first until the end.
    assert first_at < 0.5 < 1.5 < total, (first_at, total)


def test_upstream_down_is_a_bad_gateway(tmp_path: Path) -> None:
    port = free_port()
    config = tmp_path / "Caddyfile"
    config.write_text(caddyfile(f"127.0.0.1:{port}", f"127.0.0.1:{free_port()}"))
    log = tmp_path / "caddy.log"
    env = {**os.environ, "XDG_CONFIG_HOME": str(tmp_path), "XDG_DATA_HOME": str(tmp_path), "HOME": str(tmp_path)}
    with log.open("wb") as out:
        process = subprocess.Popen(
            [caddy_binary(), "run", "--config", str(config), "--adapter", "caddyfile"],
            stdout=out, stderr=subprocess.STDOUT, env=env,
        )  # fmt: skip
    try:
        wait_listening(port, process, log)
        assert request(port, "GET", HEALTH_PATH)[0] == 502
        assert request(port, "POST", "/invocations", b"{}")[0] == REFUSED_STATUS
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_no_admin_api(front: Front) -> None:
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", 2019), timeout=0.5).close()


def adapt(text: str, tmp_path: Path) -> dict:
    config = tmp_path / "Caddyfile"
    config.write_text(text)
    result = subprocess.run(
        [caddy_binary(), "adapt", "--config", str(config), "--adapter", "caddyfile"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_tls_config_adapts_with_acme_email(tmp_path: Path) -> None:
    adapted = adapt(caddyfile(":443", "127.0.0.1:8001", tls_domain="llm.example.com", tls_email="ops@example.com"), tmp_path)
    assert adapted["admin"] == {"disabled": True}
    server = next(iter(adapted["apps"]["http"]["servers"].values()))
    assert server["listen"] == [":443"]
    assert "automatic_https" not in server, "HTTPS (and the ACME HTTP-01 challenge on :80) stays automatic"
    assert server["routes"][0]["match"] == [{"host": ["llm.example.com"]}]
    issuers = adapted["apps"]["tls"]["automation"]["policies"][0]["issuers"]
    assert any(issuer.get("email") == "ops@example.com" for issuer in issuers)


def test_plain_config_has_no_https(tmp_path: Path) -> None:
    adapted = adapt(caddyfile("127.0.0.1:8000", "127.0.0.1:8001"), tmp_path)
    server = next(iter(adapted["apps"]["http"]["servers"].values()))
    assert server["listen"] == ["127.0.0.1:8000"]
    assert server["automatic_https"] == {"disable": True}
    assert "tls" not in adapted["apps"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"listen": "8000", "upstream": "127.0.0.1:8001"}, "listen"),
        ({"listen": ":70000", "upstream": "127.0.0.1:8001"}, "listen"),
        ({"listen": ":8000", "upstream": "http://127.0.0.1:8001"}, "upstream"),
        ({"listen": ":443", "upstream": "127.0.0.1:8001", "tls_domain": "not a domain"}, "tls_domain"),
        ({"listen": ":8000", "upstream": "127.0.0.1:8001", "tls_email": "ops@example.com"}, "tls_email"),
        ({"listen": ":443", "upstream": "127.0.0.1:8001", "tls_domain": "a.example.com", "tls_email": "x}"}, "tls_email"),
        ({"listen": ":8000", "upstream": "127.0.0.1:8001", "metrics_listen": ":8000"}, "metrics_listen"),
    ],
)
def test_bad_arguments_are_refused(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        caddyfile(**kwargs)
