"""The SSE parser, by the standard's rules: fields, multi-line data, comments, ids, line endings."""

from __future__ import annotations

import httpx
from vgate.sse import ServerSentEvent, iter_sse


def parse(text: str) -> list[ServerSentEvent]:
    lines = list(httpx.Response(200, content=text.encode()).iter_lines())
    return list(iter_sse(lines))


def test_an_event_has_its_name_data_and_id():
    assert parse('id: 1\nevent: run\ndata: {"a": 1}\n\n') == [ServerSentEvent("run", '{"a": 1}', "1")]


def test_data_lines_join_with_newlines_and_one_leading_space_is_dropped():
    events = parse("data: first\ndata:second\ndata:  third\n\n")
    assert events[0].data == "first\nsecond\n third"
    assert events[0].event == "message"


def test_comments_are_skipped_and_blank_lines_without_data_dispatch_nothing():
    assert parse(": ping\n\n: ping\n\nevent: x\ndata: y\n\n") == [ServerSentEvent("x", "y", None)]


def test_crlf_and_cr_line_endings():
    assert [e.data for e in parse("event: a\r\ndata: 1\r\n\r\nevent: b\rdata: 2\r\r")] == ["1", "2"]


def test_the_last_id_stays_in_effect_and_an_id_with_nul_is_ignored():
    events = parse("id: 7\ndata: a\n\ndata: b\n\nid: 8\0\ndata: c\n\n")
    assert [e.id for e in events] == ["7", "7", "7"]


def test_an_event_cut_off_by_the_end_of_the_stream_is_discarded():
    assert [e.data for e in parse("data: whole\n\ndata: cut")] == ["whole"]


def test_a_field_without_a_colon_and_unknown_fields():
    events = parse("data\nfoo: bar\nretry: 3000\n\n")
    assert events == [ServerSentEvent("message", "", None, 3000)]
