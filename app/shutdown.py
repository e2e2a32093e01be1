"""When the server begins shutting down: one event per event loop, set once uvicorn has been told to
exit (SIGTERM, SIGINT). uvicorn says so in its ``Server.should_exit``, found from the SIGTERM handler
it installed (a bound method), as sse-starlette finds it for the /agent streams; sse-starlette's
``AppStatus.should_exit`` is read too. One watcher task per loop turns that into an event that every
long-lived response (the passthrough's streams) can wait on, instead of each polling."""

from __future__ import annotations

import asyncio
import signal

from sse_starlette.sse import AppStatus

POLL_S = 0.25
_events: dict[asyncio.AbstractEventLoop, asyncio.Event] = {}


def stopping() -> asyncio.Event:
    loop = asyncio.get_running_loop()
    event = _events.get(loop)
    if event is None:
        event = _events[loop] = asyncio.Event()
        task = loop.create_task(_watch(event), name="vgate shutdown watcher")
        task.add_done_callback(lambda _: _events.pop(loop, None) if loop.is_closed() else None)
    return event


def _exiting() -> bool:
    if AppStatus.should_exit:
        return True
    server = getattr(signal.getsignal(signal.SIGTERM), "__self__", None)
    return bool(getattr(server, "should_exit", False))


async def _watch(event: asyncio.Event) -> None:
    while not _exiting():
        await asyncio.sleep(POLL_S)
    event.set()
