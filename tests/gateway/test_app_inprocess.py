"""gateway.app in process (httpx's ASGI transport, no uvicorn) against the SageMaker-runtime emulator through
botocore's real client: routes, the key check, body limits, request ids, headers and the log line per
request, as literal values. Quick enough to run per mutant (tests/mutants.py gateway-app)."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from gateway.app import UnhandledErrorsInsideCors, create_app
from tests.gateway.conftest import MODEL, SCRIPTED_TEXT, settings_for

MESSAGES = [{"role": "user", "content": "Say hello"}]


def call(app, method, path, **kwargs) -> httpx.Response:
    async def go():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
            return await client.request(method, path, **kwargs)

    return asyncio.run(go())


def app_for(emulator, endpoint="scripted", **overrides):
    records: list[dict] = []
    return create_app(settings_for(emulator, endpoint, **overrides), emit=records.append), records


def test_health_and_models(emulator):
    app, records = app_for(emulator, api_key="k1")
    assert call(app, "GET", "/health").json() == {"status": "ok", "endpoint": "scripted", "model": MODEL}
    refused = call(app, "GET", "/v1/models")
    assert refused.status_code == 401 and refused.json()["error"]["code"] == "missing_api_key"
    listed = call(app, "GET", "/v1/models", headers={"Authorization": "Bearer k1"})
    assert listed.json() == {"object": "list", "data": [{"id": MODEL, "object": "model", "created": 0,
                                                          "owned_by": "llm-inference", "max_model_len": 8192}]}
    assert records == []  # only chat requests leave a log line


def test_unknown_routes_and_methods_name_what_is_served(emulator):
    app, _ = app_for(emulator)
    missing = call(app, "GET", "/v2/x")
    assert missing.status_code == 404
    assert missing.json() == {"error": {
        "message": "no route /v2/x; this gateway serves /v1/chat/completions and /v1/models",
        "type": "invalid_request_error", "param": None, "code": "not_found"}}
    wrong = call(app, "GET", "/v1/chat/completions")
    assert wrong.status_code == 405
    assert wrong.json()["error"] == {"message": "GET /v1/chat/completions is not allowed",
                                     "type": "invalid_request_error", "param": None, "code": "method_not_allowed"}
    # /health and /v1/models answer GET only
    for path in ("/health", "/v1/models"):
        posted = call(app, "POST", path)
        assert posted.status_code == 405 and posted.json()["error"]["message"] == f"POST {path} is not allowed"


def test_a_completion_with_its_headers_and_one_log_line(emulator):
    app, records = app_for(emulator, metrics_namespace="Custom/NS")
    context = json.dumps({"requestId": "req-42"})
    reply = call(app, "POST", "/v1/chat/completions", json={"model": MODEL, "messages": MESSAGES},
                 headers={"x-amzn-request-context": context})
    assert reply.status_code == 200
    body = reply.json()
    assert body["object"] == "chat.completion"
    assert body["choices"][0]["message"]["content"] == "".join(SCRIPTED_TEXT)
    assert reply.headers["x-request-id"] == "req-42"
    assert reply.headers["x-completion-tokens"] == str(len(SCRIPTED_TEXT))
    assert float(reply.headers["x-ttft-ms"]) > 0 and float(reply.headers["x-tokens-per-second"]) > 0
    assert float(reply.headers["x-cost-per-1k-usd"]) > 0
    (record,) = records
    assert {k: record[k] for k in ("RequestId", "ModelId", "Status", "Outcome", "Stream", "TokensCountedFrom",
                                   "EndpointName", "CompletionTokens", "PromptTokens")} == {
        "RequestId": "req-42", "ModelId": MODEL, "Status": 200, "Outcome": "ok", "Stream": False,
        "TokensCountedFrom": "usage", "EndpointName": "scripted", "CompletionTokens": 4, "PromptTokens": 7}
    assert record["_aws"]["CloudWatchMetrics"][0]["Namespace"] == "Custom/NS"  # where the dashboards look


def test_a_stream_with_sse_headers_and_its_log_line(emulator):
    app, records = app_for(emulator)
    reply = call(app, "POST", "/v1/chat/completions", json={"messages": MESSAGES, "stream": True})
    assert reply.status_code == 200
    assert reply.headers["content-type"].startswith("text/event-stream")
    assert reply.headers["cache-control"] == "no-cache" and reply.headers["x-accel-buffering"] == "no"
    request_id = reply.headers["x-request-id"]
    assert len(request_id) == 32 and int(request_id, 16) >= 0  # a fresh uuid4 hex without a request context
    assert reply.text.endswith("data: [DONE]\n\n")
    (record,) = records
    assert (record["RequestId"], record["Status"], record["Outcome"], record["Stream"]) == (request_id, 200, "ok",
                                                                                              True)
    # the stream's line is an EMF record with the meter's figures
    assert "_aws" in record and record["CompletionTokens"] == 4 and record["TokensCountedFrom"] == "usage"


def test_a_stream_that_fails_logs_its_failure(emulator):
    app, records = app_for(emulator, "truncated")
    reply = call(app, "POST", "/v1/chat/completions", json={"messages": MESSAGES, "stream": True})
    assert '"code": "truncated_stream"' in reply.text
    assert (records[0]["Status"], records[0]["Outcome"]) == (502, "truncated_stream")
    app, records = app_for(emulator, "truncated")
    reply = call(app, "POST", "/v1/chat/completions", json={"messages": MESSAGES})
    assert reply.status_code == 502 and reply.json()["error"]["code"] == "truncated_stream"
    assert reply.headers["x-request-id"] == records[0]["RequestId"]
    assert (records[0]["Status"], records[0]["Outcome"], records[0]["TokensCountedFrom"]) == (502, "truncated_stream",
                                                                                              "chunks")
    assert "_aws" in records[0] and records[0]["CompletionTokens"] == 4  # the endpoint was called: its figures count


def test_a_refused_request_logs_a_plain_line_with_its_code(emulator):
    app, records = app_for(emulator, api_key="k1")
    reply = call(app, "POST", "/v1/chat/completions", json={"messages": MESSAGES},
                 headers={"x-amzn-request-context": "not json"})
    assert reply.status_code == 401
    (record,) = records
    assert "_aws" not in record and record["Status"] == 401 and record["Outcome"] == "missing_api_key"
    assert reply.headers["x-request-id"] == record["RequestId"] and len(record["RequestId"]) == 32
    app, records = app_for(emulator, "throttled")
    reply = call(app, "POST", "/v1/chat/completions", json={"messages": MESSAGES},
                 headers={"x-amzn-request-context": json.dumps({"requestId": ""})})
    assert reply.status_code == 429 and "retry-after" in reply.headers
    assert len(records[0]["RequestId"]) == 32  # an empty id from the context is not used


def test_the_body_limit_by_declared_length_and_by_what_arrives(emulator):
    app, records = app_for(emulator, max_body_bytes=1024)
    big = json.dumps({"messages": [{"role": "user", "content": "x" * 2000}]}).encode()
    reply = call(app, "POST", "/v1/chat/completions", content=big, headers={"content-type": "application/json"})
    assert reply.status_code == 400
    assert reply.json()["error"]["message"] == (f"the request body is {len(big)} bytes or more; the limit is 1024 "
                                                "bytes (GATEWAY_MAX_BODY_BYTES)")
    assert reply.json()["error"]["code"] == "request_too_large"

    async def chunks():
        for _ in range(3):
            yield b"x" * 600

    reply = call(app, "POST", "/v1/chat/completions", content=chunks())  # no content-length: streamed
    assert reply.status_code == 400
    assert reply.json()["error"]["message"].startswith("the request body is 1200 bytes or more; the limit is 1024")
    exact = json.dumps({"messages": MESSAGES}).encode().ljust(1024)
    assert call(app, "POST", "/v1/chat/completions", content=exact).status_code == 200


def test_a_broken_log_sink_does_not_fail_the_request(emulator, caplog):
    def broken(record):
        raise OSError("log sink gone")

    app = create_app(settings_for(emulator, "scripted"), emit=broken)
    assert call(app, "POST", "/v1/chat/completions", json={"messages": MESSAGES}).status_code == 200
    # ... and the gateway's own log says why this request's metrics are missing, with the sink's error
    (logged,) = [r for r in caplog.records if r.name == "gateway"]
    assert "metrics record" in logged.getMessage() and logged.exc_info[1].args == ("log sink gone",)


def test_an_unexpected_failure_is_a_500_that_names_no_detail(emulator, monkeypatch, caplog):
    import gateway.app as app_module

    def explode(*args, **kwargs):
        raise KeyError("internal detail")

    monkeypatch.setattr(app_module, "parse_chat_request", explode)
    app, _ = app_for(emulator)

    async def go():
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
            return await client.post("/v1/chat/completions", json={"messages": MESSAGES})

    reply = asyncio.run(go())
    assert reply.status_code == 500
    assert reply.json() == {"error": {"message": "the gateway failed unexpectedly; see its log",
                                      "type": "server_error", "param": None, "code": "internal_error"}}
    # "see its log": the log names the request and carries the error
    (logged,) = [r for r in caplog.records if r.name == "gateway"]
    assert "POST /v1/chat/completions" in logged.getMessage() and logged.exc_info[1].args == ("internal detail",)


def test_the_module_app_is_built_once_from_the_environment(emulator, monkeypatch):
    import gateway.app as app_module

    for name, value in {"GATEWAY_ENDPOINT_NAME": "scripted", "GATEWAY_REGION": "us-east-1", "GATEWAY_MODEL_ID": MODEL,
                        "GATEWAY_SAGEMAKER_ENDPOINT_URL": emulator.endpoint_url}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delitem(app_module.__dict__, "app", raising=False)
    built = app_module.app
    assert app_module.app is built and call(built, "GET", "/health").json()["endpoint"] == "scripted"
    monkeypatch.delitem(app_module.__dict__, "app")
    try:
        app_module.nothing_here  # noqa: B018
    except AttributeError as err:
        assert str(err) == "nothing_here"
    else:
        raise AssertionError("no AttributeError")


def test_an_unexpected_failure_reaches_the_cors_origins_page_readable(emulator, monkeypatch):
    # Starlette answers an unhandled exception in ServerErrorMiddleware, outside the CORS middleware: without
    # care, the page's 500 carries no Access-Control-Allow-Origin and the browser shows a bare network error.
    import gateway.app as app_module

    def explode(*args, **kwargs):
        raise KeyError("internal detail")

    monkeypatch.setattr(app_module, "parse_chat_request", explode)
    origin = "https://d111111abcdef8.cloudfront.net"
    app, _ = app_for(emulator, cors_origins=(origin,))

    async def go(headers):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
            return await client.post("/v1/chat/completions", json={"messages": MESSAGES}, headers=headers)

    reply = asyncio.run(go({"Origin": origin}))
    assert reply.status_code == 500 and reply.json()["error"]["code"] == "internal_error"
    assert reply.headers.get("access-control-allow-origin") == origin
    other = asyncio.run(go({"Origin": "https://attacker.example"}))
    assert other.status_code == 500 and "access-control-allow-origin" not in other.headers


def test_max_tokens_beyond_the_models_context_is_refused_with_the_configured_length(emulator):
    app, records = app_for(emulator, max_model_len=4096)
    reply = call(app, "POST", "/v1/chat/completions", json={"messages": MESSAGES, "max_tokens": 5000})
    assert reply.status_code == 400 and "4096" in reply.json()["error"]["message"]
    assert records[0]["Status"] == 400


# Driving the ASGI app by hand, as a server does, for what httpx's transport cannot send: a client that leaves
# (http.disconnect while the reply is pending), a count of the body reads, and the lifespan protocol.

def scope_for(method: str, path: str, headers: dict[str, str]) -> dict:
    return {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.4"}, "http_version": "1.1",
            "method": method, "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"",
            "root_path": "", "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
            "client": ("127.0.0.1", 50000), "server": ("gateway", 80)}


def drive(app, body: bytes, *, leave: str | None, headers: dict[str, str] | None = None) -> tuple[list[dict], int]:
    """POST /v1/chat/completions with `body`; the client leaves "at_once" (right after its body), "after_start"
    (once the reply's headers were sent) or never (None). Returns the messages sent and the receive() calls."""
    headers = {"content-type": "application/json", "content-length": str(len(body)), **(headers or {})}
    sent: list[dict] = []
    asked = 0

    async def go():
        nonlocal asked
        started = asyncio.Event()

        async def receive():
            nonlocal asked
            asked += 1
            if asked == 1:
                return {"type": "http.request", "body": body, "more_body": False}
            if leave == "after_start":
                await started.wait()
            if leave is None or asked > 2:
                await asyncio.Event().wait()  # never again
            return {"type": "http.disconnect"}

        async def send(message):
            sent.append(message)
            if message["type"] == "http.response.start":
                started.set()

        await app(scope_for("POST", "/v1/chat/completions", headers), receive, send)

    asyncio.run(go())
    return sent, asked


def test_a_client_that_leaves_before_its_completion_is_logged_499_with_the_meter(emulator):
    app, records = app_for(emulator, "slow-first-byte")  # 0.4 s before the first token: the client leaves first
    sent, _ = drive(app, json.dumps({"messages": MESSAGES}).encode(), leave="at_once")
    assert sent[0]["type"] == "http.response.start" and sent[0]["status"] == 499
    (record,) = records
    assert {k: record[k] for k in ("Status", "Outcome", "Stream", "TokensCountedFrom", "CompletionTokens")} == {
        "Status": 499, "Outcome": "client_disconnected", "Stream": False, "TokensCountedFrom": "chunks",
        "CompletionTokens": 0}
    assert "_aws" in record  # the endpoint was called: an EMF record
    # the same client staying gets its completion
    app, records = app_for(emulator, "slow-first-byte")
    sent, _ = drive(app, json.dumps({"messages": MESSAGES}).encode(), leave=None)
    assert sent[0]["status"] == 200 and records[0]["Outcome"] == "ok"


def test_a_client_that_leaves_mid_stream_is_logged_499_and_gets_no_done(emulator):
    app, records = app_for(emulator, "slow-first-byte")
    sent, _ = drive(app, json.dumps({"messages": MESSAGES, "stream": True}).encode(), leave="after_start")
    assert sent[0]["status"] == 200
    assert b"[DONE]" not in b"".join(m.get("body", b"") for m in sent[1:])
    (record,) = records
    assert (record["Status"], record["Outcome"], record["Stream"], record["TokensCountedFrom"]) == (
        499, "client_disconnected", True, "chunks")
    assert "_aws" in record and record["CompletionTokens"] == 0


def test_a_body_declared_too_large_is_refused_before_any_of_it_is_read(emulator):
    app, records = app_for(emulator, max_body_bytes=1024)
    sent, asked = drive(app, b"x" * 5000, leave=None)
    assert sent[0]["status"] == 400 and asked == 0
    assert json.loads(sent[1]["body"])["error"]["message"].startswith("the request body is 5000 bytes or more")


def test_the_app_answers_the_lifespan_protocol(emulator):
    # uvicorn --lifespan on (and other servers) start only once the app completes the startup handshake
    app, _ = app_for(emulator)
    sent: list[dict] = []

    async def go():
        incoming = iter([{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}])

        async def receive():
            return next(incoming)

        async def send(message):
            sent.append(message)

        await app({"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}, receive, send)

    asyncio.run(go())
    assert [m["type"] for m in sent] == ["lifespan.startup.complete", "lifespan.shutdown.complete"]


def test_an_error_after_the_reply_started_goes_on_up_unanswered():
    # Once the headers are out there is no 500 to send instead: a second http.response.start breaks the protocol.
    async def inner(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": []})
        raise RuntimeError("mid-reply")

    async def handler(request, exc):
        raise AssertionError("the handler must not answer a reply that started")

    sent: list[dict] = []

    async def go():
        async def receive():
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message):
            sent.append(message)

        await UnhandledErrorsInsideCors(inner, handler=handler)(scope_for("GET", "/", {}), receive, send)

    with pytest.raises(RuntimeError, match="mid-reply"):
        asyncio.run(go())
    assert [m["type"] for m in sent] == ["http.response.start"]
