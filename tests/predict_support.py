"""Helpers for the repair and majority tests: a transport that records the gateway's chat calls to
the simulator and puts simulator faults (``x-sim-fault``) on the ones a rule picks, and the
simulator asked directly with a recorded call's body."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx
from httpx_aiohttp import AiohttpTransport

CHAT = "/v1/chat/completions"

FaultRule = Callable[[int, dict[str, Any]], str | None]  # (call number from 0, body) -> fault spec


class Recorder(httpx.AsyncBaseTransport):
    """The gateway's upstream transport (aiohttp's, as in production): every chat call's body is kept
    in ``bodies``, and ``fault(i, body)`` (when given) says what fault the simulator puts on call i."""

    def __init__(self, fault: FaultRule | str | None = None) -> None:
        self.inner = AiohttpTransport()
        self.rule: FaultRule | None = (lambda i, body: fault) if isinstance(fault, str) else fault
        self.bodies: list[dict[str, Any]] = []
        self.faults: list[str | None] = []
        self._closed = False

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.method == "POST" and request.url.path == CHAT:
            body = json.loads(request.content)
            fault = self.rule(len(self.bodies), body) if self.rule is not None else None
            if fault:
                request.headers["x-sim-fault"] = fault
            self.bodies.append(body)
            self.faults.append(fault)
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            await self.inner.aclose()


async def ask_sim(sim_url: str, body: dict[str, Any], fault: str | None = None) -> dict[str, Any]:
    """The simulator's non-stream answer to the same request as ``body`` (a recorded call)."""
    direct = {k: v for k, v in body.items() if k not in ("stream", "stream_options")}
    headers = {"x-sim-fault": fault} if fault else {}
    async with httpx.AsyncClient() as c:
        r = await c.post(f"{sim_url}{CHAT}", json=direct, headers=headers)
    r.raise_for_status()
    return r.json()


def last_user(body: dict[str, Any]) -> str:
    return next(m["content"] for m in reversed(body["messages"]) if m["role"] == "user")
