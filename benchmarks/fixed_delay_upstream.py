"""An OpenAI-compatible upstream for the /predict-against-DSPy benchmark (benchmarks/compare.py).

    .venv/bin/python benchmarks/fixed_delay_upstream.py --port 8300 --delay 0.2
    .venv/bin/python benchmarks/fixed_delay_upstream.py --port 8300 --forward http://127.0.0.1:8200

Every ``POST /v1/chat/completions`` is answered with a valid typed answer for an ``answer: int`` output,
in the format the client asked for, so that vgate and DSPy both succeed on every item:

- ``response_format`` json_schema (vgate's /predict): a JSON object with a value of the right type for
  each property of the schema;
- a prompt with DSPy's ChatAdapter markers (``[[ ## answer ## ]]``): that format, ending ``[[ ## completed ## ]]``;
- otherwise (DSPy's JSONAdapter, ``json_object``): ``{"answer": 4}``.

Timing: ``--delay S`` answers each request S seconds after it arrived, however many are in flight (no
queue: the ideal upstream whose wall time for N concurrent requests is S). ``--forward URL`` instead
sends each request, without its ``response_format`` and with ``max_tokens`` fixed to ``--forward-tokens``,
non-streaming, to ``URL`` (``vgate sim --latency-model``: the continuous-batching model) and answers when
that returns: both clients then wait on the same batching engine for the same number of tokens.
Streaming (``stream: true``) is answered as SSE chunks (role, content, usage) after the wait.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

from aiohttp import ClientSession, TCPConnector, web

MODEL = "sim-model"


def value_for(schema: dict) -> object:
    t = schema.get("type")
    if isinstance(t, list):
        t = next((x for x in t if x != "null"), "string")
    if "enum" in schema:
        return schema["enum"][0]
    return {"integer": 4, "number": 4.0, "boolean": True, "array": [], "object": {}, "null": None}.get(t, "four")


def answer_text(body: dict) -> str:
    fmt = body.get("response_format") or {}
    if fmt.get("type") == "json_schema":
        schema = (fmt.get("json_schema") or {}).get("schema") or {}
        props = schema.get("properties") or {"answer": {"type": "integer"}}
        return json.dumps({k: value_for(v) for k, v in props.items()})
    prompt = "\n".join(m.get("content") if isinstance(m.get("content"), str) else json.dumps(m.get("content"))
                       for m in body.get("messages", []))
    if "[[ ## completed ## ]]" in prompt:
        return "[[ ## answer ## ]]\n4\n\n[[ ## completed ## ]]"
    return '{"answer": 4}'


def build(delay: float, forward: str | None, forward_tokens: int) -> web.Application:
    app = web.Application()
    state: dict = {"requests": 0, "in_flight": 0, "peak": 0}

    async def on_startup(_app: web.Application) -> None:
        if forward:
            state["session"] = ClientSession(connector=TCPConnector(limit=0))

    async def on_cleanup(_app: web.Application) -> None:
        if "session" in state:
            await state["session"].close()

    async def chat(request: web.Request) -> web.StreamResponse:
        t0 = time.monotonic()
        body = await request.json()
        state["requests"] += 1
        state["in_flight"] += 1
        state["peak"] = max(state["peak"], state["in_flight"])
        try:
            if forward:
                fwd = {k: v for k, v in body.items() if k not in ("response_format", "stream", "stream_options")}
                fwd |= {"model": MODEL, "max_tokens": forward_tokens, "min_tokens": forward_tokens}
                async with state["session"].post(forward + "/v1/chat/completions", json=fwd) as r:
                    await r.read()
            else:
                await asyncio.sleep(max(0.0, delay - (time.monotonic() - t0)))
        finally:
            state["in_flight"] -= 1
        text = answer_text(body)
        usage = {"prompt_tokens": 50, "completion_tokens": 8, "total_tokens": 58}
        base = {"id": "chatcmpl-fixed", "created": int(time.time()), "model": body.get("model", MODEL)}
        if not body.get("stream"):
            return web.json_response({**base, "object": "chat.completion", "usage": usage, "choices": [
                {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}]})
        resp = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await resp.prepare(request)
        chunk = {**base, "object": "chat.completion.chunk"}
        events = [
            {**chunk, "choices": [{"index": 0, "delta": {"role": "assistant", "content": text},
                                   "finish_reason": None}]},
            {**chunk, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
        ]
        if (body.get("stream_options") or {}).get("include_usage"):
            events.append({**chunk, "choices": [], "usage": usage})
        await resp.write(b"".join(b"data: " + json.dumps(e).encode() + b"\n\n" for e in events)
                         + b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp

    async def models(_request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": MODEL, "object": "model", "root": MODEL,
                                                              "owned_by": "bench", "max_model_len": 8192}]})

    async def stats(_request: web.Request) -> web.Response:
        return web.json_response({k: v for k, v in state.items() if k != "session"})

    async def reset(_request: web.Request) -> web.Response:
        state.update(requests=0, peak=0)
        return web.json_response({"ok": True})

    async def health(_request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    app.on_startup.append(on_startup)
    app.on_cleanup.append(on_cleanup)
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_get("/v1/models", models)
    app.router.add_get("/health", health)
    app.router.add_get("/stats", stats)
    app.router.add_post("/reset", reset)
    return app


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8300)
    ap.add_argument("--delay", type=float, default=0.2, help="seconds before each answer (default 0.2)")
    ap.add_argument("--forward", default=None, help="base URL of a simulator to take the timing from instead")
    ap.add_argument("--forward-tokens", type=int, default=8, help="max_tokens of a forwarded request")
    a = ap.parse_args()
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    web.run_app(build(a.delay, a.forward and a.forward.rstrip("/"), a.forward_tokens), host=a.host, port=a.port,
                access_log=None, print=None, backlog=4096)
