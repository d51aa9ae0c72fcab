"""One request's measurements: turn a RawReply into the record written to requests.jsonl.

Definitions (REFERENCE.md, printed in report.md):
  TTFT = send -> first event with non-empty content (a role-only first chunk does not count);
  E2E  = send -> last content event; ITL = every gap between content events (kept per request, pooled
  in the statistics); TPOT = (E2E - TTFT) / (output_tokens - 1); output tokens from `usage` when the
  server sends it, else the number of content events ("chunks").
"""

from __future__ import annotations

from bench.backend import RawReply
from bench.sse import ParsedStream, parse_completion, parse_stream

SERVER_KEYS = ("ttft_ms", "tokens_per_second", "cost_per_1k_usd", "completion_tokens")


def _ms(ns: int) -> float:
    return round(ns / 1e6, 4)


def measure(reply: RawReply, *, allow_buffered: bool = False) -> dict:
    """Fields of the record that depend on the reply (the scheduler adds ids and schedule times)."""
    rec: dict = {"status": reply.status, "ok": False, "error": reply.error_kind, "error_detail": reply.error_detail}
    rec["total_ms"] = _ms(reply.t_end_ns - reply.t_start_ns)
    rec["bytes"] = len(reply.body)
    if reply.retried:
        rec["retried"] = True
    if reply.error_kind is not None:
        return rec
    buffered_json = "json" in reply.content_type and "event-stream" not in reply.content_type
    parsed: ParsedStream | None = None
    if buffered_json:
        parsed = parse_completion(reply.body)
        if parsed is None:
            rec["error"] = "malformed_response"
            rec["error_detail"] = f"JSON reply is not a chat.completion: {reply.body[:120]!r}"
            return rec
        if not allow_buffered:
            rec["error"] = "not_streaming"
            rec["error_detail"] = (
                "the server answered with one JSON body instead of an SSE stream; "
                "pass --allow-buffered to measure it (TTFT = E2E)"
            )
            _server_fields(rec, None, reply.header_metrics)
            return rec
        t_last = reply.marks[-1][0] if reply.marks else reply.t_end_ns
        parsed.content_times_ns = [t_last] if parsed.content_chars else []
        parsed.content_reads = [0] if parsed.content_chars else []
    else:
        parsed = parse_stream(reply.body, reply.marks)
    _server_fields(rec, parsed.server_metrics, reply.header_metrics)
    rec["events"] = parsed.events
    if parsed.prompt_tokens is not None:
        rec["prompt_tokens"] = parsed.prompt_tokens
    if parsed.error_kind is not None:
        rec["error"] = parsed.error_kind
        rec["error_detail"] = parsed.error_detail
        return rec
    times = parsed.content_times_ns
    if not times:
        rec["error"] = "no_content"
        rec["error_detail"] = "the stream finished without any content"
        return rec
    t0 = reply.t_sent_ns or reply.t_start_ns
    if reply.t_sent_ns:
        rec["send_delay_ms"] = _ms(reply.t_sent_ns - reply.t_start_ns)
    chunks = len(times)
    if parsed.completion_tokens is not None and parsed.completion_tokens > 0:
        tokens, source = parsed.completion_tokens, "usage"
    else:
        tokens, source = chunks, "chunks"
    ttft = times[0] - t0
    e2e = times[-1] - t0
    rec.update(
        ok=True,
        error=None,
        error_detail=None,
        ttft_ms=_ms(ttft),
        e2e_ms=_ms(e2e),
        itl_ms=[_ms(b - a) for a, b in zip(times, times[1:], strict=False)],
        tpot_ms=_ms((e2e - ttft) / (tokens - 1)) if tokens > 1 else None,
        output_tokens=tokens,
        token_count_source=source,
        content_chunks=chunks,
        finish_reason=parsed.finish_reason,
        # The whole reply arrived in one network read: a buffering gateway (or a 1-token reply).
        single_read=buffered_json or parsed.content_reads[0] == parsed.content_reads[-1],
    )
    return rec


def _server_fields(rec: dict, stream_metrics: dict | None, header_metrics: dict | None) -> None:
    metrics = {**(header_metrics or {}), **(stream_metrics or {})}
    if not metrics:
        return
    for key in SERVER_KEYS:
        value = metrics.get(key)
        if isinstance(value, int | float):
            rec["server_" + key] = value
    extra = {k: v for k, v in metrics.items() if k not in SERVER_KEYS}
    if extra:
        rec["server_extra"] = extra
