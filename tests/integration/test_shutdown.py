"""SIGTERM: in-flight requests and agent streams get VGATE_SHUTDOWN_GRACE_S to finish; a run still
going then ends with a clear shutting_down event instead of a dropped connection."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time

import httpx

from app.procs import stop_process, wait_healthy
from tests.integration.test_agent_api import read_events
from tests.support import ROOT, free_port


def test_sigterm_lets_short_work_finish_and_ends_long_runs_with_a_shutting_down_event(sim_latency_url):
    port = free_port()
    env = {**os.environ, "VGATE_UPSTREAM_URL": sim_latency_url, "VGATE_PORT": str(port),
           "VGATE_SHUTDOWN_GRACE_S": "1.5", "VGATE_LOG_LEVEL": "WARNING"}
    proc = subprocess.Popen([sys.executable, "-m", "app.cli", "serve"], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(base, 30, proc, path="/healthz")

        async def scenario() -> tuple[list[dict], list[dict], httpx.Response, float]:
            async with httpx.AsyncClient(base_url=base, timeout=30) as c:
                async def stream(config: dict) -> list[dict]:
                    async with c.stream("POST", "/agent", json={"input": "tell a story", "tools": [],
                                                                 "config": config}) as r:
                        return await read_events(r, lambda events: False)  # to the end

                async def relayed(max_tokens: int) -> list[str]:
                    body = {"messages": [{"role": "user", "content": "a story"}], "stream": True,
                            "max_tokens": max_tokens, "min_tokens": max_tokens - 10}
                    async with c.stream("POST", "/v1/chat/completions", json=body) as r:
                        return [line async for line in r.aiter_lines() if line.startswith("data:")]

                long = asyncio.ensure_future(stream({"max_tokens": 4000, "min_tokens": 3000}))  # ~25 s
                long_v1 = asyncio.ensure_future(relayed(4000))
                short_v1 = asyncio.ensure_future(relayed(60))
                short = asyncio.ensure_future(stream({"max_tokens": 60, "min_tokens": 50}))  # well under 1.5 s
                predict = asyncio.ensure_future(c.post("/predict", json={
                    "signature": "q -> a", "inputs": {"q": "x"}, "config": {"max_tokens": 40}}))
                await asyncio.sleep(0.3)
                proc.send_signal(signal.SIGTERM)
                t0 = time.perf_counter()
                long_events = await long
                waited = time.perf_counter() - t0
                relays["long"], relays["short"] = await long_v1, await short_v1
                return long_events, await short, await predict, waited

        relays: dict[str, list[str]] = {}
        long_events, short_events, predict, waited = asyncio.run(scenario())
        # it exits (uvicorn re-raises the signal once it has shut down, as a process ended by it should)
        assert proc.wait(15) in (0, -signal.SIGTERM)
    finally:
        if proc.poll() is None:
            stop_process(proc)
    assert short_events[-1]["event"] == "final"  # work that fits in the grace finishes
    assert predict.status_code == 200
    last = long_events[-1]
    assert last["event"] == "error" and last["data"]["type"] == "shutting_down" and last["data"]["retryable"]
    assert any(e["event"] == "delta" for e in long_events)  # it was streaming until then
    assert 1.0 < waited < 6  # stopped at the grace, not when its 25 s were up (nor at once)
    # the passthrough's streams alike: the short one ends as vLLM ended it, the long one with an error
    assert relays["short"][-1] == "data: [DONE]" and '"finish_reason":"stop"' in relays["short"][-2]
    assert relays["long"][-1] == "data: [DONE]" and len(relays["long"]) > 5
    error = json.loads(relays["long"][-2][5:])["error"]
    assert error["type"] == "shutting_down" and error["code"] == 503
