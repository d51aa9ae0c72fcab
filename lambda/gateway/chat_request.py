"""Checking a chat-completions request before it costs an endpoint call.

Only what the gateway can judge is checked (shape, types, ranges, the context length); fields it does
not know pass through to the engine untouched, which rejects what it cannot serve (SageMaker reports
that as a ModelError, which the gateway turns back into a 400).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from gateway.errors import GatewayError, invalid

ROLES = ("system", "developer", "user", "assistant", "tool", "function")


@dataclass(frozen=True)
class ChatRequest:
    body: dict[str, Any]  # what goes to the endpoint
    stream: bool  # what the client asked for (the endpoint is always streamed)
    include_usage: bool  # whether the client wants the usage chunk
    max_tokens: int | None

    def endpoint_body(self) -> bytes:
        """The request to the endpoint: always streamed, always with usage (the metrics need it)."""
        body = dict(self.body)
        body["stream"] = True
        body["stream_options"] = {**(body.get("stream_options") or {}), "include_usage": True}
        return json.dumps(body, separators=(",", ":")).encode()


def parse_chat_request(raw: bytes, *, model_id: str, max_model_len: int) -> ChatRequest:
    try:
        body = json.loads(raw)
    except ValueError as err:
        raise invalid(f"the request body is not valid JSON ({err})", code="invalid_json") from None
    if not isinstance(body, dict):
        raise invalid(f"the request body must be a JSON object, got {_kind(body)}", code="invalid_type")

    _check_model(body, model_id)
    _check_messages(body.get("messages"))
    stream = _optional(body, "stream", bool, "a boolean", default=False)
    stream_options = _optional(body, "stream_options", dict, "an object", default=None)
    include_usage = False
    if stream_options is not None:
        if not stream:
            raise invalid("stream_options is only allowed when stream is true", "stream_options")
        include_usage = _optional(stream_options, "include_usage", bool, "a boolean", default=False,
                                  param="stream_options.include_usage")

    max_tokens = None
    for name in ("max_tokens", "max_completion_tokens"):
        value = _optional(body, name, int, "a whole number", default=None)
        if value is None:
            continue
        if value <= 0:
            raise invalid(f"{name} must be at least 1, got {value}", name)
        if value > max_model_len:
            raise invalid(
                f"{name}={value} exceeds the model's context of {max_model_len} tokens (prompt + completion); "
                f"ask for at most {max_model_len} minus the prompt's length",
                name,
                code="context_length_exceeded",
            )
        max_tokens = value

    _range(body, "temperature", 0.0, 2.0)
    _range(body, "top_p", 0.0, 1.0)
    _range(body, "presence_penalty", -2.0, 2.0)
    _range(body, "frequency_penalty", -2.0, 2.0)
    n = _optional(body, "n", int, "a whole number", default=1)
    if n < 1:
        raise invalid(f"n must be at least 1, got {n}", "n")
    _optional(body, "seed", int, "a whole number", default=None)
    stop = body.get("stop")
    if stop is not None and not (
        isinstance(stop, str) or (isinstance(stop, list) and all(isinstance(s, str) for s in stop))
    ):
        raise invalid(f"stop must be a string or a list of strings, got {_kind(stop)}", "stop", "invalid_type")
    return ChatRequest(body=body, stream=stream, include_usage=include_usage, max_tokens=max_tokens)


def _check_model(body: dict[str, Any], model_id: str) -> None:
    model = body.get("model")
    if model is None:
        return
    if not isinstance(model, str):
        raise invalid(f"model must be a string, got {_kind(model)}", "model", "invalid_type")
    if model != model_id:
        raise GatewayError(
            404,
            f"The model `{model}` does not exist here; this endpoint serves `{model_id}` (see GET /v1/models)",
            param="model",
            code="model_not_found",
        )


def _check_messages(messages: Any) -> None:
    if messages is None:
        raise invalid("messages is required: a non-empty list of {role, content} objects", "messages",
                      "missing_required_parameter")
    if not isinstance(messages, list):
        raise invalid(f"messages must be a list, got {_kind(messages)}", "messages", "invalid_type")
    if not messages:
        raise invalid("messages must not be empty", "messages", "empty_array")
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise invalid(f"{where} must be an object, got {_kind(message)}", where, "invalid_type")
        role = message.get("role")
        if role not in ROLES:
            raise invalid(f"{where}.role must be one of {', '.join(ROLES)}, got {role!r}", f"{where}.role")
        content = message.get("content")
        if content is None:
            # Assistant turns that only call tools carry no content.
            if role == "assistant" and (message.get("tool_calls") or message.get("function_call")):
                continue
            raise invalid(f"{where}.content is required", f"{where}.content", "missing_required_parameter")
        if isinstance(content, list):
            for j, part in enumerate(content):
                if not isinstance(part, dict) or not isinstance(part.get("type"), str):
                    raise invalid(f"{where}.content[{j}] must be an object with a string `type`",
                                  f"{where}.content[{j}]", "invalid_type")
        elif not isinstance(content, str):
            raise invalid(f"{where}.content must be a string or a list of parts, got {_kind(content)}",
                          f"{where}.content", "invalid_type")


def _optional(body: dict[str, Any], name: str, kind: type, what: str, *, default: Any, param: str | None = None) -> Any:
    value = body.get(name)
    if value is None:
        return default
    # bool is an int in Python; JSON true is not a token count.
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise invalid(f"{param or name} must be {what}, got {_kind(value)}", param or name, "invalid_type")
    return value


def _range(body: dict[str, Any], name: str, low: float, high: float) -> None:
    value = body.get(name)
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise invalid(f"{name} must be a number, got {_kind(value)}", name, "invalid_type")
    if not low <= value <= high:
        raise invalid(f"{name} must be between {low:g} and {high:g}, got {value}", name)


def _kind(value: Any) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", int: "a number",
             float: "a number", type(None): "null"}
    return names.get(type(value), type(value).__name__)
