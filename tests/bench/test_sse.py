"""bench.sse: events mapped to the arrival time of the read that completed them."""

import orjson
import pytest

from bench.sse import parse_completion, parse_stream


def chunk(content=None, role=None, finish=None, usage=None, choices=True):
    delta = {}
    if role:
        delta["role"] = role
    if content is not None:
        delta["content"] = content
    obj = {"object": "chat.completion.chunk"}
    obj["choices"] = [{"index": 0, "delta": delta, "finish_reason": finish}] if choices else []
    if usage:
        obj["usage"] = usage
    return b"data: " + orjson.dumps(obj) + b"\n\n"


def body_with_marks(parts_and_times):
    """[(bytes, t_ns)] -> (body, marks): one network read per part."""
    body, marks = b"", []
    for part, t in parts_and_times:
        body += part
        marks.append((t, len(body)))
    return body, marks


def test_role_only_first_chunk_is_not_content():
    body, marks = body_with_marks(
        [
            (chunk(role="assistant", content=""), 1_000),
            (chunk("Hel"), 50_000),
            (chunk("lo"), 60_000),
            (chunk(finish="stop"), 61_000),
            (b"data: [DONE]\n\n", 62_000),
        ]
    )
    out = parse_stream(body, marks)
    assert out.error_kind is None
    assert out.content_times_ns == [50_000, 60_000]
    assert out.content_chars == 5
    assert out.done and out.finish_reason == "stop"


def test_events_in_one_read_share_its_time():
    body, marks = body_with_marks([(chunk("a") + chunk("b"), 10), (chunk("c") + b"data: [DONE]\n\n", 30)])
    out = parse_stream(body, marks)
    assert out.content_times_ns == [10, 10, 30]
    assert out.content_reads == [0, 0, 1]


def test_event_split_across_reads_gets_the_later_time():
    whole = chunk("xyz")
    body, marks = body_with_marks([(whole[:10], 5), (whole[10:], 9), (b"data: [DONE]\n\n", 12)])
    assert parse_stream(body, marks).content_times_ns == [9]


def test_usage_and_gateway_metrics_comment():
    body, marks = body_with_marks(
        [
            (chunk("a b c"), 1),
            (chunk(finish="length"), 2),
            (chunk(usage={"prompt_tokens": 7, "completion_tokens": 3}, choices=False), 3),
            (b': metrics {"ttft_ms": 12.5, "tokens_per_second": 40, "cost_per_1k_usd": 0.01, "completion_tokens": 3}\n\n', 4),
            (b"data: [DONE]\n\n", 5),
        ]
    )
    out = parse_stream(body, marks)
    assert (out.completion_tokens, out.prompt_tokens) == (3, 7)
    assert out.server_metrics == {"ttft_ms": 12.5, "tokens_per_second": 40, "cost_per_1k_usd": 0.01, "completion_tokens": 3}


def test_crlf_lines_and_json_lines_without_sse_framing():
    crlf = chunk("a").replace(b"\n", b"\r\n") + b"data: [DONE]\r\n\r\n"
    assert parse_stream(crlf, [(1, len(crlf))]).content_times_ns == [1]
    lines = orjson.dumps({"choices": [{"delta": {"content": "x"}, "finish_reason": None}]}) + b"\n"
    lines += orjson.dumps({"choices": [{"delta": {}, "finish_reason": "stop"}]}) + b"\n"
    out = parse_stream(lines, [(4, len(lines))])
    assert out.content_times_ns == [4] and out.finish_reason == "stop" and out.error_kind is None


@pytest.mark.parametrize(
    ("body", "kind"),
    [
        (chunk("a") + b"data: {not json\n\n", "malformed_sse"),
        (chunk("a") + b"data: [1, 2]\n\n", "malformed_sse"),
        (chunk("a") + b"garbage line\n\n", "malformed_sse"),
        (chunk("a") + b'data: {"choices": "x"}\n\n', "malformed_sse"),
        (chunk("a") + b'data: {"error": {"message": "boom", "type": "server_error", "code": 500}}\n\n', "stream_error"),
        (chunk("a") + b'event: error\ndata: {"message": "boom"}\n\n', "stream_error"),
        (chunk("a") + chunk("b"), "stream_cut"),
    ],
)
def test_faults_in_the_stream(body, kind):
    out = parse_stream(body, [(1, len(body))])
    assert out.error_kind == kind
    assert out.error_detail


def test_stream_error_detail_names_the_gateway_error():
    body = chunk("a") + b'data: {"error": {"message": "upstream timed out", "type": "timeout", "code": 504}}\n\n'
    assert "upstream timed out" in parse_stream(body, [(1, len(body))]).error_detail


def test_finish_reason_without_done_is_complete():
    body = chunk("a") + chunk(finish="stop")
    assert parse_stream(body, [(1, len(body))]).error_kind is None


def test_multiline_data_event_is_joined():
    body = b'data: {"choices": [{"delta":\ndata: {"content": "hi"}, "finish_reason": "stop"}]}\n\n'
    out = parse_stream(body, [(3, len(body))])
    assert out.content_chars == 2 and out.error_kind is None


def test_parse_completion():
    body = orjson.dumps(
        {"choices": [{"message": {"role": "assistant", "content": "hello"}, "finish_reason": "stop"}],
         "usage": {"prompt_tokens": 3, "completion_tokens": 2}}
    )
    out = parse_completion(body)
    assert out.content_chars == 5 and out.completion_tokens == 2
    assert parse_completion(b"not json") is None
    assert parse_completion(b'{"x": 1}') is None


# ----------------------------------------------- bare JSON lines (SageMaker LMI's stream) and read boundaries


def jline(content=None, finish=None, usage=None):
    obj = {"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {}, "finish_reason": finish}]}
    if content is not None:
        obj["choices"][0]["delta"]["content"] = content
    if usage:
        obj = {"object": "chat.completion.chunk", "choices": [], "usage": usage}
    return orjson.dumps(obj) + b"\n"


def test_json_lines_each_read_ending_exactly_at_a_line_end():
    lines = [jline("a"), jline("bb"), jline("ccc"), jline(finish="stop"),
             jline(usage={"prompt_tokens": 2, "completion_tokens": 3})]
    body, marks = body_with_marks(list(zip(lines, [100, 200, 300, 400, 500], strict=True)))
    assert [m[1] for m in marks] == [sum(map(len, lines[: i + 1])) for i in range(5)]  # boundaries at line ends
    out = parse_stream(body, marks)
    assert out.error_kind is None and out.finish_reason == "stop" and out.completion_tokens == 3
    assert out.content_times_ns == [100, 200, 300]
    assert out.content_reads == [0, 1, 2]
    assert out.content_chars == 6 and out.events == 5


def test_json_line_whose_newline_arrives_in_the_next_read_takes_that_reads_time():
    # A bare JSON line is complete only with its newline: a read that stops just before it does not
    # finish the event.
    a, b = jline("a"), jline("b")
    body, marks = body_with_marks([(a[:-1], 10), (a[-1:] + b, 20), (jline(finish="stop"), 30)])
    out = parse_stream(body, marks)
    assert out.content_times_ns == [20, 20] and out.content_reads == [1, 1]


def test_json_lines_two_per_read_then_a_boundary_at_the_second_line_end():
    a, b, c, d = jline("a"), jline("b"), jline("c"), jline(finish="stop")
    body, marks = body_with_marks([(a + b, 5), (c, 7), (d, 9)])
    out = parse_stream(body, marks)
    assert out.content_times_ns == [5, 5, 7] and out.content_reads == [0, 0, 1]


def test_json_line_split_mid_line_and_a_last_line_without_newline():
    a, b = jline("a"), jline("b", finish="stop")
    body, marks = body_with_marks([(a[:7], 1), (a[7:], 2), (b[:-1], 3)])  # the stream ends without "\n"
    out = parse_stream(body, marks)
    assert out.content_times_ns == [2, 3] and out.content_reads == [1, 2]
    assert out.finish_reason == "stop" and out.error_kind is None


def test_sse_event_whose_blank_line_arrives_later_keeps_the_time_of_its_data_line():
    # An SSE event's time is when its data line completed, not when the separating blank line came.
    first = chunk("x")  # b"data: {...}\n\n"
    body, marks = body_with_marks([(first[:-1], 40), (first[-1:], 90), (chunk(finish="stop"), 95)])
    out = parse_stream(body, marks)
    assert out.content_times_ns == [40] and out.content_reads == [0]


def test_stamps_follow_marks_that_repeat_a_byte_count():
    # Two marks with the same byte count (a read that returned nothing new): the first one that
    # covers the event is its time.
    a, b = jline("a"), jline("b")
    body = a + b + jline(finish="stop")
    marks = [(10, len(a)), (15, len(a)), (20, len(body))]
    out = parse_stream(body, marks)
    assert out.content_times_ns == [10, 20] and out.content_reads == [0, 2]


# ------------------------------------------------------------------ what mutation testing found untested


def one(obj) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


@pytest.mark.parametrize(
    ("delta", "chars"),
    [({"content": "ab"}, 2), ({"reasoning_content": "think"}, 5), ({"reasoning": "hmm"}, 3),
     ({"content": "", "reasoning_content": "xyz"}, 3), ({"content": 12}, 2), ({}, 0)],
)
def test_content_and_reasoning_count_as_output(delta, chars):
    body = one({"choices": [{"delta": delta, "finish_reason": "stop"}]})
    out = parse_stream(body, [(5, len(body))])
    assert out.content_chars == chars and out.content_times_ns == ([5] if chars else [])


def test_completion_style_text_choices_and_non_dict_choices():
    body = one({"choices": [{"text": "abc", "finish_reason": None}, "junk", {"text": "", "finish_reason": None},
                            {"text": 5, "finish_reason": "length"}]})
    out = parse_stream(body, [(1, len(body))])
    assert out.content_chars == 3 and out.finish_reason == "length" and out.content_times_ns == [1]


def test_sse_fields_id_retry_event_and_data_without_space():
    body = (b"id: 1\nretry: 100\ndata:" + orjson.dumps({"choices": [{"delta": {"content": "a"}}]}) + b"\n\n"
            + b"event: message\ndata: " + orjson.dumps({"choices": [{"delta": {"content": "b"}}]}) + b"\n\n"
            + b":keepalive\n" + one({"choices": [{"delta": {}, "finish_reason": "stop"}]}))
    out = parse_stream(body, [(1, len(body))])
    assert out.error_kind is None and out.content_chars == 2 and out.events == 3 and out.finish_reason == "stop"


def test_an_error_event_after_a_normal_event_uses_its_own_type():
    body = (b"event: message\n" + one({"choices": [{"delta": {"content": "a"}}]})
            + b'event: error\ndata: {"detail": "overloaded"}\n\n')
    out = parse_stream(body, [(1, len(body))])
    assert out.error_kind == "stream_error" and out.error_detail == "{'detail': 'overloaded'}"
    # The event type does not leak into the next event.
    body = b"event: error\n" + b": comment\n" + one({"choices": [{"delta": {"content": "a"}, "finish_reason": "stop"}]})
    assert parse_stream(body, [(1, len(body))]).error_kind == "stream_error"
    body = (b"event: ping\n" + one({"choices": [{"delta": {"content": "a"}}]})
            + one({"choices": [{"delta": {}, "finish_reason": "stop"}]}))
    assert parse_stream(body, [(1, len(body))]).error_kind is None


@pytest.mark.parametrize(
    ("error", "detail"),
    [({"type": "t", "code": "c", "message": "m"}, "t: m"), ({"code": "c", "message": "m"}, "c: m"),
     ({"message": "m"}, "error: m"), ("plain", "plain")],
)
def test_stream_error_details(error, detail):
    body = chunk("a") + one({"error": error})
    out = parse_stream(body, [(1, len(body))])
    assert out.error_kind == "stream_error" and out.error_detail == detail
    assert out.content_chars == 1  # what came before the error still counts


def test_error_details_are_cut_at_80_and_200_characters():
    long_line = b"x" * 300
    out = parse_stream(chunk("a") + long_line + b"\n", [(1, 10)])
    assert out.error_detail == f"unexpected line {long_line[:80]!r}"
    out = parse_stream(b"data: {" + b"y" * 300 + b"\n\n", [(1, 10)])
    assert out.error_detail == f"data is not JSON: {(b'{' + b'y' * 300)[:80]!r}"
    body = one([1] * 100)
    assert parse_stream(body, [(1, len(body))]).error_detail == f"data is not a JSON object: {body[6:86]!r}"
    body = one({"choices": "z" * 100})
    assert parse_stream(body, [(1, len(body))]).error_detail == f"'choices' is not a list: {body[6:86]!r}"
    body = one({"error": "e" * 300})
    assert parse_stream(body, [(1, len(body))]).error_detail == "e" * 200


def test_parsing_stops_at_the_first_error():
    for bad in (b"data: {nope\n\n", b"data: [1]\n\n", b'data: {"choices": 1}\n\n', b'data: {"error": "x"}\n\n',
                b"garbage\n"):
        body = bad + chunk("late") + b"data: [DONE]\n\n"
        out = parse_stream(body, [(1, len(body))])
        assert out.content_chars == 0 and not out.done and out.events <= 1, bad
    # A bare JSON line after an error is not parsed either.
    body = b"data: {nope\n\n" + jline("late")
    assert parse_stream(body, [(1, len(body))]).content_chars == 0


def test_done_then_more_events_and_the_stream_cut_detail():
    body = chunk("a") + b"data: [DONE]\n\n" + chunk("b")
    out = parse_stream(body, [(1, len(body))])
    assert out.done and out.content_chars == 2 and out.error_kind is None
    cut = parse_stream(chunk("a"), [(1, len(chunk("a")))])
    assert cut.error_detail == "stream ended without [DONE] or a finish_reason"


def test_empty_marks_and_offsets_beyond_the_last_mark():
    body = jline("a") + jline(finish="stop")
    out = parse_stream(body, [])
    assert out.content_times_ns == [0] and out.content_reads == [0]
    out = parse_stream(body, [(3, 4), (9, 5)])  # marks that stop short: the last one's time
    assert out.content_times_ns == [9] and out.content_reads == [1]


def test_parse_completion_fields():
    body = orjson.dumps({"choices": [
        {"message": {"content": "hello"}, "finish_reason": None},
        {"message": {"content": "you"}, "finish_reason": "stop"},
        {"message": {"content": "!"}, "finish_reason": None}, "junk"],
        "usage": {"prompt_tokens": 3, "completion_tokens": 2}})
    out = parse_completion(body)
    assert out.done is True and out.content_chars == 9 and out.finish_reason == "stop"
    assert (out.prompt_tokens, out.completion_tokens) == (3, 2)
    assert out.content_times_ns == [] and out.error_kind is None
    assert parse_completion(b"[1]") is None


def test_second_round_of_survivors():
    done = one({"choices": [{"delta": {}, "finish_reason": "stop"}]})
    # A stream that starts with a blank line (a keep-alive) parses the same.
    body = b"\n" + chunk("a") + done
    out = parse_stream(body, [(1, len(body))])
    assert out.error_kind is None and out.content_chars == 1 and out.events == 2
    # Field names without the optional space: ":metrics {...}" and "event:error".
    body = chunk("a") + b':metrics {"ttft_ms": 3}\n' + done
    assert parse_stream(body, [(1, len(body))]).server_metrics == {"ttft_ms": 3}
    body = b'event:error\ndata: {"message": "boom"}\n\n'
    assert parse_stream(body, [(1, len(body))]).error_kind == "stream_error"
    # A bare JSON line that is an array is "not a JSON object", not an unexpected line.
    out = parse_stream(b"[1, 2]\n", [(1, 7)])
    assert out.error_detail == "data is not a JSON object: b'[1, 2]'"
    # SSE data lines then a bare JSON line with no blank line between: both events count.
    body = b"data: " + orjson.dumps({"choices": [{"delta": {"content": "a"}}]}) + b"\n" + jline("b", finish="stop")
    out = parse_stream(body, [(1, len(body))])
    assert out.content_chars == 2 and out.events == 2 and out.error_kind is None
