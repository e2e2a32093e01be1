"""Upstreams that are not quite vLLM: they compress, frame SSE with CRLF, do not speak HTTP, or cannot
list their models. The gateway still answers each call well (found by review; each test fails on
the code before its fix)."""

from __future__ import annotations

import asyncio
import gzip
import json
import socket
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
from aiohttp import web

from tests.support import live_gateway

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}


def _chunk(content: str | None = None, finish: str | None = None) -> dict:
    delta = {"content": content} if content is not None else {}
    return {"id": "c", "object": "chat.completion.chunk", "model": "m",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}


@asynccontextmanager
async def odd_upstream(*, models: bool = True, gzip_when_asked: bool = False,
                       crlf: bool = False) -> AsyncIterator[tuple[str, dict]]:
    """An OpenAI-ish server of model "m" (aiohttp, in this loop) with the quirks asked for."""
    seen: dict = {"encodings": [], "posts": 0}

    async def list_models(_req: web.Request) -> web.Response:
        if not models:
            return web.Response(status=500)
        return web.json_response({"object": "list", "data": [{"id": "m", "object": "model"}]})

    async def chat(req: web.Request) -> web.StreamResponse:
        seen["posts"] += 1
        seen["encodings"].append(req.headers.get("accept-encoding"))
        body = await req.json()
        if body.get("stream"):
            resp = web.StreamResponse(headers={"content-type": "text/event-stream"})
            await resp.prepare(req)
            sep = b"\r\n\r\n" if crlf else b"\n\n"
            for ev in (_chunk("he"), _chunk("llo"), _chunk(None, "stop")):
                await resp.write(b"data: " + json.dumps(ev).encode() + sep)
                await asyncio.sleep(0.01)
            await resp.write(b"data: [DONE]" + sep)
            await resp.write_eof()
            return resp
        raw = json.dumps({"id": "c", "object": "chat.completion", "model": "m",
                          "choices": [{"index": 0, "message": {"role": "assistant", "content": "x" * 500},
                                       "finish_reason": "stop"}],
                          "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}}).encode()
        if gzip_when_asked and "gzip" in (req.headers.get("accept-encoding") or ""):
            return web.Response(body=gzip.compress(raw), headers={"content-type": "application/json",
                                                                   "content-encoding": "gzip"})
        return web.Response(body=raw, content_type="application/json")

    async def health(_req: web.Request) -> web.Response:
        return web.Response()

    app = web.Application()
    app.router.add_get("/v1/models", list_models)
    app.router.add_get("/health", health)
    app.router.add_post("/v1/chat/completions", chat)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}", seen
    finally:
        await runner.cleanup()


async def test_an_upstream_that_compresses_when_asked_is_asked_not_to():
    async with odd_upstream(gzip_when_asked=True) as (url, seen):
        with live_gateway(url) as (base, _):
            async with httpx.AsyncClient(base_url=base) as c:
                r = await c.post("/v1/chat/completions", json=CHAT)
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == "x" * 500
    assert seen["encodings"] == ["identity"]


async def test_a_stream_framed_with_crlf_is_relayed_whole():
    async with odd_upstream(crlf=True) as (url, seen):
        with live_gateway(url) as (base, _):
            async with httpx.AsyncClient(base_url=base) as c:
                r = await c.post("/v1/chat/completions", json={**CHAT, "stream": True})
    data = [line for line in r.text.splitlines() if line.startswith("data:")]
    assert r.status_code == 200 and data[-1] == "data: [DONE]" and len(data) == 4, r.text
    assert "".join(json.loads(d[5:])["choices"][0]["delta"].get("content", "") for d in data[:-1]) == "hello"
    assert seen["posts"] == 1  # not taken for a drop and retried


async def test_an_upstream_that_does_not_speak_http_is_failed_over_not_a_500():
    junk = socket.socket()
    junk.bind(("127.0.0.1", 0))
    junk.listen(50)

    def serve() -> None:
        while True:
            try:
                conn, _ = junk.accept()
            except OSError:
                return
            try:
                conn.recv(65536)
                conn.sendall(b"SSH-2.0-OpenSSH_9.6\r\n\r\n")
            finally:
                conn.close()

    threading.Thread(target=serve, daemon=True).start()
    bad = f"http://127.0.0.1:{junk.getsockname()[1]}"
    try:
        async with odd_upstream() as (good, seen):
            with live_gateway(good, upstreams=[{"url": good}, {"url": bad}]) as (base, _):
                async with httpx.AsyncClient(base_url=base, timeout=30) as c:
                    codes = [(await c.post("/v1/chat/completions", json=CHAT)).status_code for _ in range(10)]
                    models = await c.get("/v1/models")
    finally:
        junk.close()
    assert codes == [200] * 10 and seen["posts"] == 10
    assert models.status_code == 200 and [m["id"] for m in models.json()["data"]] == ["m"]


async def test_an_upstream_that_cannot_list_takes_no_call_another_lists_the_model_for():
    """It may serve any model, or none (just restarted, its list not fetched again yet): a model
    another upstream lists goes there, never to it (it would answer 404)."""
    async with odd_upstream() as (lists, seen), odd_upstream(models=False) as (cannot, seen_other):
        with live_gateway(lists, upstreams=[{"url": lists}, {"url": cannot}]) as (base, _):
            async with httpx.AsyncClient(base_url=base) as c:
                codes = [(await c.post("/v1/chat/completions", json=CHAT)).status_code for _ in range(10)]
    assert codes == [200] * 10 and seen["posts"] == 10 and seen_other["posts"] == 0
