"""Server-sent events, parsed as the HTML standard says (section 9.2.6), from lines.

Small enough to own rather than depend on: fields ``event``, ``data`` (several lines join with
``\\n``), ``id`` (kept across events, ignored when it holds NUL), ``retry``; comment lines (``:``,
the gateway's heartbeats) skipped; one space after the colon dropped; an event is dispatched at a
blank line, and one cut off by the end of the stream is discarded. Lines come from httpx's
``iter_lines``, which splits on ``\\n``, ``\\r\\n`` and ``\\r``.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Iterator
from dataclasses import dataclass


@dataclass(frozen=True)
class ServerSentEvent:
    """One server-sent event: its type, data, the last event id in effect, and the retry hint."""
    event: str = "message"
    data: str = ""
    id: str | None = None  # the last event id in effect when the event was dispatched
    retry: int | None = None


class SSEDecoder:
    """An incremental text/event-stream parser: feed it lines, get events as they complete."""
    def __init__(self) -> None:
        self._event = ""
        self._data: list[str] = []
        self._last_id: str | None = None
        self._retry: int | None = None

    def feed(self, line: str) -> ServerSentEvent | None:
        """One line without its terminator; an event when the line ends one."""
        if not line:
            return self._dispatch()
        if line.startswith(":"):
            return None
        field, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if field == "event":
            self._event = value
        elif field == "data":
            self._data.append(value)
        elif field == "id":
            if "\0" not in value:
                self._last_id = value
        elif field == "retry":
            if value.isascii() and value.isdigit():
                self._retry = int(value)
        return None

    def _dispatch(self) -> ServerSentEvent | None:
        data, event = self._data, self._event
        self._data, self._event = [], ""
        if not data:
            return None
        return ServerSentEvent(event=event or "message", data="\n".join(data), id=self._last_id, retry=self._retry)


def iter_sse(lines: Iterable[str]) -> Iterator[ServerSentEvent]:
    """The server-sent events in an iterable of lines."""
    decoder = SSEDecoder()
    for line in lines:
        event = decoder.feed(line.rstrip("\r\n"))
        if event is not None:
            yield event


async def aiter_sse(lines: AsyncIterable[str]) -> AsyncIterator[ServerSentEvent]:
    """The server-sent events in an async iterable of lines."""
    decoder = SSEDecoder()
    async for line in lines:
        event = decoder.feed(line.rstrip("\r\n"))
        if event is not None:
            yield event


class Resumption:
    """Where a stream resumed with ``Last-Event-ID`` stands, for its sync and async readers alike: the
    last id ``seen`` (an event at or before it is a replay) and the failures in a row since a new event."""

    def __init__(self, seen: int = 0, *, max_failures: int, delay: Callable[[int], float]) -> None:
        self.seen = seen
        self.failures = 0
        self.max_failures = max_failures
        self._delay = delay

    def is_new(self, event_id: int | None) -> bool:
        """Whether to pass an event on (one without an id always is); a new one resets the failures."""
        if event_id is None:
            return True
        if event_id <= self.seen:
            return False
        self.seen, self.failures = event_id, 0
        return True

    def pause(self, reason: Exception, *, resumable: bool = True) -> float:
        """Seconds to wait before resuming after ``reason`` (a drop, or an early end); ``reason`` is
        raised when the stream cannot be resumed, or has failed too many times in a row."""
        self.failures += 1
        if not resumable or self.failures > self.max_failures:
            raise reason
        return self._delay(self.failures)
