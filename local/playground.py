"""Serves the chat playground (playground/) on 127.0.0.1 with a `config.json` that fills in the endpoint.

The page reads `config.json` from its own origin at start: the gateway's base URL, its key and the model.
The key is never in a URL (no `?key=`, no `#key`: those end up in history, logs and referrers); it travels
only from this local server to the page, which keeps it in sessionStorage and sends it to the gateway in
the Authorization header. Other web pages cannot read it: config.json has no CORS headers, so a page of
another origin gets an opaque reply, and a request whose Host is not this server's own address (DNS
rebinding) is refused with 421. Only the page's own files are served; everything else is a 404.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

PAGE_DIR = Path(__file__).resolve().parent.parent / "playground"
PAGE_FILES = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/index.html": ("index.html", "text/html; charset=utf-8"),
    "/playground.js": ("playground.js", "text/javascript; charset=utf-8"),
    "/playground.css": ("playground.css", "text/css; charset=utf-8"),
}
CONFIG_PATH = "/config.json"
# The same headers CloudFront's response headers policy adds on AWS (components/demo_ui.py).
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
}


@dataclass(frozen=True)
class PlaygroundConfig:
    base_url: str
    api_key: str = ""
    model: str = ""
    max_tokens: int = 128

    def json(self) -> bytes:
        body = {"baseUrl": self.base_url, "maxTokens": self.max_tokens}
        if self.api_key:
            body["apiKey"] = self.api_key
        if self.model:
            body["model"] = self.model
        return json.dumps(body).encode()


class PlaygroundServer:
    """The page and its config on `host:port` (0: a free port), in a background thread, until `stop()`."""

    def __init__(self, config: PlaygroundConfig, host: str = "127.0.0.1", port: int = 0,
                 page_dir: Path = PAGE_DIR):
        missing = [name for name, _ in PAGE_FILES.values() if not (page_dir / name).is_file()]
        if missing:
            raise FileNotFoundError(f"the playground page is incomplete: {', '.join(sorted(set(missing)))} "
                                    f"missing under {page_dir}")
        files = {path: ((page_dir / name).read_bytes(), kind) for path, (name, kind) in PAGE_FILES.items()}
        files[CONFIG_PATH] = (config.json(), "application/json")
        self._httpd = ThreadingHTTPServer((host, port), _handler(files))
        self._httpd.daemon_threads = True
        bound_host, bound_port = self._httpd.server_address[:2]
        self.url = f"http://{bound_host}:{bound_port}/"
        self.origin = self.url.rstrip("/")
        self._allowed_hosts = {f"{bound_host}:{bound_port}", f"localhost:{bound_port}"}
        self._httpd.allowed_hosts = self._allowed_hosts  # type: ignore[attr-defined]
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="playground", daemon=True)

    def __enter__(self) -> PlaygroundServer:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


def _handler(files: Mapping[str, tuple[bytes, str]]) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "playground"
        sys_version = ""

        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            self._answer(body=True)

        def do_HEAD(self) -> None:  # noqa: N802
            self._answer(body=False)

        def _answer(self, body: bool) -> None:
            if self.headers.get("Host", "") not in self.server.allowed_hosts:  # type: ignore[attr-defined]
                return self._send(HTTPStatus.MISDIRECTED_REQUEST, b'{"error": "unknown host"}', "application/json", body)
            found = files.get(self.path.split("?", 1)[0])
            if found is None:
                return self._send(HTTPStatus.NOT_FOUND, b'{"error": "not found"}', "application/json", body)
            self._send(HTTPStatus.OK, found[0], found[1], body)

        def _send(self, status: HTTPStatus, content: bytes, kind: str, body: bool) -> None:
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(content)))
            self.send_header("Cache-Control", "no-store")  # the config changes every run (a new key)
            for name, value in SECURITY_HEADERS.items():
                self.send_header(name, value)
            self.end_headers()
            if body:
                self.wfile.write(content)

        def log_message(self, format: str, *args) -> None:  # noqa: A002 (http.server's signature)
            pass  # the demo's terminal is for the demo's own lines

    return Handler
