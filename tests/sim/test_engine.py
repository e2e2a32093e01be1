"""The continuous-batching latency model, concurrency accounting and client disconnects (live server)."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import pytest

from app.sim.server import SimConfig
from tests.sim.helpers import USER, live_sim, reset, sim_client, stats, wait_stats

# Fast steps, cheap prefill: a request of N tokens takes about N * 10 ms.
LATENCY = dict(latency_model=True, step_base_ms=10, step_per_seq_ms=0, prefill_base_ms=5, prefill_per_token_ms=0.01)


def tokens(n: int, **extra) -> dict:
    return {"messages": USER, "min_tokens": n, "max_tokens": n, **extra}


@pytest.fixture(scope="module")
def sim():
    with live_sim(SimConfig(**LATENCY)) as (url, _):
        yield url


@pytest.fixture(scope="module")
def small_sim():
    with live_sim(SimConfig(**LATENCY, max_num_seqs=4)) as (url, _):
        yield url


def client(url: str, timeout: float | httpx.Timeout = 30) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=url, limits=httpx.Limits(max_connections=300), timeout=timeout)


async def test_fifty_concurrent_requests_run_in_one_batch(sim):
    await reset(sim)
    async with client(sim) as c:
        start = time.perf_counter()
        replies = await asyncio.gather(*[c.post("/v1/chat/completions", json=tokens(30)) for _ in range(50)])
        elapsed = time.perf_counter() - start
    assert all(r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 30 for r in replies)
    s = await stats(sim)
    assert s["peak_num_requests_running"] == 50
    assert s["num_requests_running"] == 0 and s["num_requests_waiting"] == 0
    assert s["request_success_total"]["length"] == 50 and s["generation_tokens_total"] == 1500
    assert 0.3 <= elapsed < 3.0  # batched: ~30 steps of 10 ms, not 50 x 30 steps


async def test_requests_beyond_max_num_seqs_wait(small_sim):
    await reset(small_sim)
    seen_waiting = []

    async def watch():
        while True:
            s = await stats(small_sim)
            seen_waiting.append(s["num_requests_waiting"])
            await asyncio.sleep(0.01)

    async with client(small_sim) as c:
        watcher = asyncio.create_task(watch())
        start = time.perf_counter()
        replies = await asyncio.gather(*[c.post("/v1/chat/completions", json=tokens(10)) for _ in range(12)])
        elapsed = time.perf_counter() - start
        watcher.cancel()
    assert all(r.status_code == 200 for r in replies)
    s = await stats(small_sim)
    assert s["peak_num_requests_running"] == 4
    assert max(seen_waiting) >= 4
    assert elapsed >= 0.3  # three waves of ~10 steps of 10 ms


async def test_stream_timing_follows_the_steps(sim):
    cfg = dict(LATENCY, step_base_ms=20, prefill_base_ms=0, prefill_per_token_ms=4)
    with live_sim(SimConfig(**cfg)) as (url, _):
        async with client(url) as c:
            async def first_token_and_total(messages):
                start = time.perf_counter()
                stamps = []
                async with c.stream("POST", "/v1/chat/completions",
                                    json={"messages": messages, "stream": True, "min_tokens": 10,
                                          "max_tokens": 10}) as r:
                    async for line in r.aiter_lines():
                        if line.startswith("data: {"):
                            [choice] = json.loads(line[len("data: "):])["choices"]
                            if choice["delta"].get("content"):
                                stamps.append(time.perf_counter() - start)
                return stamps[0], stamps[-1], len(stamps)

            await first_token_and_total(USER)  # warm up the connection
            short_ttft, short_total, n = await first_token_and_total(USER)
            long_prompt = [{"role": "user", "content": "word " * 150}]
            long_ttft, _, _ = await first_token_and_total(long_prompt)
            cached_ttft, _, _ = await first_token_and_total(long_prompt)
    assert n == 10
    assert short_total - short_ttft >= 9 * 0.020 * 0.9  # one token per 20 ms step
    assert long_ttft - short_ttft >= 0.4  # ~145 more uncached prompt tokens at 4 ms each
    assert cached_ttft < long_ttft - 0.4  # the second time the prompt comes from the prefix cache


async def test_client_leaving_mid_stream_aborts_the_request(sim):
    await reset(sim)
    async with client(sim) as c:
        async with c.stream("POST", "/v1/chat/completions", json=tokens(300, stream=True)) as r:
            lines = r.aiter_lines()
            got = 0
            async for line in lines:
                got += bool(line)
                if got == 3:
                    break
            running = await stats(sim)
            assert running["num_requests_running"] == 1 and running["kv_cache_usage_perc"] > 0
    s = await wait_stats(sim, lambda s: s["requests_aborted_total"] == 1)
    assert s["num_requests_running"] == 0 and s["request_success_total"]["abort"] == 1
    await asyncio.sleep(0.1)
    assert (await stats(sim))["generation_tokens_total"] < 50  # the engine stopped generating for it


async def test_client_leaving_a_non_stream_request_aborts_it(sim):
    await reset(sim)
    async with client(sim, timeout=httpx.Timeout(5, read=0.2)) as c:
        with pytest.raises(httpx.ReadTimeout):
            await c.post("/v1/chat/completions", json=tokens(200))
    s = await wait_stats(sim, lambda s: s["requests_aborted_total"] == 1)
    assert s["num_requests_running"] == 0


async def test_client_leaving_while_queued_frees_its_place(small_sim):
    await reset(small_sim)
    async with client(small_sim) as c:
        hold = [asyncio.create_task(c.post("/v1/chat/completions", json=tokens(100))) for _ in range(4)]
        await wait_stats(small_sim, lambda s: s["num_requests_running"] == 4)
        async with client(small_sim, timeout=httpx.Timeout(5, read=0.2)) as impatient:
            with pytest.raises(httpx.ReadTimeout):
                await impatient.post("/v1/chat/completions", json=tokens(10))
        s = await wait_stats(small_sim, lambda s: s["requests_aborted_total"] == 1)
        assert s["num_requests_waiting"] == 0 and s["num_requests_running"] == 4
        for task in hold:
            task.cancel()
        await asyncio.gather(*hold, return_exceptions=True)
    await wait_stats(small_sim, lambda s: s["num_requests_running"] == 0)


async def test_overlapping_requests_count_as_running_in_zero_latency_mode():
    async with sim_client() as c:
        replies = await asyncio.gather(*[
            c.post("/v1/chat/completions", json={"messages": USER},
                   headers={"x-sim-fault": "slow_first_token_ms=100"}) for _ in range(20)])
        assert all(r.status_code == 200 for r in replies)
        s = (await c.get("/sim/stats")).json()
        assert s["peak_num_requests_running"] == 20 and s["num_requests_running"] == 0
