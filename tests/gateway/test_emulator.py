"""The emulator speaks the real wire format: botocore's own decoder and client parse what it sends."""

from __future__ import annotations

import json
import struct

import pytest
from botocore.eventstream import ChecksumMismatch, EventStreamBuffer
from botocore.exceptions import ClientError, EventStreamError

from local.sagemaker_runtime import (
    Forward,
    Reply,
    SageMakerRuntimeEmulator,
    Scripted,
    StreamFault,
    chunk,
    encode_message,
    payload_part,
    stream_exception,
)


def decode(data: bytes):
    buffer = EventStreamBuffer()
    buffer.add_data(data)
    return list(buffer)


def test_payload_part_decodes_with_botocore_and_its_crcs_check():
    message = payload_part(b'{"a": 1}\n')
    (event,) = decode(message)
    assert event.headers == {":event-type": "PayloadPart", ":content-type": "application/octet-stream",
                             ":message-type": "event"}
    assert event.payload == b'{"a": 1}\n'
    total_length, headers_length = struct.unpack(">II", message[:8])
    assert total_length == len(message)
    assert headers_length == len(message) - 16 - len(b'{"a": 1}\n')
    corrupted = message[:-6] + bytes([message[-6] ^ 0xFF]) + message[-5:]
    with pytest.raises(ChecksumMismatch):
        decode(corrupted)


def test_stream_exception_is_an_exception_message():
    (event,) = decode(stream_exception("ModelStreamError", "boom", "ModelInvocationTimeExceeded"))
    assert event.headers[":message-type"] == "exception"
    assert event.headers[":exception-type"] == "ModelStreamError"
    assert json.loads(event.payload) == {"Message": "boom", "ErrorCode": "ModelInvocationTimeExceeded"}
    assert event.to_response_dict()["status_code"] == 400


def test_messages_concatenate_and_split_anywhere():
    data = b"".join(encode_message({":event-type": "PayloadPart"}, bytes([i]) * i) for i in range(1, 6))
    buffer = EventStreamBuffer()
    events = []
    for i in range(0, len(data), 7):
        buffer.add_data(data[i:i + 7])
        events.extend(buffer)
    assert [e.payload for e in events] == [bytes([i]) * i for i in range(1, 6)]


def read_stream(client, endpoint: str, body: dict) -> tuple[list[bytes], bytes]:
    response = client.invoke_endpoint_with_response_stream(EndpointName=endpoint, Body=json.dumps(body))
    parts = [event["PayloadPart"]["Bytes"] for event in response["Body"]]
    return parts, b"".join(parts)


def test_boto3_reads_a_scripted_stream_split_across_parts(emulator):
    parts, data = read_stream(emulator.client(), "split", {"messages": []})
    assert all(len(part) <= 5 for part in parts)
    assert any(not part.endswith(b"\n") for part in parts)  # lines straddle parts
    lines = [json.loads(line) for line in data.splitlines()]
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in lines if c["choices"]) == "Hello, world!"
    assert lines[-1]["usage"]["completion_tokens"] == 4


def test_synthetic_model_honours_max_tokens_and_usage(emulator):
    _, data = read_stream(emulator.client(), "llm", {"max_tokens": 5, "stream_options": {"include_usage": True}})
    lines = [json.loads(line) for line in data.splitlines()]
    contents = [c["choices"][0]["delta"].get("content") for c in lines if c["choices"]]
    assert contents[1:6] == [f"tok{i} " for i in range(5)]
    assert lines[-1]["usage"]["completion_tokens"] == 5


def test_model_stream_error_raises_event_stream_error_mid_stream(emulator):
    response = emulator.client().invoke_endpoint_with_response_stream(EndpointName="broken", Body=b"{}")
    received = []
    with pytest.raises(EventStreamError) as raised:
        for event in response["Body"]:
            received.append(event["PayloadPart"]["Bytes"])
    assert len(received) == 3
    assert raised.value.response["Error"] == {"Code": "ModelStreamError", "Message": "boom"}


@pytest.mark.parametrize(
    ("endpoint", "code", "status"),
    [("throttled", "ThrottlingException", 400), ("not-ready", "ModelNotReadyException", 429),
     ("unavailable", "ServiceUnavailable", 503), ("no-such-endpoint", "ValidationError", 400),
     ("rejects", "ModelError", 424)],
)
def test_api_errors_parse_as_botocore_client_errors(emulator, endpoint, code, status):
    with pytest.raises(ClientError) as raised:
        emulator.client().invoke_endpoint_with_response_stream(EndpointName=endpoint, Body=b"{}")
    assert raised.value.response["Error"]["Code"] == code
    assert raised.value.response["ResponseMetadata"]["HTTPStatusCode"] == status
    if code == "ModelError":
        assert raised.value.response["OriginalStatusCode"] == 400
    if code == "ValidationError":
        assert "no-such-endpoint" in raised.value.response["Error"]["Message"]


def test_invoke_endpoint_returns_the_folded_completion(emulator):
    response = emulator.client().invoke_endpoint(EndpointName="scripted", Body=b"{}")
    completion = json.loads(response["Body"].read())
    assert completion["object"] == "chat.completion"
    assert completion["choices"][0]["message"]["content"] == "Hello, world!"
    assert completion["choices"][0]["finish_reason"] == "stop"


def test_forward_turns_an_openai_server_sse_into_lmi_json_lines(emulator, gateways):
    # The OpenAI-compatible server behind the forwarder is the gateway itself (on the "scripted" endpoint).
    upstream = gateways("scripted")
    with SageMakerRuntimeEmulator({"fwd": Forward(upstream.url), "dead": Forward("http://127.0.0.1:9/v1")}) as fwd:
        body = {"model": "test-org/test-model", "messages": [{"role": "user", "content": "hi"}],
                "stream_options": {"include_usage": True}}
        parts, data = read_stream(fwd.client(), "fwd", body)
        assert b"data:" not in data and b"[DONE]" not in data
        lines = [json.loads(line) for line in data.splitlines()]
        assert all(line["object"] == "chat.completion.chunk" for line in lines)
        assert "".join(c["choices"][0]["delta"].get("content") or "" for c in lines if c["choices"]) == "Hello, world!"
        assert lines[-1]["usage"]["completion_tokens"] == 4
        completion = json.loads(fwd.client().invoke_endpoint(EndpointName="fwd", Body=json.dumps(body))["Body"].read())
        assert completion["choices"][0]["message"]["content"] == "Hello, world!"
        with pytest.raises(ClientError) as raised:  # the server rejects the request: ModelError, as SageMaker
            fwd.client().invoke_endpoint_with_response_stream(EndpointName="fwd", Body=b'{"messages": []}')
        assert raised.value.response["Error"]["Code"] == "ModelError"
        assert raised.value.response["OriginalStatusCode"] == 400
        with pytest.raises(ClientError) as raised:
            fwd.client().invoke_endpoint_with_response_stream(EndpointName="dead", Body=b"{}")
        assert raised.value.response["Error"]["Code"] == "ServiceUnavailable"


def test_scripted_replies_play_in_turn_and_the_calls_are_recorded():
    backend = Scripted([Reply(lines=[chunk("a", finish_reason="stop")]),
                        Reply(lines=[chunk("b")], fault=StreamFault("InternalStreamFailure"), fault_after=1)])
    with SageMakerRuntimeEmulator({"e": backend}) as emu:
        _, first = read_stream(emu.client(), "e", {"n": 1})
        with pytest.raises(EventStreamError) as raised:
            read_stream(emu.client(), "e", {"n": 2})
    assert json.loads(first)["choices"][0]["delta"]["content"] == "a"
    assert raised.value.response["Error"]["Code"] == "InternalStreamFailure"
    assert [call.request for call in emu.calls] == [{"n": 1}, {"n": 2}]
    assert [call.parts_sent for call in emu.calls] == [1, 2]
