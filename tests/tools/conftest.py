"""Shared fixtures: settings, metrics, and a local HTTP server (SearxNG's JSON API and a few
endpoints for configured HTTP tools) on a free port of 127.0.0.1."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from aiohttp import web

from app.metrics import Metrics
from app.settings import Settings


def make_settings(**overrides: Any) -> Settings:
    # init arguments win over VGATE_* variables of the environment the tests run in
    return Settings(**{"web_search_url": None, "http_tools": [], **overrides})


@pytest.fixture
def metrics() -> Metrics:
    return Metrics()


def tool_calls(metrics: Metrics, tool: str, status: str) -> float:
    return metrics.registry.get_sample_value("vgate_tool_calls_total", {"tool": tool, "status": status}) or 0.0


@pytest.fixture
async def http_client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as client:
        yield client


class LocalServer:
    def __init__(self, url: str) -> None:
        self.url = url
        self.requests: list[dict[str, Any]] = []


SERVER = web.AppKey("server", LocalServer)


async def _search(request: web.Request) -> web.Response:
    server = request.app[SERVER]
    server.requests.append({"path": request.path, "query": dict(request.query)})
    if request.query.get("format") != "json":
        return web.Response(status=403, text="Forbidden")
    q = request.query.get("q", "")
    if q == "boom":
        return web.Response(status=500, text="internal error")
    results = [
        {"title": f"{q} result {i}", "url": f"https://example.org/{i}", "content": f"about {q} #{i}",
         "engine": "test", "score": 1.0 / (i + 1)}
        for i in range(12)
    ]
    return web.json_response({"query": q, "number_of_results": len(results), "results": results,
                              "answers": [], "infoboxes": [], "suggestions": []})


async def _echo(request: web.Request) -> web.Response:
    body = await request.json() if request.can_read_body else None
    return web.json_response({
        "method": request.method,
        "raw_path": request.raw_path,
        "path": request.path,
        "query": {k: request.query.getall(k) for k in request.query},
        "headers": {k.lower(): v for k, v in request.headers.items()},
        "body": body,
    })


async def _text(request: web.Request) -> web.Response:
    size = int(request.query.get("size", "10"))
    return web.Response(text="x" * size, content_type="text/plain")


async def _status(request: web.Request) -> web.Response:
    return web.Response(status=int(request.match_info["code"]), text=request.query.get("say", ""))


async def _slow(request: web.Request) -> web.Response:
    await asyncio.sleep(float(request.query.get("s", "5")))
    return web.json_response({"slow": True})


@pytest.fixture
async def local_server() -> AsyncIterator[LocalServer]:
    app = web.Application()
    app.router.add_get("/search", _search)
    app.router.add_route("*", "/echo/{tail:.*}", _echo)
    app.router.add_get("/text", _text)
    app.router.add_get("/status/{code}", _status)
    app.router.add_get("/slow", _slow)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    server = LocalServer(f"http://127.0.0.1:{sock.getsockname()[1]}")
    app[SERVER] = server
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    await web.SockSite(runner, sock).start()
    try:
        yield server
    finally:
        await runner.cleanup()
