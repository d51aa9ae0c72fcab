"""From the endpoint's JSON lines to what the client gets: SSE events, or one folded completion.

LMI writes one `chat.completion.chunk` per line (no `data: ` prefix, no `[DONE]`), and PayloadPart
boundaries do not follow lines, so parts are buffered and split on newlines. A stream that ends
without a finish_reason, or with an error, ends with an SSE error event: never a silent truncation.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from gateway.chat_request import ChatRequest
from gateway.metrics import StreamMeter
from gateway.sagemaker import StreamFailure

DONE = b"data: [DONE]\n\n"


class LineSplitter:
    """Bytes in, complete lines out; a line may straddle any number of parts."""

    def __init__(self) -> None:
        self._pending = b""

    def feed(self, data: bytes) -> list[bytes]:
        if b"\n" not in data:
            self._pending += data
            return []
        lines = (self._pending + data).split(b"\n")
        self._pending = lines.pop()
        return lines

    def flush(self) -> list[bytes]:
        rest, self._pending = self._pending, b""
        return [rest] if rest.strip() else []


@dataclass
class Chunks:
    """Parses lines into chunks, feeds the meter, and remembers whether the model finished."""

    meter: StreamMeter
    finished: bool = False
    chunks: list[dict[str, Any]] = field(default_factory=list)
    keep: bool = False
    failure: StreamFailure | None = None

    def parse(self, line: bytes) -> tuple[bytes, dict[str, Any]] | None:
        line = line.strip()
        if line.startswith(b"data:"):  # tolerate an engine that writes SSE anyway
            line = line[5:].strip()
        if not line or line == b"[DONE]":
            return None
        try:
            chunk = json.loads(line)
        except ValueError:
            raise StreamFailure("InvalidChunk", f"the endpoint sent a line that is not JSON: {line[:200]!r}") from None
        if not isinstance(chunk, dict):
            raise StreamFailure("InvalidChunk", f"the endpoint sent a line that is not an object: {line[:200]!r}")
        if "error" in chunk or ("code" in chunk and "message" in chunk and "choices" not in chunk):
            error = chunk.get("error", chunk)
            message = error.get("message", str(error)) if isinstance(error, dict) else str(error)
            raise StreamFailure("ModelError", f"the engine reported: {message}")
        self.meter.observe(chunk)
        for choice in chunk.get("choices") or ():
            if choice.get("finish_reason"):
                self.finished = True
        if self.keep:
            self.chunks.append(chunk)
        return line, chunk


async def sse_stream(parts: AsyncIterator[bytes], request: ChatRequest, chunks: Chunks) -> AsyncIterator[bytes]:
    """The client's SSE stream. The lines that arrive in one part go out in one write."""
    splitter = LineSplitter()
    out: list[bytes] = []
    try:
        async for part in parts:
            for line in splitter.feed(part):
                _relay(line, request, chunks, out)
            if out:
                yield b"".join(out)
                out.clear()
        for line in splitter.flush():
            _relay(line, request, chunks, out)
    except StreamFailure as failure:
        chunks.failure = failure
    if chunks.failure is None and not chunks.finished:
        chunks.failure = StreamFailure("TruncatedStream", "the endpoint's stream ended before the model finished")
    if chunks.failure is not None:
        out.append(chunks.failure.gateway_error().sse_event())
    else:
        out.append(chunks.meter.sse_comment() + DONE)
    yield b"".join(out)


def _relay(line: bytes, request: ChatRequest, chunks: Chunks, out: list[bytes]) -> None:
    parsed = chunks.parse(line)
    if parsed is None:
        return
    line, chunk = parsed
    if "usage" in chunk and not request.include_usage:
        # The gateway asked for usage for its metrics; a client that did not gets no usage chunk.
        if not chunk.get("choices"):
            return
        chunk = {key: value for key, value in chunk.items() if key != "usage"}
        line = json.dumps(chunk, separators=(",", ":")).encode()
    out.append(b"data: " + line + b"\n\n")


async def collect(parts: AsyncIterator[bytes], chunks: Chunks) -> dict[str, Any]:
    """Read the whole stream and fold it into the `chat.completion` a non-streaming call returns."""
    chunks.keep = True
    splitter = LineSplitter()
    async for part in parts:
        for line in splitter.feed(part):
            chunks.parse(line)
    for line in splitter.flush():
        chunks.parse(line)
    if not chunks.finished:
        raise StreamFailure("TruncatedStream", "the endpoint's stream ended before the model finished")
    return fold(chunks.chunks)


def fold(chunks: list[dict[str, Any]]) -> dict[str, Any]:
    first = chunks[0] if chunks else {}
    choices: dict[int, dict[str, Any]] = {}
    usage = None
    fingerprint = None
    for chunk in chunks:
        usage = chunk.get("usage") or usage
        fingerprint = chunk.get("system_fingerprint") or fingerprint
        for choice in chunk.get("choices") or ():
            _fold_choice(choices, choice)
    completion: dict[str, Any] = {
        "id": first.get("id", ""),
        "object": "chat.completion",
        "created": first.get("created", 0),
        "model": first.get("model", ""),
        "choices": [choices[index] for index in sorted(choices)],
        "usage": usage,
    }
    if fingerprint:
        completion["system_fingerprint"] = fingerprint
    return completion


def _fold_choice(choices: dict[int, dict[str, Any]], choice: dict[str, Any]) -> None:
    index = choice.get("index", 0)
    slot = choices.get(index)
    if slot is None:
        slot = choices[index] = {
            "index": index,
            "message": {"role": "assistant", "content": None},
            "logprobs": None,
            "finish_reason": None,
        }
    message = slot["message"]
    delta = choice.get("delta") or {}
    if delta.get("role"):
        message["role"] = delta["role"]
    for key in ("content", "reasoning_content", "refusal"):
        if delta.get(key):
            message[key] = (message.get(key) or "") + delta[key]
    for call in delta.get("tool_calls") or ():
        calls = message.setdefault("tool_calls", [])
        position = call.get("index", len(calls))
        while len(calls) <= position:
            calls.append({"id": None, "type": "function", "function": {"name": "", "arguments": ""}})
        target = calls[position]
        if call.get("id"):
            target["id"] = call["id"]
        if call.get("type"):
            target["type"] = call["type"]
        function = call.get("function") or {}
        if function.get("name"):
            target["function"]["name"] += function["name"]
        if function.get("arguments"):
            target["function"]["arguments"] += function["arguments"]
    logprobs = choice.get("logprobs")
    if isinstance(logprobs, dict) and isinstance(logprobs.get("content"), list):
        slot["logprobs"] = slot["logprobs"] or {"content": []}
        slot["logprobs"]["content"].extend(logprobs["content"])
    if choice.get("finish_reason"):
        slot["finish_reason"] = choice["finish_reason"]
