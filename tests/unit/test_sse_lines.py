"""The LM client's SSE line splitter (bytes in, lines out) and the chunk reader over it."""

from __future__ import annotations

import json

import pytest
from structlog.testing import capture_logs

from app.errors import UpstreamError
from app.services.lm.stream import EndOfStream, next_chunk, sse_lines


async def _reads(*parts: bytes):
    for part in parts:
        yield part


async def _lines(*parts: bytes) -> list[bytes]:
    return [line async for line in sse_lines(_reads(*parts))]


async def test_lines_split_on_every_sse_line_ending_and_across_reads():
    assert await _lines(b"data: a\n\nda", b"ta: b\r\n", b"\r", b"data: c") == [
        b"data: a", b"", b"data: b", b"", b"data: c"]
    assert await _lines(b"x\ry\r\nz\n") == [b"x", b"y", b"z"]


async def test_a_crlf_split_between_reads_gives_at_most_an_extra_empty_line():
    assert [x for x in await _lines(b"data: a\r", b"\ndata: b\n") if x] == [b"data: a", b"data: b"]


async def test_nothing_or_empty_reads_give_no_lines():
    assert await _lines() == []
    assert await _lines(b"", b"") == []


async def test_a_multibyte_character_split_between_reads_decodes_whole():
    payload = json.dumps({"id": "x", "choices": [{"index": 0, "delta": {"content": "é€"}}]},
                         ensure_ascii=False).encode()
    raw = b"data: " + payload + b"\n\ndata: [DONE]\n\n"
    cut = raw.index("€".encode()) + 1  # inside the euro sign's three bytes
    lines = sse_lines(_reads(raw[:cut], raw[cut:]))
    chunk = await next_chunk(lines)
    assert chunk is not None and chunk.choices[0].delta.content == "é€"
    assert await next_chunk(lines) is None


async def test_comments_are_skipped_and_a_stream_without_done_ends_in_end_of_stream():
    lines = sse_lines(_reads(b": keep-alive\n\n", b'data: {"id": "a", "choices": []}\n\n'))
    chunk = await next_chunk(lines)
    assert chunk is not None and chunk.id == "a"
    with pytest.raises(EndOfStream):
        await next_chunk(lines)


async def test_a_malformed_chunk_is_an_upstream_error_and_its_text_goes_to_the_log():
    with capture_logs() as logs, pytest.raises(UpstreamError, match="unexpected shape"):
        await next_chunk(sse_lines(_reads(b"data: {not json\n\n")))
    assert [e["excerpt"] for e in logs if e["event"] == "upstream_malformed"] == ["{not json"]
