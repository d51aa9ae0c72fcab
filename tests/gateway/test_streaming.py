"""The gateway under uvicorn, driven by httpx and by the openai client, with botocore reading the emulator."""

from __future__ import annotations

import json

import httpx
import openai

from tests.gateway.conftest import MODEL, SCRIPTED_TEXT

MESSAGES = [{"role": "user", "content": "Say hello"}]


def sse_events(body: str) -> list[str]:
    assert body.endswith("\n\n"), "every SSE event ends with a blank line"
    return body[:-2].split("\n\n")


def test_stream_framing_order_metrics_comment_and_done(gateways):
    gateway = gateways("scripted")
    with httpx.stream("POST", f"{gateway.url}/chat/completions", json={"model": MODEL, "messages": MESSAGES,
                                                                       "stream": True}) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["cache-control"] == "no-cache"
        body = response.read().decode()
    events = sse_events(body)
    assert events[-1] == "data: [DONE]"
    assert events[-2].startswith(": metrics ")
    metrics = json.loads(events[-2].removeprefix(": metrics "))
    assert set(metrics) == {"ttft_ms", "tokens_per_second", "cost_per_1k_usd", "completion_tokens"}
    assert metrics["completion_tokens"] == len(SCRIPTED_TEXT)  # from the engine's usage
    assert metrics["ttft_ms"] > 0 and metrics["tokens_per_second"] > 0
    expected_cost = 1.515 / (metrics["tokens_per_second"] * 3600) * 1000
    assert abs(metrics["cost_per_1k_usd"] - expected_cost) / expected_cost < 0.01
    chunks = [json.loads(event.removeprefix("data: ")) for event in events[:-2]]
    assert all(event.startswith("data: {") for event in events[:-2])
    assert all(chunk["object"] == "chat.completion.chunk" for chunk in chunks)
    assert [c["choices"][0]["delta"].get("content") for c in chunks] == ["", *SCRIPTED_TEXT, None]
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert not any("usage" in chunk for chunk in chunks), "usage was not asked for, so it is not sent"


def test_usage_passes_through_when_asked(gateways):
    gateway = gateways("split")  # the same lines, cut into 5-byte PayloadParts
    body = {"messages": MESSAGES, "stream": True, "stream_options": {"include_usage": True}}
    response = httpx.post(f"{gateway.url}/chat/completions", json=body)
    events = sse_events(response.text)
    usage_chunk = json.loads(events[-3].removeprefix("data: "))
    assert usage_chunk["choices"] == []
    assert usage_chunk["usage"] == {"prompt_tokens": 7, "completion_tokens": 4, "total_tokens": 11}
    text = "".join(json.loads(e[6:])["choices"][0]["delta"].get("content") or "" for e in events[:-3])
    assert text == "Hello, world!"


def test_the_endpoint_is_always_asked_for_a_stream_with_usage(gateways, emulator):
    gateway = gateways("scripted")
    httpx.post(f"{gateway.url}/chat/completions", json={"messages": MESSAGES, "max_tokens": 9, "temperature": 0.2})
    sent = emulator.calls[-1]
    assert sent.operation == "InvokeEndpointWithResponseStream" and sent.endpoint == "scripted"
    assert sent.request == {"messages": MESSAGES, "max_tokens": 9, "temperature": 0.2, "stream": True,
                            "stream_options": {"include_usage": True}}


def test_openai_client_streams_tokens_and_usage(gateways):
    gateway = gateways("llm")
    client = openai.OpenAI(base_url=gateway.url, api_key="unused", max_retries=0)
    stream = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=12, stream=True,
                                            stream_options={"include_usage": True})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "".join(f"tok{i} " for i in range(12))
    assert chunks[-1].usage.completion_tokens == 12


def test_openai_client_buffered_reply_and_metric_headers(gateways):
    gateway = gateways("scripted")
    client = openai.OpenAI(base_url=gateway.url, api_key="unused", max_retries=0)
    raw = client.chat.completions.with_raw_response.create(model=MODEL, messages=MESSAGES)
    completion = raw.parse()
    assert completion.choices[0].message.content == "Hello, world!"
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage.completion_tokens == 4 and completion.usage.prompt_tokens == 7
    assert float(raw.headers["X-TTFT-MS"]) > 0
    tokens_per_second = float(raw.headers["X-Tokens-Per-Second"])
    assert tokens_per_second > 0
    expected_cost = 1.515 / (tokens_per_second * 3600) * 1000
    assert abs(float(raw.headers["X-Cost-Per-1K-USD"]) - expected_cost) / expected_cost < 0.01
    assert raw.headers["X-Completion-Tokens"] == "4"


def test_slow_first_byte_is_waited_for_and_measured(gateways):
    gateway = gateways("slow-first-byte")
    response = httpx.post(f"{gateway.url}/chat/completions", json={"messages": MESSAGES, "max_tokens": 2})
    assert response.status_code == 200
    assert float(response.headers["X-TTFT-MS"]) >= 400


def test_models_and_health(gateways):
    gateway = gateways("llm")
    client = openai.OpenAI(base_url=gateway.url, api_key="unused", max_retries=0)
    assert [model.id for model in client.models.list()] == [MODEL]
    health = httpx.get(f"{gateway.root}/health")
    assert health.status_code == 200 and health.json()["status"] == "ok"


def test_many_concurrent_streams_each_get_their_own_tokens(gateways):
    import concurrent.futures

    gateway = gateways("llm")
    client = openai.OpenAI(base_url=gateway.url, api_key="unused", max_retries=0)

    def run(n: int) -> str:
        stream = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=n, stream=True)
        return "".join(c.choices[0].delta.content or "" for c in stream if c.choices)

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        results = list(pool.map(run, range(1, 17)))
    assert results == ["".join(f"tok{i} " for i in range(n)) for n in range(1, 17)]
