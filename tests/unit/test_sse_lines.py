"""The LM client's SSE reader: bytes in (split anywhere between reads), typed chunks out."""

from __future__ import annotations

import json

import pytest
from structlog.testing import capture_logs

from app.errors import UpstreamError
from app.services.lm.stream import ChunkReader, EndOfStream


async def _reads(*parts: bytes):
    for part in parts:
        yield part


async def _ids(*parts: bytes) -> list[str | None]:
    """The chunks' ids in order; "DONE" for [DONE], "END" for a stream that ended without it."""
    reader = ChunkReader(_reads(*parts))
    out: list[str | None] = []
    while True:
        try:
            chunk = await reader.next()
        except EndOfStream:
            return [*out, "END"]
        if chunk is None:
            return [*out, "DONE"]
        out.append(chunk.id)


def _data(id: str) -> bytes:
    return b'data: {"id": "' + id.encode() + b'", "choices": []}'


async def test_lines_split_on_every_sse_line_ending_and_across_reads():
    a, b, c = _data("a"), _data("b"), _data("c")
    assert await _ids(a + b"\n\n" + b[:2], b[2:] + b"\r\n", b"\r", c) == ["a", "b", "c", "END"]
    assert await _ids(a + b"\r" + b + b"\r\n" + c + b"\ndata: [DONE]\n") == ["a", "b", "c", "DONE"]


async def test_a_line_cut_anywhere_between_reads_reads_whole():
    raw = _data("first") + b"\n\n" + _data("second") + b"\r\n\r\ndata: [DONE]\n\n"
    for cut in range(1, len(raw)):
        assert await _ids(raw[:cut], raw[cut:]) == ["first", "second", "DONE"], cut
    assert await _ids(*(raw[i:i + 1] for i in range(len(raw)))) == ["first", "second", "DONE"]


async def test_nothing_or_empty_reads_end_the_stream():
    assert await _ids() == ["END"]
    assert await _ids(b"", b"") == ["END"]
    assert await _ids(b"\n\n", b": keep-alive\n") == ["END"]


async def test_nothing_is_read_past_done():
    assert await _ids(b"data: [DONE]\n\n" + _data("late") + b"\n\n") == ["DONE"]


async def test_a_multibyte_character_split_between_reads_decodes_whole():
    payload = json.dumps({"id": "x", "choices": [{"index": 0, "delta": {"content": "é€"}}]},
                         ensure_ascii=False).encode()
    raw = b"data: " + payload + b"\n\ndata: [DONE]\n\n"
    cut = raw.index("€".encode()) + 1  # inside the euro sign's three bytes
    reader = ChunkReader(_reads(raw[:cut], raw[cut:]))
    chunk = await reader.next()
    assert chunk is not None and chunk.choices[0].delta.content == "é€"
    assert await reader.next() is None


async def test_comments_are_skipped_and_a_stream_without_done_ends_in_end_of_stream():
    reader = ChunkReader(_reads(b": keep-alive\n\n", b"event: x\nid: 7\n", _data("a") + b"\n\n"))
    chunk = await reader.next()
    assert chunk is not None and chunk.id == "a"
    for _ in range(2):  # and stays ended
        with pytest.raises(EndOfStream):
            await reader.next()


async def test_a_malformed_chunk_is_an_upstream_error_and_its_text_goes_to_the_log():
    with capture_logs() as logs, pytest.raises(UpstreamError, match="unexpected shape"):
        await ChunkReader(_reads(b"data: {not json\n\n")).next()
    assert [e["excerpt"] for e in logs if e["event"] == "upstream_malformed"] == ["{not json"]


async def test_closing_the_reader_closes_the_reads_under_it():
    closed = []

    async def reads():
        try:
            yield _data("a") + b"\n\n"
            yield _data("b") + b"\n\n"
        finally:
            closed.append(True)

    reader = ChunkReader(reads())
    assert (await reader.next()).id == "a"
    await reader.aclose()
    assert closed == [True]
