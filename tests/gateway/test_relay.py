"""gateway.relay, gateway.metrics and gateway.errors at unit level, with literal expected bytes and figures:
the endpoint's JSON lines cut at every boundary, the SSE the client gets, the folded completion, the meter.
(The same paths through a running gateway: test_streaming.py and test_faults.py.)"""

from __future__ import annotations

import asyncio
import json

import pytest

from gateway.chat_request import ChatRequest
from gateway.errors import GatewayError, invalid
from gateway.metrics import StreamMeter, emf_record
from gateway.relay import DONE, Chunks, LineSplitter, collect, fold, sse_stream
from gateway.sagemaker import StreamFailure


def line(obj) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode() + b"\n"


ROLE = {"id": "c1", "created": 5, "model": "m", "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]}
HELLO = {"choices": [{"index": 0, "delta": {"content": "Hel"}}]}
LO = {"choices": [{"index": 0, "delta": {"content": "lo"}}]}
STOP = {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
USAGE = {"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}}
STREAM = b"".join(line(c) for c in (ROLE, HELLO, LO, STOP, USAGE))


async def _parts(*parts: bytes):
    for part in parts:
        yield part


def relay(parts, include_usage=False) -> tuple[list[bytes], Chunks]:
    chunks = Chunks(StreamMeter(0.0, started=0.0))
    request = ChatRequest(body={}, stream=True, include_usage=include_usage, max_tokens=None)

    async def go():
        return [out async for out in sse_stream(_parts(*parts), request, chunks)]

    return asyncio.run(go()), chunks


def test_line_splitter_keeps_partial_lines_across_parts():
    splitter = LineSplitter()
    assert splitter.feed(b'{"a"') == []
    assert splitter.feed(b':1}\n{"b"') == [b'{"a":1}']
    assert splitter.feed(b":2}\n\n") == [b'{"b":2}', b""]
    assert splitter.feed(b"tail") == []
    assert splitter.flush() == [b"tail"]
    assert splitter.flush() == []
    splitter.feed(b"  \t")
    assert splitter.flush() == []  # whitespace only is no line


def test_the_lines_of_one_part_go_out_in_one_write_then_metrics_and_done():
    cut = len(line(ROLE)) + 5  # the first part ends inside the second line
    writes, chunks = relay([STREAM[:cut], STREAM[cut:]])
    assert len(writes) == 3 and writes[0] == b"data: " + line(ROLE)[:-1] + b"\n\n"
    events = b"".join(writes).split(b"\n\n")
    assert events[-1] == b"" and events[-2] == b"data: [DONE]"
    assert events[-3].startswith(b": metrics ")
    # Usage was not asked for: the usage-only chunk is dropped; the others go out as they came.
    assert events[:-3] == [b"data: " + line(c)[:-1] for c in (ROLE, HELLO, LO, STOP)]
    assert chunks.finished and chunks.failure is None
    assert json.loads(events[-3][len(b": metrics "):])["completion_tokens"] == 2


def test_usage_is_stripped_from_a_content_chunk_unless_asked_and_kept_when_asked():
    mixed = {"choices": [{"index": 0, "delta": {"content": "x"}, "finish_reason": "stop"}], "usage": {"completion_tokens": 1}}
    writes, _ = relay([line(mixed)])
    first = writes[0]
    assert first == b'data: {"choices":[{"index":0,"delta":{"content":"x"},"finish_reason":"stop"}]}\n\n'
    writes, _ = relay([line(mixed), line(USAGE)], include_usage=True)
    events = b"".join(writes).split(b"\n\n")
    assert events[0] == b"data: " + line(mixed)[:-1] and events[1] == b"data: " + line(USAGE)[:-1]


def test_sse_framed_lines_and_done_from_the_engine_are_tolerated():
    writes, chunks = relay([b"data: " + line(HELLO) + b"\n", b"data: " + line(STOP), b"data: [DONE]\n"])
    events = b"".join(writes).split(b"\n\n")
    assert events[:2] == [b"data: " + line(HELLO)[:-1], b"data: " + line(STOP)[:-1]]
    assert events[-2] == b"data: [DONE]" and events.count(b"data: [DONE]") == 1


def test_a_last_line_without_newline_is_relayed():
    writes, chunks = relay([line(HELLO), json.dumps(STOP).encode()])
    assert chunks.finished and b"".join(writes).endswith(DONE)


@pytest.mark.parametrize(("parts", "code", "message"), [
    ([line(HELLO)], "truncated_stream", "the endpoint's stream ended before the model finished"),
    ([line(HELLO), b"not json\n"], "invalid_chunk", "the endpoint sent a line that is not JSON: b'not json'"),
    ([b"[1, 2]\n"], "invalid_chunk", "the endpoint sent a line that is not an object: b'[1, 2]'"),
    ([line({"error": {"message": "CUDA out of memory"}})], "model_error", "the engine reported: CUDA out of memory"),
    ([line({"error": "plain"})], "model_error", "the engine reported: plain"),
    ([line({"code": 400, "message": "too long"})], "model_error", "the engine reported: too long"),
])
def test_a_failed_stream_ends_with_one_error_event(parts, code, message):
    writes, chunks = relay(parts)
    last = json.loads(writes[-1].split(b"\n\n")[-2].removeprefix(b"data: "))
    prefix = "the model's stream failed mid-way ("
    assert last["error"]["code"] == code and last["error"]["type"] == "server_error"
    assert last["error"]["message"].startswith(prefix) and last["error"]["message"].endswith(message)
    assert set(last["error"]) == {"message", "type", "code"}
    assert DONE not in b"".join(writes) and chunks.failure is not None


def test_a_chunk_with_code_and_message_but_choices_is_content():
    chunk = {"code": 1, "message": "m", "choices": [{"index": 0, "delta": {"content": "a"}, "finish_reason": "stop"}]}
    writes, chunks = relay([line(chunk)])
    assert chunks.failure is None and b"".join(writes).endswith(DONE)


def collected(*parts: bytes) -> dict:
    chunks = Chunks(StreamMeter(0.0, started=0.0))
    return asyncio.run(collect(_parts(*parts), chunks))


def test_collect_folds_the_stream_into_one_completion():
    completion = collected(STREAM[:7], STREAM[7:55], STREAM[55:])
    assert completion == {
        "id": "c1", "object": "chat.completion", "created": 5, "model": "m",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello"}, "logprobs": None,
                     "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
    }
    # A last line with no newline counts; a stream that never finishes is a failure, not a completion.
    assert collected(line(HELLO), json.dumps(STOP).encode())["choices"][0]["finish_reason"] == "stop"
    with pytest.raises(StreamFailure, match="ended before the model finished"):
        collected(line(HELLO))


def test_fold_joins_tool_calls_reasoning_logprobs_and_choices_by_index():
    chunks = [
        {"id": "x", "created": 1, "model": "m", "system_fingerprint": "fp",
         "choices": [{"index": 1, "delta": {"role": "assistant", "reasoning_content": "th"}}]},
        {"choices": [{"index": 1, "delta": {"reasoning_content": "ink", "refusal": "no"},
                      "logprobs": {"content": [{"token": "a"}]}}]},
        {"choices": [{"index": 1, "delta": {"tool_calls": [{"index": 0, "id": "call_1", "type": "function",
                                                            "function": {"name": "get_", "arguments": "{\"a\""}}]},
                      "logprobs": {"content": [{"token": "b"}]}}]},
        {"choices": [{"index": 1, "delta": {"tool_calls": [{"index": 0, "function": {"name": "weather",
                                                                                      "arguments": ":1}"}}]}}]},
        {"choices": [{"index": 1, "delta": {"tool_calls": [{"function": {"name": "second"}}]}}]},
        {"choices": [{"index": 0, "delta": {"content": "zero"}, "finish_reason": "length"}]},
        {"choices": [{"index": 1, "delta": {}, "finish_reason": "tool_calls"}], "usage": {"completion_tokens": 9}},
        {"choices": [], "usage": None},
    ]
    completion = fold(chunks)
    assert completion == {
        "id": "x", "object": "chat.completion", "created": 1, "model": "m", "system_fingerprint": "fp",
        "usage": {"completion_tokens": 9},
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "zero"}, "logprobs": None,
             "finish_reason": "length"},
            {"index": 1, "logprobs": {"content": [{"token": "a"}, {"token": "b"}]}, "finish_reason": "tool_calls",
             "message": {"role": "assistant", "content": None, "reasoning_content": "think", "refusal": "no",
                         "tool_calls": [
                             {"id": "call_1", "type": "function",
                              "function": {"name": "get_weather", "arguments": "{\"a\":1}"}},
                             {"id": None, "type": "function", "function": {"name": "second", "arguments": ""}}]}},
        ],
    }
    assert fold([]) == {"id": "", "object": "chat.completion", "created": 0, "model": "", "choices": [],
                        "usage": None}


def test_the_meter_counts_content_reasoning_and_tool_calls_once_per_chunk(monkeypatch):
    import gateway.metrics as metrics

    clock = iter([100.5, 101.0, 102.0])
    monkeypatch.setattr(metrics.time, "perf_counter", lambda: next(clock))
    meter = StreamMeter(price_per_hour=7.2, started=100.0)
    meter.observe({"choices": [{"delta": {"role": "assistant"}}]})
    meter.observe({"choices": [{"delta": {"content": "a"}}, {"delta": {"content": "b"}}]})  # one chunk, counted once
    meter.observe({"choices": [{"delta": {"reasoning_content": "r"}}]})
    meter.observe({"choices": [{"delta": {"tool_calls": [{}]}}], "usage": "not a dict"})
    assert (meter.first_content, meter.last_content, meter.content_chunks) == (100.5, 102.0, 3)
    assert meter.usage is None and meter.tokens_counted_from == "chunks" and meter.prompt_tokens is None
    assert meter.ttft_ms == 500.0
    assert meter.tokens_per_second == 1.5  # 3 chunks / 2 s since the call was sent
    assert meter.cost_per_1k_usd == pytest.approx(7.2 / (1.5 * 3600) * 1000)
    assert meter.summary() == {"ttft_ms": 500.0, "tokens_per_second": 1.5, "cost_per_1k_usd": 1.33333333,
                               "completion_tokens": 3}
    assert meter.headers() == {"X-Completion-Tokens": "3", "X-TTFT-MS": "500.0", "X-Tokens-Per-Second": "1.5",
                               "X-Cost-Per-1K-USD": "1.33333333"}
    meter.observe({"choices": [], "usage": {"prompt_tokens": 4, "completion_tokens": "many"}})
    assert meter.completion_tokens == 3 and meter.tokens_counted_from == "chunks" and meter.prompt_tokens == 4
    meter.observe({"choices": [], "usage": {"prompt_tokens": "4", "completion_tokens": 6}})
    assert meter.completion_tokens == 6 and meter.tokens_counted_from == "usage" and meter.prompt_tokens is None


def test_a_meter_with_nothing_measured_sends_only_the_token_count():
    meter = StreamMeter(price_per_hour=1.0, started=0.0)
    assert (meter.ttft_ms, meter.tokens_per_second, meter.cost_per_1k_usd) == (None, None, None)
    assert meter.headers() == {"X-Completion-Tokens": "0"}
    assert meter.sse_comment() == (b': metrics {"ttft_ms": null, "tokens_per_second": null, '
                                   b'"cost_per_1k_usd": null, "completion_tokens": 0}\n\n')
    # Content at the very instant the call was sent: no rate (no division by zero), so no cost.
    meter.first_content = meter.last_content = 0.0
    meter.content_chunks = 1
    assert meter.tokens_per_second is None and meter.cost_per_1k_usd is None
    # Usage says 0 tokens: no rate either.
    meter.last_content = 1.0
    meter.usage = {"completion_tokens": 0}
    assert meter.tokens_per_second is None


def test_emf_record_literal():
    meter = StreamMeter(price_per_hour=3.6, started=10.0, first_content=10.1, last_content=12.0,
                        usage={"prompt_tokens": 5, "completion_tokens": 20})
    record = emf_record(namespace="NS", endpoint_name="ep", meter=meter, properties={"Status": 200},
                        timestamp_ms=1_700_000_000_000)
    assert record["_aws"] == {"Timestamp": 1_700_000_000_000, "CloudWatchMetrics": [{
        "Namespace": "NS", "Dimensions": [["EndpointName"]],
        "Metrics": [{"Name": "CompletionTokens", "Unit": "Count"}, {"Name": "PromptTokens", "Unit": "Count"},
                    {"Name": "TokensPerSecond", "Unit": "Count/Second"}, {"Name": "TTFTMs", "Unit": "Milliseconds"},
                    {"Name": "CostPer1kTokensUSD", "Unit": "None"}]}]}
    assert record["EndpointName"] == "ep" and record["Status"] == 200
    assert (record["CompletionTokens"], record["PromptTokens"], record["TokensPerSecond"]) == (20, 5, 10.0)
    assert record["TTFTMs"] == pytest.approx(100.0) and record["CostPer1kTokensUSD"] == pytest.approx(0.1)
    # Rejected before the endpoint was called: a plain record, no metrics.
    assert emf_record(namespace="NS", endpoint_name="ep", meter=None, properties={"Status": 401}) == {
        "EndpointName": "ep", "Status": 401}
    now = emf_record(namespace="NS", endpoint_name="ep", meter=meter, properties={})["_aws"]["Timestamp"]
    import time

    assert abs(now - time.time() * 1000) < 60_000  # milliseconds since the epoch, now


def test_gateway_errors_in_json_and_as_the_last_sse_event():
    err = GatewayError(429, "slow down", type="rate_limit_error", code="throttled", param="p",
                       headers={"Retry-After": "2"})
    assert (err.status, err.message, str(err), err.headers) == (429, "slow down", "slow down", {"Retry-After": "2"})
    assert err.payload() == {"error": {"message": "slow down", "type": "rate_limit_error", "param": "p",
                                       "code": "throttled"}}
    assert json.loads(err.body()) == err.payload()
    assert err.sse_event() == (b'data: {"error": {"message": "slow down", "type": "rate_limit_error", '
                               b'"code": "throttled"}}\n\n')
    plain = GatewayError(400, "bad")
    assert plain.payload() == {"error": {"message": "bad", "type": "invalid_request_error", "param": None,
                                         "code": None}}
    assert plain.headers == {}
    bad = invalid("no messages", param="messages")
    assert (bad.status, bad.param, bad.code, bad.type) == (400, "messages", "invalid_value", "invalid_request_error")
    assert invalid("x", code="other").code == "other" and invalid("x").param is None


def test_second_round_of_survivors():
    # A usage chunk on a last line without newline goes through the same filter (usage not asked for: dropped).
    writes, _ = relay([line(HELLO) + line(STOP) + json.dumps(USAGE).encode()])
    assert b"".join(writes) == (b"data: " + line(HELLO)[:-1] + b"\n\n" + b"data: " + line(STOP)[:-1] + b"\n\n"
                                + writes[-1][writes[-1].index(b": metrics"):])
    assert writes[-1].startswith(b": metrics") and writes[-1].endswith(DONE)
    with pytest.raises(StreamFailure, match="^TruncatedStream: the endpoint's stream ended before the model finished$"):
        collected(line(HELLO))
    # A choice without an index is choice 0; a role and a tool call's type are taken as sent.
    completion = fold([{"choices": [{"delta": {"role": "tool", "content": "x",
                                               "tool_calls": [{"type": "custom", "function": {"name": "f"}}]},
                                     "finish_reason": "stop"}]}])
    (choice,) = completion["choices"]
    assert choice["index"] == 0 and choice["message"]["role"] == "tool"
    assert choice["message"]["tool_calls"][0]["type"] == "custom"
    meter = StreamMeter(price_per_hour=0.0, started=0.0, first_content=1.23456, last_content=2.0, content_chunks=1)
    assert meter.summary()["ttft_ms"] == 1234.6


def test_third_round_of_survivors():
    # SSE allows `data:` without the space: the JSON starts right after the colon.
    writes, chunks = relay([b'data:' + line(HELLO), b'data:' + line(STOP)])
    assert chunks.failure is None and b"".join(writes).startswith(b"data: " + line(HELLO)[:-1] + b"\n\n")
    # The last unterminated line and the closing comment go out in one write, back to back.
    writes, _ = relay([line(HELLO), json.dumps(STOP, separators=(",", ":")).encode()])
    assert writes[-1] == b"data: " + line(STOP)[:-1] + b"\n\n" + writes[-1][writes[-1].index(b": metrics"):]
    assert writes[-1].endswith(b"}\n\n" + DONE)
    # A line that is not JSON is quoted up to its first 200 bytes, not the whole line.
    writes, _ = relay([b"<" + b"x" * 299 + b"\n"])
    message = json.loads(writes[-1].split(b"\n\n")[-2].removeprefix(b"data: "))["error"]["message"]
    assert message.endswith("not JSON: b'<" + "x" * 199 + "'")
    writes, _ = relay([b"[" + b"1," * 150 + b"1]\n"])
    message = json.loads(writes[-1].split(b"\n\n")[-2].removeprefix(b"data: "))["error"]["message"]
    assert message.endswith("not an object: b'[" + "1," * 99 + "1'")
    # An engine error without a message: the whole error object is named, so its code is not lost.
    writes, _ = relay([line({"error": {"code": 500, "type": "InternalError"}})])
    message = json.loads(writes[-1].split(b"\n\n")[-2].removeprefix(b"data: "))["error"]["message"]
    assert message.endswith("the engine reported: {'code': 500, 'type': 'InternalError'}")
    # tokens/s is sent with 2 decimals: 2 tokens in 3 s
    meter = StreamMeter(price_per_hour=0.0, started=0.0, first_content=1.0, last_content=3.0, content_chunks=2)
    assert meter.summary()["tokens_per_second"] == 0.67 and meter.headers()["X-Tokens-Per-Second"] == "0.67"
    # invalid() keeps the message the client acts on
    assert invalid("messages must not be empty").payload()["error"]["message"] == "messages must not be empty"
