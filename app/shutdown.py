"""When the server begins shutting down: one event per event loop, set once uvicorn has been told to
exit (SIGTERM, SIGINT). uvicorn says so in its ``Server.should_exit``, found from the SIGTERM handler
it installed (a bound method), as sse-starlette finds it for the /agent streams; sse-starlette's
``AppStatus.should_exit`` is read too. One watcher task per loop turns that into an event that every
long-lived response (the passthrough's streams) can wait on, instead of each polling."""

from __future__ import annotations

import asyncio
import signal
import time
import weakref

from sse_starlette.sse import AppStatus

POLL_S = 0.25
_events: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Event] = weakref.WeakKeyDictionary()
_since: dict[int, float] = {}  # id(event) -> time.monotonic() when it was set


def stopping() -> asyncio.Event:
    """The event set when this process begins shutting down (one per event loop, watched from the first call)."""
    loop = asyncio.get_running_loop()
    event = _events.get(loop)
    if event is None:
        event = _events[loop] = asyncio.Event()
        loop.create_task(_watch(event), name="vgate shutdown watcher")
    return event


async def grace_left(grace_s: float) -> None:
    """Wait for the shutdown, then for what is left of ``grace_s`` since it began (a stream that
    opens during the shutdown does not get a grace of its own)."""
    event = stopping()
    await event.wait()
    await asyncio.sleep(max(0.0, grace_s - (time.monotonic() - _since.get(id(event), time.monotonic()))))


def _exiting() -> bool:
    if AppStatus.should_exit:
        return True
    server = getattr(signal.getsignal(signal.SIGTERM), "__self__", None)
    return bool(getattr(server, "should_exit", False))


async def _watch(event: asyncio.Event) -> None:
    while not _exiting():
        await asyncio.sleep(POLL_S)
    _since[id(event)] = time.monotonic()
    event.set()
