"""The cases GKE and Azure share: vLLM started from the stack's rendered flags, behind the stack's rendered
front (the real Caddy). vLLM's `--api-key` guards only `/v1/*`: without the front, `POST /invocations` serves
completions to anyone, which the first case shows on the bare engine. `test_vllm_gke.py` and
`test_vllm_azure.py` import these, each with its own `fronted` fixture, so one cloud's engine is stopped
before the other's starts.

Every route the running vLLM serves is enumerated from its own OpenAPI document, plus the routes it mounts
outside the schema, and tried with every method, so a route a newer vLLM adds is covered without editing
this file.
"""

from __future__ import annotations

import http.client
import json
import re
import subprocess
import sys

import httpx
import pytest
from openai import OpenAI

from bench.target import server_identity
from tests.local.conftest import API_KEY

pytestmark = pytest.mark.e2e

CHAT = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
# Raw request targets a proxy might clean differently from the engine behind it.
TRICKS = [
    "/v1/../invocations", "/v1/%2e%2e/invocations", "/v1/..%2finvocations", "//invocations", "/./invocations",
    "/V1/chat/completions", "/v1%2fchat/completions", "/invocations/", "/invocations?x=/v1/", "/%69nvocations",
    "/v1\\..\\invocations", "/health/../invocations", "http://127.0.0.1/invocations", "http://x/v1/../invocations",
]
METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
# Routes vLLM serves outside its OpenAPI schema (include_in_schema=False, mounts, websockets).
HIDDEN = ["/docs/oauth2-redirect", "/static/x", "/metrics/x", "/v1/realtime", "/scale_elastic_ep", "/is_scaling_elastic_ep"]


def raw(url: str, method: str, target: str, body: dict | None = None, headers: dict | None = None) -> tuple[int, bytes]:
    """One request with the target sent byte for byte (httpx and urllib would normalise it)."""
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=60)
    data = json.dumps(body).encode() if body is not None else None
    conn.putrequest(method, target, skip_accept_encoding=True)
    for name, value in {"Content-Type": "application/json", **(headers or {})}.items():
        conn.putheader(name, value)
    conn.putheader("Content-Length", str(len(data or b"")))
    conn.endheaders(data)
    response = conn.getresponse()
    try:
        payload = response.read()
    except http.client.IncompleteRead as cut:
        # vLLM answers 401 without reading the request body and uvicorn closes the connection; Caddy may then
        # cut the reply after its status line. The status is what the test judges; the body is partial.
        payload = cut.partial
    conn.close()
    return response.status, payload


def served_routes(engine_url: str) -> list[tuple[str, str]]:
    """(method, path) of every route the running vLLM serves, path parameters filled in."""
    spec = httpx.get(engine_url + "/openapi.json", timeout=30).json()
    routes = [(method.upper(), re.sub(r"\{[^}]+\}", "x", path)) for path, item in spec["paths"].items() for method in item]
    routes += [("GET", "/metrics"), ("GET", "/openapi.json"), ("GET", "/docs"), ("GET", "/redoc")]
    return sorted(set(routes))


def refused_by_the_front(status: int, payload: bytes) -> bool:
    return status == 404 and payload == b'{"error": "not found"}'



def test_the_bare_engine_serves_invocations_without_the_key(fronted):
    """The hazard the front exists for (vLLM 0.8.4 and 0.32 alike): it must hold for the tests to mean anything."""
    status, body = raw(fronted.engine.base_url, "POST", "/invocations", {**CHAT, "model": fronted.engine.served_name})
    assert status == 200 and b"chat.completion" in body
    assert raw(fronted.engine.base_url, "GET", "/v1/models")[0] == 401


def test_without_the_key_every_route_but_health_is_refused(fronted):
    routes = served_routes(fronted.engine.base_url)
    assert ("POST", "/invocations") in routes and ("POST", "/tokenize") in routes and ("POST", "/v1/chat/completions") in routes
    paths = sorted({path for _, path in routes} | set(HIDDEN))
    answered = {}
    for path in paths:
        for method in METHODS:
            body = {**CHAT, "model": fronted.engine.served_name, "prompt": "hi"} if method in ("POST", "PUT", "PATCH") else None
            status, payload = raw(fronted.front_url, method, path, body)
            answered[method, path] = status
            if path == "/health" and method in ("GET", "HEAD"):
                # vLLM's own answer: its /health is a GET route (a HEAD gets its 405).
                assert status == (200 if method == "GET" else 405), (method, path, status, payload[:200])
            elif path.startswith("/v1/") and method != "OPTIONS":
                # vLLM's own key check (401), or its answer that no such route/method exists.
                assert status in (401, 404, 405), (method, path, status, payload[:200])
                assert b"chat.completion" not in payload and b"tokens" not in payload
            else:
                assert refused_by_the_front(status, payload) or (method == "HEAD" and status == 404), (
                    method, path, status, payload[:200])
    assert len(answered) >= 200, len(answered)
    assert any(status == 401 for (_, path), status in answered.items() if path == "/v1/chat/completions")


@pytest.mark.parametrize("target", TRICKS)
def test_path_tricks_never_reach_an_unguarded_route(fronted, target):
    status, payload = raw(fronted.front_url, "POST", target, {**CHAT, "model": fronted.engine.served_name})
    assert refused_by_the_front(status, payload) or status == 401, (target, status, payload[:300])


def test_with_the_key_chat_completions_stream_through_the_front(fronted):
    client = OpenAI(base_url=fronted.front_url + "/v1", api_key=API_KEY, max_retries=0, timeout=120)
    (model,) = [m.id for m in client.models.list()]
    assert model == fronted.engine.served_name
    # The deployed model id is what clients name: the local model directory is served under it.
    assert "/" in model and not model.startswith("/")
    chunks = list(client.chat.completions.create(model=model, messages=[{"role": "user", "content": "Hello"}],
                                                 max_tokens=8, stream=True, stream_options={"include_usage": True}))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices).strip()
    (usage,) = [c.usage for c in chunks if c.usage]
    assert 0 < usage.completion_tokens <= 8


def test_a_wrong_key_is_refused(fronted):
    status, _ = raw(fronted.front_url, "POST", "/v1/chat/completions", {**CHAT, "model": fronted.engine.served_name},
                    {"Authorization": "Bearer wrong"})
    assert status == 401


def test_bench_through_the_front_succeeds_and_does_not_guess_the_server(fronted, tmp_path):
    """The front refuses /version, so the bench cannot know the engine: `target.server` is null, not a guess."""
    done = subprocess.run(
        [sys.executable, "-m", "bench", fronted.front_url + "/v1", "--model", fronted.engine.served_name,
         "--api-key", API_KEY, "--concurrency", "2", "--requests", "4", "--max-tokens", "8", "--prompt-tokens", "16",
         "--no-progress", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    (level,) = summary["levels"]
    assert (level["requests"], level["succeeded"], level["failed"]) == (4, 4, 0), level.get("errors")
    assert summary["target"]["server"] is None


def test_the_bench_names_the_engine_from_its_own_answer(fronted):
    assert server_identity(fronted.engine.base_url + "/v1", API_KEY) == {"engine": "vllm", "version": fronted.engine.version()}
    assert fronted.engine.version() == "0.32.0"
