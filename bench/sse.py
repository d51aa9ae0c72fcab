"""Decode a received streaming reply into timed events, after the stream has ended.

The read path only stores the body and arrival marks `(perf_counter_ns, bytes received so far)`; this
module maps each SSE event to the time its last byte arrived, so parsing never delays a timestamp.
Accepts OpenAI SSE (`data: {...}` lines, `data: [DONE]`), SSE comments (`: metrics {...}` from the
gateway) and bare JSON lines (SageMaker LMI's raw stream).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import orjson

METRICS_COMMENT = b"metrics "


@dataclass(slots=True)
class ParsedStream:
    # Arrival time (ns) of each event that carried non-empty content, in order.
    content_times_ns: list[int] = field(default_factory=list)
    # Index of the arrival mark each content event came in with (equal indices = one network read).
    content_reads: list[int] = field(default_factory=list)
    content_chars: int = 0
    completion_tokens: int | None = None
    prompt_tokens: int | None = None
    finish_reason: str | None = None
    done: bool = False
    events: int = 0
    server_metrics: dict | None = None
    error_kind: str | None = None
    error_detail: str | None = None


def _choice_text(choice: dict) -> str | None:
    delta = choice.get("delta")
    if not isinstance(delta, dict):
        delta = choice.get("message")
    if isinstance(delta, dict):
        # Reasoning models stream their reasoning first: it is generated output, so it counts as tokens.
        text = delta.get("content") or delta.get("reasoning_content") or delta.get("reasoning")
        if text:
            return text if isinstance(text, str) else str(text)
    text = choice.get("text")
    return text if isinstance(text, str) and text else None


class _Clock:
    """Maps a byte offset in the body to the arrival time of the read that completed it."""

    __slots__ = ("marks", "i")

    def __init__(self, marks: list[tuple[int, int]]):
        self.marks = marks
        self.i = 0

    def at(self, end_offset: int) -> tuple[int, int]:
        marks = self.marks
        i = self.i
        last = len(marks) - 1
        while i < last and marks[i][1] < end_offset:
            i += 1
        self.i = i
        return marks[i][0], i


def parse_stream(body: bytes, marks: list[tuple[int, int]]) -> ParsedStream:
    """Parse an SSE (or JSON-lines) body. `marks` must be non-empty and sorted by byte count."""
    out = ParsedStream()
    clock = _Clock(marks or [(0, len(body))])
    data_lines: list[bytes] = []
    event_type = b""
    data_end = 0
    pos = 0
    n = len(body)

    def dispatch() -> bool:
        nonlocal event_type
        payload = b"\n".join(data_lines)
        data_lines.clear()
        kind, event_type = event_type, b""
        return _handle_event(out, payload, kind, clock.at(data_end))

    while pos < n:
        nl = body.find(b"\n", pos)
        end = n if nl < 0 else nl + 1
        line = body[pos : end if nl < 0 else nl]
        pos = end
        if line.endswith(b"\r"):
            line = line[:-1]
        if not line:
            if data_lines and not dispatch():
                return out
            continue
        if line.startswith(b"data:"):
            value = line[5:]
            data_lines.append(value[1:] if value.startswith(b" ") else value)
            data_end = end
        elif line.startswith(b":"):
            comment = line[1:].lstrip()
            if comment.startswith(METRICS_COMMENT):
                try:
                    metrics = orjson.loads(comment[len(METRICS_COMMENT) :])
                    if isinstance(metrics, dict):
                        out.server_metrics = metrics
                except orjson.JSONDecodeError:
                    pass  # a gateway's optional annotation; never fail a request on it
        elif line.startswith(b"event:"):
            event_type = line[6:].strip()
        elif line.startswith((b"{", b"[")):
            # JSON lines without SSE framing: each line is one event.
            if data_lines and not dispatch():
                return out
            data_lines.append(line)
            data_end = end
            if not dispatch():
                return out
        elif line.startswith((b"id:", b"retry:")):
            continue
        else:
            out.error_kind = "malformed_sse"
            out.error_detail = f"unexpected line {line[:80]!r}"
            return out
    if data_lines:
        dispatch()
    if out.error_kind is None and not out.done and out.finish_reason is None:
        out.error_kind = "stream_cut"
        out.error_detail = "stream ended without [DONE] or a finish_reason"
    return out


def _handle_event(out: ParsedStream, payload: bytes, event_type: bytes, at: tuple[int, int]) -> bool:
    """Apply one event; False stops parsing (an error was recorded)."""
    out.events += 1
    if payload.strip() == b"[DONE]":
        out.done = True
        return True
    try:
        obj = orjson.loads(payload)
    except orjson.JSONDecodeError:
        out.error_kind = "malformed_sse"
        out.error_detail = f"data is not JSON: {payload[:80]!r}"
        return False
    if not isinstance(obj, dict):
        out.error_kind = "malformed_sse"
        out.error_detail = f"data is not a JSON object: {payload[:80]!r}"
        return False
    error = obj.get("error")
    if error or event_type == b"error":
        out.error_kind = "stream_error"
        if isinstance(error, dict):
            out.error_detail = f"{error.get('type') or error.get('code') or 'error'}: {error.get('message')}"
        else:
            out.error_detail = str(error or obj)[:200]
        return False
    choices = obj.get("choices")
    if isinstance(choices, list):
        for choice in choices:
            if not isinstance(choice, dict):
                continue
            text = _choice_text(choice)
            if text:
                out.content_times_ns.append(at[0])
                out.content_reads.append(at[1])
                out.content_chars += len(text)
                text = None
            reason = choice.get("finish_reason")
            if reason:
                out.finish_reason = reason
    elif choices is not None:
        out.error_kind = "malformed_sse"
        out.error_detail = f"'choices' is not a list: {payload[:80]!r}"
        return False
    usage = obj.get("usage")
    if isinstance(usage, dict):
        if isinstance(usage.get("completion_tokens"), int):
            out.completion_tokens = usage["completion_tokens"]
        if isinstance(usage.get("prompt_tokens"), int):
            out.prompt_tokens = usage["prompt_tokens"]
    return True


def parse_completion(body: bytes) -> ParsedStream | None:
    """A non-streamed `chat.completion` JSON reply, or None when the body is not one."""
    try:
        obj = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(obj, dict) or not isinstance(obj.get("choices"), list):
        return None
    out = ParsedStream(done=True)
    for choice in obj["choices"]:
        if isinstance(choice, dict):
            text = _choice_text(choice)
            if text:
                out.content_chars += len(text)
            out.finish_reason = choice.get("finish_reason") or out.finish_reason
    usage = obj.get("usage")
    if isinstance(usage, dict):
        out.completion_tokens = usage.get("completion_tokens")
        out.prompt_tokens = usage.get("prompt_tokens")
    return out
