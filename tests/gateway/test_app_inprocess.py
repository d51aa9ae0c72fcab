"""gateway.app in process (httpx's ASGI transport, no uvicorn) against the SageMaker-runtime emulator through
botocore's real client: routes, the key check, body limits, request ids, headers and the log line per
request, as literal values. Quick enough to run per mutant (tests/mutants.py gateway-app)."""

from __future__ import annotations

import asyncio
import json

import httpx

from gateway.app import create_app
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


def test_a_completion_with_its_headers_and_one_log_line(emulator):
    app, records = app_for(emulator)
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


def test_a_broken_log_sink_does_not_fail_the_request(emulator):
    def broken(record):
        raise OSError("log sink gone")

    app = create_app(settings_for(emulator, "scripted"), emit=broken)
    assert call(app, "POST", "/v1/chat/completions", json={"messages": MESSAGES}).status_code == 200


def test_an_unexpected_failure_is_a_500_that_names_no_detail(emulator, monkeypatch):
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
