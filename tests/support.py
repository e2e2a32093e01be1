"""Test helpers: start servers, build gateways, read the simulator's counters."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass

import httpx
import uvicorn

from app.main import create_app
from app.procs import die_with_parent, stop_process, wait_healthy
from app.settings import Settings

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def spawn(args: list[str], port: int, timeout: float = 60, env: dict[str, str] | None = None) -> Iterator[str]:
    """``vgate ARGS`` serving on ``port`` until the block ends. Fails, with the server's stderr, if it
    does not come up, or if what answers there is not it (another server on a taken port). The server
    dies with this process even if it is SIGKILLed (Linux). ``env``: variables added to this process's."""
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen([sys.executable, "-m", "app.cli", *args], cwd=ROOT, stdout=subprocess.DEVNULL,
                                stderr=err, preexec_fn=die_with_parent(),
                                env={**os.environ, **env} if env else None)
        try:
            url = f"http://127.0.0.1:{port}"
            try:
                wait_healthy(url, timeout, proc, path="/healthz" if args[:1] == ["serve"] else "/health")
            except (RuntimeError, TimeoutError) as e:
                err.seek(max(0, err.seek(0, os.SEEK_END) - 3000))
                tail = err.read().decode(errors="replace")
                raise type(e)(f"vgate {' '.join(args)}: {e}\n--- its stderr, last lines:\n{tail}") from None
            yield url
        finally:
            stop_process(proc)


def make_settings(upstream: str, **kw) -> Settings:
    base = dict(upstream_url=upstream, log_format="console", log_level="WARNING",
                retry_backoff_initial_s=0.01, retry_backoff_max_s=0.05)
    base.update(kw)
    return Settings(**base)


@dataclass
class Gateway:
    app: object
    client: httpx.AsyncClient

    @property
    def state(self):
        return self.app.state  # type: ignore[attr-defined]

    def metric(self, name: str, **labels: str) -> float:
        value = self.state.metrics.registry.get_sample_value(name, labels)
        return value or 0.0


@asynccontextmanager
async def gateway(upstream: str, *, lm_transport: httpx.AsyncBaseTransport | None = None,
                  **settings_kw) -> AsyncIterator[Gateway]:
    """The real app with its lifespan, driven in-process over ASGI."""
    app = create_app(make_settings(upstream, **settings_kw), lm_transport=lm_transport)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://vgate", timeout=60) as client:
            yield Gateway(app, client)


def completion_chunks(content: str, prompt_tokens: int = 5, completion_tokens: int = 4) -> list[dict]:
    """A well-formed streamed completion: role chunk, content, finish chunk, usage chunk."""
    return [
        {"id": "c", "model": "m", "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]},
        {"id": "c", "model": "m", "choices": [{"index": 0, "delta": {"content": content}}]},
        {"id": "c", "model": "m", "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
        {"id": "c", "model": "m", "choices": [],
         "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens}},
    ]


def fake_upstream(chunks: list, *, done: bool = True, check=None) -> httpx.MockTransport:
    """An upstream that streams ``chunks`` (dicts as JSON, strings as they are) as SSE."""

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/models":
            return httpx.Response(200, json={"object": "list", "data": [{"id": "m", "object": "model"}]})
        if request.url.path == "/health":  # the gateway's background checks
            return httpx.Response(200)
        if request.url.path == "/metrics":
            return httpx.Response(404)
        if check is not None:
            check(request)
        body = "".join(f"data: {c if isinstance(c, str) else json.dumps(c)}\n\n" for c in chunks)
        body += "data: [DONE]\n\n" if done else ""
        return httpx.Response(200, text=body, headers={"content-type": "text/event-stream"})

    return httpx.MockTransport(handler)


@contextmanager
def live_gateway(upstream: str, *, lm_transport: httpx.AsyncBaseTransport | None = None,
                 **settings_kw) -> Iterator[tuple[str, object]]:
    """The real app under uvicorn on a free port (for streaming and disconnect tests)."""
    port = free_port()
    app = create_app(make_settings(upstream, **settings_kw), lm_transport=lm_transport)
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, lifespan="on", loop="asyncio")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        wait_healthy(f"http://127.0.0.1:{port}", 30, path="/healthz")
        yield f"http://127.0.0.1:{port}", app
    finally:
        server.should_exit = True
        thread.join(15)


async def sim_stats(sim: str) -> dict:
    async with httpx.AsyncClient() as c:
        r = await c.get(f"{sim}/sim/stats")
        r.raise_for_status()
        return r.json()


async def sim_reset(sim: str) -> None:
    async with httpx.AsyncClient() as c:
        (await c.post(f"{sim}/sim/reset")).raise_for_status()



@contextmanager
def redis_server() -> Iterator[str]:
    """A real redis-server (Debian's package) on a free port, in memory only, until the block ends."""
    import shutil

    exe = shutil.which("redis-server")
    if exe is None:
        raise RuntimeError("redis-server is not installed: `make test` installs it (Debian's redis-server)")
    port = free_port()
    with tempfile.TemporaryDirectory() as d:
        proc = subprocess.Popen([exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                                 "--dir", d, "--protected-mode", "no"], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, preexec_fn=die_with_parent())
        try:
            import time

            deadline = time.monotonic() + 10
            while True:
                try:
                    with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
                        s.sendall(b"PING\r\n")
                        if s.recv(16).startswith(b"+PONG"):
                            break
                except OSError:
                    pass
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server did not start on port {port}")
                time.sleep(0.05)
            yield f"redis://127.0.0.1:{port}/0"
        finally:
            stop_process(proc)
