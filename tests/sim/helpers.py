"""Helpers for the simulator's tests: an in-process ASGI client, SSE parsing, a live uvicorn server."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import httpx
import uvicorn

from app.sim.server import SimApp, SimConfig, create_sim_app

USER = [{"role": "user", "content": "What is the capital of France?"}]


@asynccontextmanager
async def sim_client(config: SimConfig | None = None) -> AsyncIterator[httpx.AsyncClient]:
    app = create_sim_app(config or SimConfig())
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://sim") as client:
        client.app = app  # type: ignore[attr-defined]
        yield client
    await app.engine.close()


def events(text: str) -> list[Any]:
    """The `data:` payloads of an SSE body, JSON-decoded except `[DONE]`; checks the framing."""
    assert text.endswith("\n\n"), "every event ends with a blank line"
    out = []
    for block in text.split("\n\n")[:-1]:
        assert block.startswith("data: "), block
        payload = block[len("data: "):]
        out.append(payload if payload == "[DONE]" else json.loads(payload))
    return out


def named_events(text: str) -> list[tuple[str, dict[str, Any]]]:
    """The events of a Responses API stream as (event name, data); checks the framing: every event has an
    `event:` line naming its data's `type`, then one `data:` line."""
    assert text.endswith("\n\n"), "every event ends with a blank line"
    out = []
    for block in text.split("\n\n")[:-1]:
        name, data = block.split("\n")
        assert name.startswith("event: ") and data.startswith("data: "), block
        payload = json.loads(data[len("data: "):])
        assert payload["type"] == name[len("event: "):]
        out.append((payload["type"], payload))
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def live_sim(config: SimConfig | None = None) -> Iterator[tuple[str, SimApp]]:
    """The simulator under uvicorn (httptools) in a background thread, on a free port."""
    app = create_sim_app(config or SimConfig())
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, http="httptools", loop="asyncio",
                                           lifespan="on", log_level="warning", access_log=False,
                                           timeout_graceful_shutdown=3))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "simulator did not start"
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}", app
    finally:
        server.should_exit = True
        thread.join(10)


async def stats(url: str) -> dict[str, Any]:
    async with httpx.AsyncClient() as c:
        return (await c.get(f"{url}/sim/stats")).json()


async def reset(url: str) -> None:
    async with httpx.AsyncClient() as c:
        (await c.post(f"{url}/sim/reset")).raise_for_status()


async def wait_stats(url: str, check, timeout: float = 5.0) -> dict[str, Any]:
    """Poll /sim/stats until `check(stats)` holds; return the stats (fails on timeout)."""
    import asyncio

    deadline = time.monotonic() + timeout
    while True:
        current = await stats(url)
        if check(current):
            return current
        assert time.monotonic() < deadline, f"condition never held; last stats: {current}"
        await asyncio.sleep(0.02)
