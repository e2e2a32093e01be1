"""/agent runs end to end against the simulator: how they end (truncation, limits), their sessions,
their lifecycle (cancellation, disconnect grace), and what they log."""

from __future__ import annotations

import asyncio
import json
import time

import httpx

from tests.integration.test_agent_api import names, parse_sse, run_sse
from tests.support import gateway, live_gateway, sim_reset, sim_stats


async def test_an_answer_cut_by_max_tokens_is_reported_as_truncated(sim_url):
    async with gateway(sim_url) as gw:
        events = await run_sse(gw.client, {"input": "Tell me a long story about the sea", "tools": [],
                                           "config": {"max_tokens": 5}})
        r = await gw.client.post("/agent", headers={"accept": "application/json"},
                                 json={"input": "Tell me a long story about the sea", "tools": [],
                                       "config": {"max_tokens": 5}})
        truncated = gw.metric("vgate_agent_runs_total", outcome="length")
        ok = gw.metric("vgate_agent_runs_total", outcome="ok")
    final = events[-1]["data"]
    assert events[-1]["event"] == "final"
    assert final["stop_reason"] == "length" and "max_tokens=5" in final["message"]
    assert final["answer"] and final["usage"]["completion_tokens"] == 5  # the cut text is kept
    assert r.status_code == 200 and r.json()["stop_reason"] == "length" and r.json()["message"]
    assert truncated == 2 and ok == 0


async def test_a_tool_call_cut_by_max_tokens_is_not_run(sim_url):
    async with gateway(sim_url) as gw:
        events = await run_sse(gw.client, {
            "input": 'CALL calculator {"expression": "1+2+3+4+5+6+7+8+9+10+11+12+13+14+15"}',
            "config": {"max_tokens": 6}})
    assert names(events) == ["run", "final"]  # partial arguments: nothing executed
    assert events[-1]["data"]["stop_reason"] == "length" and events[-1]["data"]["answer"] is None


async def test_a_react_answer_cut_by_max_tokens_is_reported_as_truncated(sim_url):
    async with gateway(sim_url) as gw:
        events = await run_sse(gw.client, {"input": "Tell me a long story about the sea", "mode": "react",
                                           "config": {"max_tokens": 5}})
    assert events[-1]["data"]["stop_reason"] == "length"


async def test_tool_calls_beyond_the_per_turn_limit_are_refused_not_run(sim_url):
    calls = "\n".join(f'CALL calculator {{"expression": "{i}+1"}}' for i in range(17))
    async with gateway(sim_url) as gw:  # default limit: 16 a turn
        events = await run_sse(gw.client, {"input": calls, "tools": ["calculator"]})
        ran = gw.metric("vgate_tool_calls_total", tool="calculator", status="ok")
    results = [e["data"] for e in events if e["event"] == "tool_result"]
    assert len(results) == 17 and ran == 16
    refused = [r for r in results if not r["ok"]]
    assert len(refused) == 1 and refused[0]["error"]["type"] == "too_many_tool_calls"
    assert "16" in refused[0]["error"]["message"]
    assert events[-1]["event"] == "final" and events[-1]["data"]["stop_reason"] == "answer"


async def test_a_run_cancelled_before_its_first_step_is_not_left_live(sim_url):
    """Cancelled before its task ever ran (a shutdown, a client gone in the same loop turn): the run
    must still end, free its place under the cap and its session."""
    async with gateway(sim_url, agent_max_concurrent_runs=1) as gw:
        agent = gw.state.agent
        run = await agent.start(agent.make_task(input="hello", tools=[], session_id="s1"))
        run.task.cancel()
        await asyncio.wait({run.task})
        r = await gw.client.post("/agent", json={"input": "again", "tools": [], "session_id": "s1"})
        cancelled = gw.metric("vgate_agent_runs_total", outcome="cancelled")
    assert run.finished and run.events[-1].event == "error" and run.events[-1].data["type"] == "cancelled"
    assert r.status_code == 200, r.text  # neither 503 (cap) nor 409 (session busy)
    assert parse_sse(r.text)[-1]["event"] == "final"
    assert cancelled == 1


def test_each_disconnect_gets_a_fresh_grace_period(sim_latency_url):
    """Disconnect, reconnect within the grace, disconnect again: the run lives a full grace period
    after the second disconnect, not until the first disconnect's deadline."""
    grace = 1.5

    async def scenario(base: str) -> tuple[float, float]:
        await sim_reset(sim_latency_url)
        async with httpx.AsyncClient(base_url=base, timeout=30) as c:
            async with c.stream("POST", "/agent", json={"input": "write a long story", "tools": [],
                                                         "config": {"max_tokens": 4000, "min_tokens": 3000}}) as r:
                run_id = r.headers["x-vgate-run-id"]
                async for line in r.aiter_lines():
                    if line.startswith("event: delta"):
                        break
            t0 = time.perf_counter()
            await asyncio.sleep(0.4)
            async with c.stream("GET", f"/agent/runs/{run_id}/events", headers={"Last-Event-ID": "2"}) as r:
                async for _ in r.aiter_lines():  # the story goes on: read it until t0 + 0.9 s
                    if time.perf_counter() - t0 > 0.9:
                        break
            t1 = time.perf_counter()
            for _ in range(200):
                if (await sim_stats(sim_latency_url))["requests_aborted_total"] >= 1:
                    return t1 - t0, time.perf_counter() - t1
                await asyncio.sleep(0.05)
        raise AssertionError("the run was never cancelled")

    with live_gateway(sim_latency_url, agent_disconnect_grace_s=grace) as (base, _):
        second_disconnect, lived = asyncio.run(scenario(base))
    assert second_disconnect < grace  # the reconnect came within the first grace period
    assert lived > 0.8 * grace  # the first timer would have cancelled it at grace - second_disconnect


async def test_session_history_is_bounded_by_agent_session_max_bytes(sim_url):
    """A first turn bigger than the bound is not kept: the second turn's prompt is what a fresh
    conversation's is."""
    async with gateway(sim_url, agent_session_max_bytes=2000) as gw:
        await run_sse(gw.client, {"input": "word " * 600, "tools": [], "session_id": "big"})
        second = await run_sse(gw.client, {"input": "hello", "tools": [], "session_id": "big"})
        fresh = await run_sse(gw.client, {"input": "hello", "tools": []})
    assert second[-1]["data"]["usage"]["prompt_tokens"] == fresh[-1]["data"]["usage"]["prompt_tokens"]


async def test_prompts_and_completions_are_logged_only_when_log_prompts_is_on(sim_url, capsys):
    payload = {"input": 'secret-question\nCALL calculator {"expression": "6*7"}', "tools": ["calculator"]}
    for on in (False, True):
        async with gateway(sim_url, log_prompts=on, log_format="json", log_level="INFO") as gw:
            events = await run_sse(gw.client, payload)
        lines = [json.loads(x) for x in capsys.readouterr().err.splitlines() if x.startswith("{")]
        if not on:
            assert "secret-question" not in json.dumps(lines)
            continue
        io = [x for x in lines if x["event"] == "agent_io"]
        assert len(io) == 2  # one per model call: the tool call, then the answer
        assert "secret-question" in json.dumps(io[0]["messages"])
        assert io[0]["tool_calls"][0]["function"]["name"] == "calculator"
        assert io[1]["completion"] == events[-1]["data"]["answer"]
        assert all(x["run_id"] == events[-1]["data"]["run_id"] for x in io)


async def test_json_form_maps_a_crash_to_500():
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/models"):
            return httpx.Response(200, json={"object": "list", "data": [{"id": "m", "object": "model"}]})
        raise RuntimeError("a bug")

    async with gateway("http://up", default_model="m", lm_transport=httpx.MockTransport(handler)) as gw:
        r = await gw.client.post("/agent", headers={"accept": "application/json"}, json={"input": "hi"})
    assert r.status_code == 500 and r.json()["error"]["type"] == "internal_error"
    assert "a bug" not in r.text


async def test_json_form_maps_a_run_cancelled_by_the_gateway_to_503(sim_latency_url):
    """The client is still there, the gateway cancelled the run (shutting down): 503, not 502."""
    async with gateway(sim_latency_url) as gw:
        call = asyncio.create_task(gw.client.post(
            "/agent", headers={"accept": "application/json"},
            json={"input": "write a long story", "tools": [], "config": {"max_tokens": 4000, "min_tokens": 3000}}))
        for _ in range(100):
            if gw.state.agent.runs.live():
                break
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.2)
        await gw.state.agent.aclose()
        r = await call
    assert r.status_code == 503 and r.json()["error"]["type"] == "shutting_down"


def test_a_json_client_keeps_its_run_when_a_stream_follower_leaves(sim_latency_url):
    """A JSON client waiting for a run counts as one of its clients: a resumed stream that follows
    the run and goes away does not cancel it (grace 0)."""

    async def scenario(base: str, app) -> tuple[int, dict]:
        await sim_reset(sim_latency_url)
        async with httpx.AsyncClient(base_url=base, timeout=30) as c:
            waiting = asyncio.create_task(c.post("/agent", headers={"accept": "application/json"}, json={
                "input": "write a story", "tools": [], "config": {"max_tokens": 60, "min_tokens": 50}}))
            for _ in range(100):
                live = app.state.agent.runs.live()
                if live and len(live[0].events) >= 2:
                    break
                await asyncio.sleep(0.02)
            async with c.stream("GET", f"/agent/runs/{live[0].run_id}/events") as r:
                async for line in r.aiter_lines():
                    if line.startswith("id:"):
                        break
            r = await waiting
        return r.status_code, r.json()

    with live_gateway(sim_latency_url) as (base, app):
        status, body = asyncio.run(scenario(base, app))
    assert status == 200, body
    assert body["stop_reason"] == "answer" and body["usage"]["completion_tokens"] >= 50
