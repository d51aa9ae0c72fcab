"""gateway.chat_request on its own: what is accepted, what is refused with which field and words, and
the body the endpoint gets. (test_faults.py checks the same refusals through the running gateway.)"""

from __future__ import annotations

import json

import pytest

from gateway.chat_request import ChatRequest, parse_chat_request
from gateway.errors import GatewayError

MODEL = "org/model"
MESSAGES = [{"role": "user", "content": "hi"}]


def parse(body) -> ChatRequest:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return parse_chat_request(raw, model_id=MODEL, max_model_len=100)


def refused(body) -> GatewayError:
    with pytest.raises(GatewayError) as raised:
        parse(body)
    return raised.value


def test_defaults_of_a_minimal_request():
    chat = parse({"messages": MESSAGES})
    assert (chat.stream, chat.include_usage, chat.max_tokens) == (False, False, None)
    assert chat.body == {"messages": MESSAGES}


def test_the_endpoint_body_is_always_a_stream_with_usage_and_keeps_unknown_fields():
    chat = parse({"messages": MESSAGES, "stream": True, "stream_options": {"include_usage": False, "x": 1},
                  "top_k": 5, "max_tokens": 7})
    assert (chat.stream, chat.include_usage, chat.max_tokens) == (True, False, 7)
    assert chat.endpoint_body() == (b'{"messages":[{"role":"user","content":"hi"}],"stream":true,'
                                    b'"stream_options":{"include_usage":true,"x":1},"top_k":5,"max_tokens":7}')
    assert chat.body["stream_options"] == {"include_usage": False, "x": 1}  # the client's request is untouched
    assert json.loads(parse({"messages": MESSAGES}).endpoint_body())["stream_options"] == {"include_usage": True}


def test_usage_and_token_limits():
    assert parse({"messages": MESSAGES, "stream": True, "stream_options": {"include_usage": True}}).include_usage
    assert parse({"messages": MESSAGES, "max_completion_tokens": 100}).max_tokens == 100  # = max_model_len
    assert parse({"messages": MESSAGES, "max_tokens": 1, "max_completion_tokens": 3}).max_tokens == 3
    assert parse({"messages": MESSAGES, "max_tokens": None}).max_tokens is None


@pytest.mark.parametrize(
    ("body", "status", "code", "param", "message"),
    [
        (b"{nope", 400, "invalid_json", None, None),
        (b"[]", 400, "invalid_type", None, "the request body must be a JSON object, got a list"),
        (b'"x"', 400, "invalid_type", None, "the request body must be a JSON object, got a string"),
        ({}, 400, "missing_required_parameter", "messages",
         "messages is required: a non-empty list of {role, content} objects"),
        ({"messages": {}}, 400, "invalid_type", "messages", "messages must be a list, got an object"),
        ({"messages": []}, 400, "empty_array", "messages", "messages must not be empty"),
        ({"messages": ["hi"]}, 400, "invalid_type", "messages[0]", "messages[0] must be an object, got a string"),
        ({"messages": [{"content": "x"}]}, 400, "invalid_value", "messages[0].role",
         "messages[0].role must be one of system, developer, user, assistant, tool, function, got None"),
        ({"messages": [MESSAGES[0], {"role": "user"}]}, 400, "missing_required_parameter", "messages[1].content",
         "messages[1].content is required"),
        ({"messages": [{"role": "assistant"}]}, 400, "missing_required_parameter", "messages[0].content", None),
        ({"messages": [{"role": "user", "tool_calls": [{}]}]}, 400, "missing_required_parameter",
         "messages[0].content", None),
        ({"messages": [{"role": "user", "content": [{"type": "text"}, {"text": "x"}]}]}, 400, "invalid_type",
         "messages[0].content[1]", "messages[0].content[1] must be an object with a string `type`"),
        ({"messages": [{"role": "user", "content": ["x"]}]}, 400, "invalid_type", "messages[0].content[0]", None),
        ({"messages": [{"role": "user", "content": 1.5}]}, 400, "invalid_type", "messages[0].content",
         "messages[0].content must be a string or a list of parts, got a number"),
        ({"messages": MESSAGES, "stream": 1}, 400, "invalid_type", "stream", "stream must be a boolean, got a number"),
        ({"messages": MESSAGES, "stream_options": {}}, 400, "invalid_value", "stream_options",
         "stream_options is only allowed when stream is true"),
        ({"messages": MESSAGES, "stream": True, "stream_options": []}, 400, "invalid_type", "stream_options",
         "stream_options must be an object, got a list"),
        ({"messages": MESSAGES, "stream": True, "stream_options": {"include_usage": "yes"}}, 400, "invalid_type",
         "stream_options.include_usage", "stream_options.include_usage must be a boolean, got a string"),
        ({"messages": MESSAGES, "max_tokens": 0}, 400, "invalid_value", "max_tokens", "max_tokens must be at least 1, got 0"),
        ({"messages": MESSAGES, "max_completion_tokens": 101}, 400, "context_length_exceeded", "max_completion_tokens",
         "max_completion_tokens=101 exceeds the model's context of 100 tokens (prompt + completion); ask for at "
         "most 100 minus the prompt's length"),
        ({"messages": MESSAGES, "max_tokens": 2.5}, 400, "invalid_type", "max_tokens",
         "max_tokens must be a whole number, got a number"),
        ({"messages": MESSAGES, "max_tokens": False}, 400, "invalid_type", "max_tokens",
         "max_tokens must be a whole number, got a boolean"),
        ({"messages": MESSAGES, "temperature": 2.01}, 400, "invalid_value", "temperature",
         "temperature must be between 0 and 2, got 2.01"),
        ({"messages": MESSAGES, "temperature": -0.1}, 400, "invalid_value", "temperature", None),
        ({"messages": MESSAGES, "temperature": "hot"}, 400, "invalid_type", "temperature",
         "temperature must be a number, got a string"),
        ({"messages": MESSAGES, "temperature": True}, 400, "invalid_type", "temperature", None),
        ({"messages": MESSAGES, "top_p": 1.5}, 400, "invalid_value", "top_p", "top_p must be between 0 and 1, got 1.5"),
        ({"messages": MESSAGES, "presence_penalty": -2.5}, 400, "invalid_value", "presence_penalty",
         "presence_penalty must be between -2 and 2, got -2.5"),
        ({"messages": MESSAGES, "frequency_penalty": 3}, 400, "invalid_value", "frequency_penalty",
         "frequency_penalty must be between -2 and 2, got 3"),
        ({"messages": MESSAGES, "n": 0}, 400, "invalid_value", "n", "n must be at least 1, got 0"),
        ({"messages": MESSAGES, "n": "2"}, 400, "invalid_type", "n", "n must be a whole number, got a string"),
        ({"messages": MESSAGES, "seed": 1.5}, 400, "invalid_type", "seed", "seed must be a whole number, got a number"),
        ({"messages": MESSAGES, "stop": 5}, 400, "invalid_type", "stop", "stop must be a string or a list of strings, got a number"),
        ({"messages": MESSAGES, "stop": ["a", None]}, 400, "invalid_type", "stop", None),
        ({"model": None, "messages": MESSAGES, "stop": {"a": 1}}, 400, "invalid_type", "stop",
         "stop must be a string or a list of strings, got an object"),
    ],
)
def test_refusals(body, status, code, param, message):
    err = refused(body)
    assert (err.status, err.code, err.param, err.type) == (status, code, param, "invalid_request_error")
    if message is not None:
        assert err.message == message
    if code == "invalid_json":
        assert err.message.startswith("the request body is not valid JSON (")


@pytest.mark.parametrize(
    "extra",
    [{"temperature": 0}, {"temperature": 2}, {"temperature": 1.5}, {"top_p": 0}, {"top_p": 1},
     {"presence_penalty": -2}, {"presence_penalty": 2}, {"frequency_penalty": 0.5}, {"n": 1}, {"n": 3},
     {"seed": 0}, {"stop": "x"}, {"stop": ["a", "b"]}, {"stop": []}, {"max_tokens": 1}, {"stream": False}],
)
def test_accepted_edge_values(extra):
    assert parse({"messages": MESSAGES, **extra}).body == {"messages": MESSAGES, **extra}


@pytest.mark.parametrize(
    "messages",
    [
        [{"role": role, "content": "x"} for role in ("system", "developer", "user", "assistant", "tool", "function")],
        [{"role": "assistant", "tool_calls": [{"id": "1"}]}, {"role": "tool", "content": "42"}],
        [{"role": "assistant", "function_call": {"name": "f"}, "content": None}],
        [{"role": "user", "content": [{"type": "text", "text": "hi"}, {"type": "image_url"}]}],
        [{"role": "user", "content": []}],
    ],
)
def test_accepted_messages(messages):
    assert parse({"messages": messages}).body["messages"] == messages


def test_survivors_of_mutation_testing():
    # stream_options without include_usage: no usage chunk for the client.
    assert parse({"messages": MESSAGES, "stream": True, "stream_options": {}}).include_usage is False
    # A tool-call turn without content does not end the check of the turns after it.
    err = refused({"messages": [{"role": "assistant", "tool_calls": [{"id": "1"}]}, {"role": "wizard", "content": "x"}]})
    assert err.param == "messages[1].role"
    # JSON null as the whole body.
    assert refused(b"null").message == "the request body must be a JSON object, got null"
