"""The reference passthrough of benchmarks/passthrough.py: FastAPI + one shared aiohttp ClientSession.

    .venv/bin/python benchmarks/minimal_proxy.py --upstream http://127.0.0.1:8000 --port 8100

uvicorn with uvloop + httptools, one worker. It relays POST /v1/chat/completions (non-streaming: the body
and the upstream's status; streaming: the bytes as they come) and GET /v1/models. Nothing else: no
validation, no auth, no logging. What any gateway's passthrough should be measured against.
"""

from __future__ import annotations

import argparse
import json
from contextlib import asynccontextmanager

import aiohttp
import uvicorn
from fastapi import FastAPI, Request, Response
from fastapi.responses import StreamingResponse
from starlette.background import BackgroundTask


def build(upstream: str) -> FastAPI:
    state: dict[str, aiohttp.ClientSession] = {}

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        state["s"] = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=60))
        yield
        await state["s"].close()

    app = FastAPI(lifespan=lifespan)

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Response:
        body = await request.body()
        stream = json.loads(body).get("stream")
        resp = await state["s"].post(upstream + "/v1/chat/completions", data=body,
                                     headers={"content-type": "application/json"})
        ctype = resp.headers.get("content-type")
        if not stream:
            async with resp:
                return Response(await resp.read(), status_code=resp.status, media_type=ctype)

        async def release() -> None:  # async: a sync callable would run in the thread pool
            resp.release()

        return StreamingResponse(resp.content.iter_any(), status_code=resp.status, media_type=ctype,
                                 background=BackgroundTask(release))

    @app.get("/v1/models")
    async def models() -> Response:
        async with state["s"].get(upstream + "/v1/models") as resp:
            return Response(await resp.read(), status_code=resp.status, media_type=resp.headers.get("content-type"))

    return app


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--upstream", required=True, help="base URL of an OpenAI-compatible server, no /v1")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8100)
    a = ap.parse_args()
    uvicorn.run(build(a.upstream.rstrip("/")), host=a.host, port=a.port, loop="uvloop", http="httptools",
                workers=1, log_level="warning", access_log=False)
