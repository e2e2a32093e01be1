"""A cancelled agent run still counts the work the upstream did: tokens and cost never go missing."""

from __future__ import annotations

import asyncio

import httpx
from structlog.testing import capture_logs

from tests.integration.test_agent_api import read_events
from tests.support import live_gateway, sim_reset, sim_stats


def test_a_run_cancelled_mid_call_counts_the_tokens_streamed(sim_latency_url):
    """The client leaves while the model writes: the interrupted call's completion tokens are counted
    from the chunks streamed, its prompt tokens estimated, in the metrics and the run's log line."""

    async def scenario(base: str) -> dict:
        await sim_reset(sim_latency_url)
        async with httpx.AsyncClient(base_url=base, timeout=30) as c:
            async with c.stream("POST", "/agent", json={"input": "write a long story about the sea", "tools": [],
                                                         "config": {"max_tokens": 4000, "min_tokens": 3000}}) as r:
                await read_events(r, lambda events: len([e for e in events if e["event"] == "delta"]) >= 3)
        for _ in range(100):
            stats = await sim_stats(sim_latency_url)
            if stats["requests_aborted_total"] >= 1:
                return stats
            await asyncio.sleep(0.05)
        raise AssertionError("the upstream never saw the call aborted")

    with live_gateway(sim_latency_url, log_level="INFO") as (base, app), capture_logs() as logs:
        stats = asyncio.run(scenario(base))
        for _ in range(100):  # the run's books close as its task unwinds
            if any(e["event"] == "agent_run" for e in logs):
                break
            asyncio.run(asyncio.sleep(0.02))
        metrics = app.state.metrics.registry
        completion = metrics.get_sample_value("vgate_completion_tokens_total", {"model": "sim-model", "route": "agent"})
        prompt = metrics.get_sample_value("vgate_prompt_tokens_total", {"model": "sim-model", "route": "agent"})
        cost = metrics.get_sample_value("vgate_cost_usd_total", {"model": "sim-model", "route": "agent"})
    assert stats["requests_aborted_total"] == 1
    assert 3 <= completion <= stats["generation_tokens_total"]  # what was streamed to us, no more
    assert prompt and stats["prompt_tokens_total"] / 3 <= prompt <= stats["prompt_tokens_total"] * 3  # an estimate
    assert cost and cost > 0
    [call] = [e for e in logs if e["event"] == "upstream_call"]
    assert call["outcome"] == "cancelled" and call["estimated"] is True and call["completion_tokens"] == completion
    [run] = [e for e in logs if e["event"] == "agent_run"]
    assert run["outcome"] == "cancelled" and run["estimated"] is True and run["model_calls"] == 1
    assert run["completion_tokens"] == completion and run["prompt_tokens"] == prompt
