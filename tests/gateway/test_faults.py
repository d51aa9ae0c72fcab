"""Every bad input and fault gets a clear OpenAI-style error; nothing crashes, nothing truncates silently."""

from __future__ import annotations

import json
import threading
import time

import httpx
import openai
import pytest

from tests.gateway.conftest import MODEL

MESSAGES = [{"role": "user", "content": "hi"}]


def assert_openai_error(response: httpx.Response, status: int, code: str | None = None, param: str | None = None):
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"]
    if code is not None:
        assert error["code"] == code
    if param is not None:
        assert error["param"] == param
    return error


@pytest.mark.parametrize(
    ("body", "code", "param", "words"),
    [
        (b"{not json", "invalid_json", None, "not valid JSON"),
        (b"[1, 2]", "invalid_type", None, "JSON object"),
        (json.dumps({"model": MODEL}).encode(), "missing_required_parameter", "messages", "messages is required"),
        (json.dumps({"messages": []}).encode(), "empty_array", "messages", "must not be empty"),
        (json.dumps({"messages": "hi"}).encode(), "invalid_type", "messages", "must be a list"),
        (json.dumps({"messages": [{"role": "wizard", "content": "x"}]}).encode(), "invalid_value",
         "messages[0].role", "must be one of"),
        (json.dumps({"messages": [{"role": "user", "content": 5}]}).encode(), "invalid_type",
         "messages[0].content", "string or a list"),
        (json.dumps({"messages": MESSAGES, "max_tokens": 0}).encode(), "invalid_value", "max_tokens", "at least 1"),
        (json.dumps({"messages": MESSAGES, "max_tokens": -5}).encode(), "invalid_value", "max_tokens", "at least 1"),
        (json.dumps({"messages": MESSAGES, "max_tokens": "10"}).encode(), "invalid_type", "max_tokens", "whole number"),
        (json.dumps({"messages": MESSAGES, "max_tokens": True}).encode(), "invalid_type", "max_tokens", "whole number"),
        (json.dumps({"messages": MESSAGES, "max_tokens": 8193}).encode(), "context_length_exceeded", "max_tokens",
         "context of 8192"),
        (json.dumps({"messages": MESSAGES, "stream": "yes"}).encode(), "invalid_type", "stream", "boolean"),
        (json.dumps({"messages": MESSAGES, "temperature": 3}).encode(), "invalid_value", "temperature", "between"),
        (json.dumps({"messages": MESSAGES, "stream_options": {"include_usage": True}}).encode(), "invalid_value",
         "stream_options", "only allowed when stream"),
        (json.dumps({"messages": MESSAGES, "stop": [1]}).encode(), "invalid_type", "stop", "list of strings"),
    ],
)
def test_bad_requests_get_400_and_never_reach_the_endpoint(gateways, emulator, body, code, param, words):
    gateway = gateways("llm")
    calls_before = len(emulator.calls)
    response = httpx.post(f"{gateway.url}/chat/completions", content=body,
                          headers={"content-type": "application/json"})
    error = assert_openai_error(response, 400, code, param)
    assert words in error["message"]
    assert error["type"] == "invalid_request_error"
    assert len(emulator.calls) == calls_before
    (record,) = gateway.records
    assert record["Status"] == 400 and "_aws" not in record  # no endpoint call, no metrics


def test_body_over_the_limit_is_400(gateways):
    gateway = gateways("llm", max_body_bytes=2048)
    big = {"messages": [{"role": "user", "content": "x" * 5000}]}
    assert_openai_error(httpx.post(f"{gateway.url}/chat/completions", json=big), 400, "request_too_large")

    def chunked():  # no Content-Length: the limit holds while reading
        yield json.dumps(big).encode()

    assert_openai_error(httpx.post(f"{gateway.url}/chat/completions", content=chunked()), 400, "request_too_large")


def test_unknown_model_is_404_naming_the_served_one(gateways):
    response = httpx.post(f"{gateways('llm').url}/chat/completions", json={"model": "gpt-4", "messages": MESSAGES})
    error = assert_openai_error(response, 404, "model_not_found", "model")
    assert MODEL in error["message"]


def test_unknown_route_and_method_are_openai_errors(gateways):
    gateway = gateways("llm")
    assert_openai_error(httpx.post(f"{gateway.url}/completions", json={}), 404, "not_found")
    assert_openai_error(httpx.get(f"{gateway.url}/chat/completions"), 405, "method_not_allowed")


def test_missing_key_is_401_and_wrong_key_403_when_the_app_checks_keys(gateways):
    gateway = gateways("llm", api_key="k-123456789")
    url = f"{gateway.url}/chat/completions"
    body = {"messages": MESSAGES, "max_tokens": 2}
    assert_openai_error(httpx.post(url, json=body), 401, "missing_api_key")
    assert_openai_error(httpx.post(url, json=body, headers={"Authorization": "Bearer nope"}), 403, "invalid_api_key")
    assert_openai_error(httpx.get(f"{gateway.url}/models", headers={"x-api-key": "nope"}), 403, "invalid_api_key")
    assert httpx.post(url, json=body, headers={"x-api-key": "k-123456789"}).status_code == 200
    assert httpx.get(f"{gateway.root}/health").status_code == 200  # the adapter's readiness check needs no key
    with pytest.raises(openai.PermissionDeniedError):
        openai.OpenAI(base_url=gateway.url, api_key="wrong", max_retries=0).chat.completions.create(  # pragma: allowlist secret (test fixture)
            model=MODEL, messages=MESSAGES)
    client = openai.OpenAI(base_url=gateway.url, api_key="k-123456789", max_retries=0)
    assert client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=3).usage.completion_tokens == 3
    assert all("k-123456789" not in json.dumps(record) for record in gateway.records), "the key is never logged"


def test_throttling_is_429_with_retry_after(gateways):
    gateway = gateways("throttled", retry_after_seconds=2)
    response = httpx.post(f"{gateway.url}/chat/completions", json={"messages": MESSAGES, "stream": True})
    assert_openai_error(response, 429, "rate_limit_exceeded")
    assert response.headers["retry-after"] == "2"
    with pytest.raises(openai.RateLimitError):
        openai.OpenAI(base_url=gateway.url, api_key="x", max_retries=0).chat.completions.create(
            model=MODEL, messages=MESSAGES, stream=True)


@pytest.mark.parametrize(("endpoint", "code"), [("no-such-endpoint", "endpoint_not_found"),
                                                ("not-ready", "model_not_ready"),
                                                ("unavailable", "service_unavailable")])
def test_endpoint_missing_or_not_ready_is_503(gateways, endpoint, code):
    gateway = gateways(endpoint)
    response = httpx.post(f"{gateway.url}/chat/completions", json={"messages": MESSAGES})
    error = assert_openai_error(response, 503, code)
    assert response.headers["retry-after"] == "1"
    if endpoint == "no-such-endpoint":
        assert "no-such-endpoint" in error["message"]
    with pytest.raises(openai.InternalServerError):
        openai.OpenAI(base_url=gateway.url, api_key="x", max_retries=0).chat.completions.create(
            model=MODEL, messages=MESSAGES)


def test_engine_rejection_is_400_with_the_engine_message(gateways):
    response = httpx.post(f"{gateways('rejects').url}/chat/completions", json={"messages": MESSAGES})
    error = assert_openai_error(response, 400, "model_rejected_request")
    assert "maximum context length is 8192" in error["message"]


@pytest.mark.parametrize(("endpoint", "code", "relayed"), [("broken", "model_stream_error", ["Hello", ","]),
                                                           ("internal", "internal_stream_failure", ["Hello"]),
                                                           ("truncated", "truncated_stream", ["Hello", ",", " world", "!"])])
def test_mid_stream_failure_ends_the_stream_with_an_error_event(gateways, endpoint, code, relayed):
    gateway = gateways(endpoint)
    response = httpx.post(f"{gateway.url}/chat/completions", json={"messages": MESSAGES, "stream": True})
    assert response.status_code == 200  # the stream had started
    events = response.text.strip().split("\n\n")
    assert "data: [DONE]" not in events
    error = json.loads(events[-1].removeprefix("data: "))["error"]
    assert error["code"] == code and error["type"] == "server_error" and error["message"]
    contents = [json.loads(e[6:])["choices"][0]["delta"].get("content") for e in events[:-1]]
    assert [c for c in contents if c] == relayed
    (record,) = gateway.records
    assert record["Outcome"] == code and record["Status"] == 502
    assert record["CompletionTokens"] == len(relayed)  # what was generated still counts

    client = openai.OpenAI(base_url=gateway.url, api_key="x", max_retries=0)
    received = []
    with pytest.raises(openai.APIError) as raised:
        for piece in client.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True):
            received.append(piece.choices[0].delta.content)
    # The openai client raises the error event's own message, after the content that came before it.
    assert str(raised.value) == error["message"]
    assert [c for c in received if c] == relayed

    buffered = httpx.post(f"{gateway.url}/chat/completions", json={"messages": MESSAGES})
    assert_openai_error(buffered, 502, code)


def wait_for(condition, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


def test_client_disconnect_stops_reading_the_endpoint_stream(gateways, emulator):
    gateway = gateways("long")  # 2,000 tokens, one per 20 ms: 40 s if read to the end
    with httpx.stream("POST", f"{gateway.url}/chat/completions",
                      json={"messages": MESSAGES, "max_tokens": 2000, "stream": True}) as response:
        lines = response.iter_lines()
        seen = [line for _, line in zip(range(6), lines, strict=False)]
        assert any(line.startswith("data: ") for line in seen)
    call = emulator.calls[-1]
    assert wait_for(lambda: call.ended is not None), "the emulator still streams after the client left"
    assert call.aborted and not call.completed
    assert call.parts_sent < 200
    assert wait_for(lambda: len(gateway.records) == 1)
    assert gateway.records[0]["Outcome"] == "client_disconnected"


def test_client_disconnect_while_waiting_for_the_first_token(gateways, emulator):
    gateway = gateways("stalls")  # first byte after 30 s
    readers_before = endpoint_readers()
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{gateway.url}/chat/completions", json={"messages": MESSAGES, "stream": True}, timeout=0.5)
    assert wait_for(lambda: len(gateway.records) == 1)
    assert gateway.records[0]["Outcome"] == "client_disconnected"
    # The gateway shut the endpoint connection down: its reader thread, blocked waiting for the first
    # byte, ended without waiting the 30 s out.
    assert wait_for(lambda: endpoint_readers() < readers_before + 1, timeout=3)


def endpoint_readers() -> int:
    return sum(1 for thread in threading.enumerate() if thread.name == "endpoint-stream" and thread.is_alive())
