"""bench.measure: one request's TTFT/ITL/TPOT/E2E and tokens, from exact scripted arrival times."""

import orjson
import pytest

from bench.backend import RawReply
from bench.measure import measure

MS = 1_000_000


def sse(delta, finish=None, usage=None):
    obj = {"choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
    if usage:
        obj = {"choices": [], "usage": usage}
    return b"data: " + orjson.dumps(obj) + b"\n\n"


def reply(parts, t_start=0, content_type="text/event-stream", t_end=None):
    body, marks = b"", []
    for part, t_ms in parts:
        body += part
        marks.append((int(t_ms * MS), len(body)))
    return RawReply(
        t_start_ns=t_start, t_end_ns=t_end or marks[-1][0], status=200, content_type=content_type, body=body, marks=marks
    )


def test_metrics_from_scripted_times_with_role_chunk_and_usage():
    r = reply(
        [
            (sse({"role": "assistant", "content": ""}), 2),  # role-only: not the first token
            (sse({"content": "one two"}), 50),  # a chunk with two tokens
            (sse({"content": " three"}), 60),
            (sse({"content": " four five"}), 80),
            (sse({}, finish="length") + sse(None, usage={"prompt_tokens": 9, "completion_tokens": 5}), 81),
            (b"data: [DONE]\n\n", 81),
        ]
    )
    rec = measure(r)
    assert rec["ok"] and rec["error"] is None
    assert rec["ttft_ms"] == 50.0
    assert rec["e2e_ms"] == 80.0
    assert rec["itl_ms"] == [10.0, 20.0]
    assert rec["output_tokens"] == 5 and rec["token_count_source"] == "usage"
    assert rec["tpot_ms"] == pytest.approx((80 - 50) / (5 - 1))
    assert rec["prompt_tokens"] == 9
    assert rec["content_chunks"] == 3
    assert rec["single_read"] is False


def test_times_count_from_the_socket_write_and_the_send_delay_is_reported():
    r = reply([(sse({"content": "a"}), 50), (sse({"content": "b"}), 60), (b"data: [DONE]\n\n", 61)])
    r.t_sent_ns = 4 * MS  # the HTTP library wrote the request 4 ms after the client started it
    rec = measure(r)
    assert (rec["ttft_ms"], rec["e2e_ms"], rec["send_delay_ms"]) == (46.0, 56.0, 4.0)
    unknown = measure(reply([(sse({"content": "a"}), 50), (sse({"content": "b"}), 60), (b"data: [DONE]\n\n", 61)]))
    assert unknown["ttft_ms"] == 50.0 and "send_delay_ms" not in unknown  # e.g. --http2: from the start


def test_chunk_counting_without_usage():
    r = reply([(sse({"content": "a"}), 30), (sse({"content": "b"}), 40), (sse({"content": "c"}), 55), (b"data: [DONE]\n\n", 56)])
    rec = measure(r)
    assert rec["output_tokens"] == 3 and rec["token_count_source"] == "chunks"
    assert rec["tpot_ms"] == pytest.approx(12.5)
    assert rec["itl_ms"] == [10.0, 15.0]


def test_single_token_reply_has_no_tpot():
    rec = measure(reply([(sse({"content": "a"}, finish="stop"), 30)]))
    assert rec["ok"] and rec["tpot_ms"] is None and rec["itl_ms"] == []


def test_whole_reply_in_one_read_is_flagged():
    body = sse({"content": "a"}) + sse({"content": "b"}) + sse({"content": "c"}) + b"data: [DONE]\n\n"
    rec = measure(reply([(body, 100)]))
    assert rec["ok"] and rec["single_read"] is True
    assert rec["ttft_ms"] == rec["e2e_ms"] == 100.0
    assert rec["itl_ms"] == [0.0, 0.0]


def test_server_metrics_from_comment_and_headers():
    r = reply(
        [
            (sse({"content": "a"}, finish="stop"), 30),
            (b': metrics {"ttft_ms": 20.5, "tokens_per_second": 99.0, "cost_per_1k_usd": 0.002, "completion_tokens": 1, "x": 1}\n\n', 31),
            (b"data: [DONE]\n\n", 31),
        ]
    )
    rec = measure(r)
    assert rec["server_ttft_ms"] == 20.5 and rec["server_cost_per_1k_usd"] == 0.002
    assert rec["server_completion_tokens"] == 1 and rec["server_extra"] == {"x": 1}


def test_non_streamed_json_reply_is_an_error_unless_allowed():
    body = orjson.dumps(
        {"choices": [{"message": {"content": "hello there"}, "finish_reason": "stop"}], "usage": {"completion_tokens": 2}}
    )
    r = RawReply(t_start_ns=0, t_end_ns=90 * MS, status=200, content_type="application/json", body=body,
                 marks=[(90 * MS, len(body))], header_metrics={"ttft_ms": 70.0})
    rec = measure(r)
    assert rec["ok"] is False and rec["error"] == "not_streaming" and "--allow-buffered" in rec["error_detail"]
    assert rec["server_ttft_ms"] == 70.0
    rec = measure(r, allow_buffered=True)
    assert rec["ok"] and rec["ttft_ms"] == rec["e2e_ms"] == 90.0 and rec["output_tokens"] == 2 and rec["single_read"]


def test_empty_stream_is_no_content():
    rec = measure(reply([(sse({"role": "assistant"}) + sse({}, finish="stop") + b"data: [DONE]\n\n", 5)]))
    assert rec["error"] == "no_content" and not rec["ok"]


def test_transport_error_passes_through():
    r = RawReply(t_start_ns=0, t_end_ns=5, error_kind="connect", error_detail="refused")
    rec = measure(r)
    assert rec == {**rec, "ok": False, "error": "connect", "error_detail": "refused"}
    assert "ttft_ms" not in rec
