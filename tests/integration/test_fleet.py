"""The gateway in front of several real simulators (``vgate sim`` processes): routing by load, prefix
affinity and its spill, failover when an upstream dies mid-run, fast 429s when vLLM's queue is full,
and interactive calls ahead of a running batch.

Counts and ratios, not tight timings: the machine is small and noisy. The simulator's own counters
(``/sim/stats``) say where the calls really went; the gateway's metrics say how it chose."""

from __future__ import annotations

import asyncio
import itertools
import statistics
import time
from collections.abc import Iterator

import pytest

from tests.fleet_support import MODEL, FaultTransport, Sim, metric, metric_sum, sims, upstreams
from tests.support import gateway

PREDICT_SIG = "q -> a"
QUIET = dict(log_format="json")  # a console traceback takes seconds to render on this machine


def chat_body(text: str, system: str | None = None, **kw) -> dict:
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": text}]
    return {"model": MODEL, "messages": messages, "max_tokens": 30, **kw}


@pytest.fixture(scope="module")
def fleet() -> Iterator[dict[str, Sim]]:
    """The simulators the tests share (each test resets the counters of those it uses)."""
    with sims(["--step-ms", "10", "--output-tokens", "20"],  # fast: ~0.25 s a call
              ["--step-ms", "40", "--output-tokens", "20"],  # slow: ~0.85 s a call
              [], [],  # zero latency
              ["--max-num-seqs", "4", "--step-ms", "30", "--output-tokens", "10"],  # tiny: vLLM's queue builds
              ) as (fast, slow, zl1, zl2, tiny):
        yield {"fast": fast, "slow": slow, "zl1": zl1, "zl2": zl2, "tiny": tiny}


async def reset(*ss: Sim) -> None:
    await asyncio.gather(*(s.reset() for s in ss))


def picks(gw, upstream: str, how: str | None = None) -> float:
    reg = gw.state.metrics.registry
    if how is None:
        return metric_sum(reg, "vgate_upstream_picks_total", upstream=upstream)
    return metric(reg, "vgate_upstream_picks_total", upstream=upstream, how=how)


# --------------------------------------------------------------------------- 1. load


async def _closed_loop(gw, total: int, concurrency: int) -> list[int]:
    """``total`` calls with unique prompts, ``concurrency`` of them in flight at any time: each
    worker sends its next call when its last one is answered, so an upstream that answers faster
    frees its calls sooner and (by in-flight count) gets more of the next ones."""
    counter = itertools.count()
    statuses: list[int] = []

    async def worker() -> None:
        while (i := next(counter)) < total:
            r = await gw.client.post("/v1/chat/completions", json=chat_body(f"question number {i} about queues"))
            statuses.append(r.status_code)
            assert r.status_code == 200, r.text

    await asyncio.wait_for(asyncio.gather(*(worker() for _ in range(concurrency))), 90)
    return statuses


@pytest.mark.parametrize("routing", ["load", "round_robin"])
async def test_load_routing_sends_more_to_the_faster_upstream(fleet, routing):
    """Two upstreams, one four times slower per decode step. routing="load" (power of two choices on
    in-flight calls) keeps about as many calls in flight on each, so the faster one, which finishes
    them sooner, serves clearly more; round_robin, blind to load, splits them evenly — the check that
    this test can tell the two apart."""
    fast, slow = fleet["fast"], fleet["slow"]
    await reset(fast, slow)
    async with gateway(fast.url, upstreams=upstreams(fast, slow), routing=routing, prefix_affinity=False,
                       **QUIET) as gw:
        statuses = await _closed_loop(gw, total=200, concurrency=32)
        picked_fast, picked_slow = picks(gw, fast.url, routing), picks(gw, slow.url, routing)
    assert statuses.count(200) == 200
    n_fast, n_slow = await fast.requests(), await slow.requests()
    assert n_fast + n_slow == 200, f"no call is sent twice without a failure: {n_fast} + {n_slow}"
    assert (picked_fast, picked_slow) == (n_fast, n_slow), "the picks metric says where the calls went"
    ratio = n_fast / max(n_slow, 1)
    if routing == "load":
        assert ratio > 1.35, (f"routing=load: the fast upstream served {n_fast} calls, the slow one {n_slow} "
                             f"(ratio {ratio:.2f}); by load it should serve clearly more (> 1.35x)")
    else:
        assert 0.8 <= ratio <= 1.25, f"round_robin should split evenly, got {n_fast} vs {n_slow}"


# --------------------------------------------------------------------------- 2. prefix affinity


async def test_calls_sharing_a_system_prompt_stay_on_one_upstream(fleet):
    a, b = fleet["zl1"], fleet["zl2"]
    await reset(a, b)
    async with gateway(a.url, upstreams=upstreams(a, b), **QUIET) as gw:
        for i in range(20):
            r = await gw.client.post("/v1/chat/completions",
                                     json=chat_body(f"user question {i}", system="You are the shared assistant."))
            assert r.status_code == 200, r.text
        counts = {a.url: await a.requests(), b.url: await b.requests()}
        home = max(counts, key=counts.get)
        assert sorted(counts.values()) == [0, 20], f"one shared prefix, one upstream: got {counts}"
        assert picks(gw, home, "affinity") == 19, "the first call chose the home by load, the 19 others by affinity"
        other = a.url if home == b.url else b.url
        assert picks(gw, other) == 0


async def test_calls_with_different_system_prompts_spread(fleet):
    a, b = fleet["zl1"], fleet["zl2"]
    await reset(a, b)
    async with gateway(a.url, upstreams=upstreams(a, b), **QUIET) as gw:
        for i in range(30):
            r = await gw.client.post("/v1/chat/completions", json=chat_body("same question", system=f"Persona {i}."))
            assert r.status_code == 200, r.text
        affinity = picks(gw, a.url, "affinity") + picks(gw, b.url, "affinity")
    n_a, n_b = await a.requests(), await b.requests()
    assert n_a + n_b == 30
    assert min(n_a, n_b) >= 3, f"30 different prefixes should spread over both upstreams, got {n_a} and {n_b}"
    assert affinity == 0, "each prefix was new: none was routed by affinity"


async def test_session_header_keeps_a_conversation_on_one_upstream(fleet):
    a, b = fleet["zl1"], fleet["zl2"]
    await reset(a, b)
    async with gateway(a.url, upstreams=upstreams(a, b), **QUIET) as gw:
        for i in range(20):  # one-turn chats with nothing in common but the session
            r = await gw.client.post("/v1/chat/completions", json=chat_body(f"unrelated question {i}"),
                                     headers={"X-Vgate-Session": "conversation-42"})
            assert r.status_code == 200, r.text
        counts = {a.url: await a.requests(), b.url: await b.requests()}
        home = max(counts, key=counts.get)
        assert sorted(counts.values()) == [0, 20], f"one session, one upstream: got {counts}"
        assert picks(gw, home, "affinity") == 19


async def test_affinity_spills_to_the_other_upstream_when_home_is_full(fleet):
    """Two slots per upstream; six calls sharing a prefix at once, each holding its slot ~0.5 s (slow
    first token). Two go home, the others spill to the other upstream (how=spill) instead of waiting,
    and the prefix stays at home: the next call goes back there."""
    a, b = fleet["zl1"], fleet["zl2"]
    faults = FaultTransport()
    system = "A long shared system prompt that the prefix cache keeps."
    async with gateway(a.url, upstreams=upstreams(a, b), lm_transport=faults, max_inflight_per_upstream=2,
                       **QUIET) as gw:
        await reset(a, b)
        r = await gw.client.post("/v1/chat/completions", json=chat_body("warm up", system=system))
        assert r.status_code == 200
        home, other = (a, b) if await a.requests() == 1 else (b, a)

        async def slow_call(i: int):
            faults.fault(f"spill-{i}", "slow_first_token_ms=500")
            return await gw.client.post("/v1/chat/completions", json=chat_body(f"question {i}", system=system),
                                        headers={"x-request-id": f"spill-{i}"})

        rs = await asyncio.wait_for(asyncio.gather(*(slow_call(i) for i in range(6))), 30)
        assert [r.status_code for r in rs] == [200] * 6, [r.text for r in rs if r.status_code != 200]
        spilled = picks(gw, other.url, "spill")
        assert spilled >= 2, f"home full: calls should spill to the other upstream, picks(spill)={spilled}"
        assert await other.requests() >= 2, "the spilled calls ran on the other upstream"
        assert picks(gw, home.url, "affinity") >= 2, "calls that found a free slot at home went there"

        before = picks(gw, home.url, "affinity")
        r = await gw.client.post("/v1/chat/completions", json=chat_body("and now?", system=system))
        assert r.status_code == 200
        assert picks(gw, home.url, "affinity") == before + 1, "after the spill the prefix is still at home"


# --------------------------------------------------------------------------- 3. an upstream dies mid-run


async def test_an_upstream_killed_mid_run_fails_over_and_its_breaker_opens():
    """~100 calls (/predict singles and /v1 non-stream chats) in flight on two upstreams; one is
    SIGKILLed while tens of them run there. None of these calls had sent a byte to its client, so
    every one succeeds (retried or, for /predict, replayed on the survivor); the dead upstream's
    breaker opens and later calls all go to the survivor."""
    with sims(["--step-ms", "40", "--output-tokens", "30"], ["--step-ms", "40", "--output-tokens", "30"]) as (
            survivor, victim):
        async with gateway(survivor.url, upstreams=upstreams(survivor, victim), prefix_affinity=False,
                           metrics_scrape_interval_s=0.2, **QUIET) as gw:
            reg = gw.state.metrics.registry

            async def call(i: int):
                if i % 2:
                    return await gw.client.post("/predict", json={"signature": PREDICT_SIG,
                                                                  "inputs": {"q": f"item {i}"}})
                return await gw.client.post("/v1/chat/completions", json=chat_body(f"question {i}"))

            tasks = [asyncio.ensure_future(call(i)) for i in range(100)]
            running = 0
            for _ in range(200):
                running = (await victim.stats())["num_requests_running"]
                if running >= 15:
                    break
                await asyncio.sleep(0.05)
            assert running >= 15, f"setup: the victim never had 15 calls running (had {running})"
            victim.kill()
            rs = await asyncio.wait_for(asyncio.gather(*tasks), 60)
            failed = [f"{r.status_code} {r.text[:200]}" for r in rs if r.status_code != 200]
            assert not failed, f"{len(failed)} of 100 calls in flight failed when one upstream died: {failed[:3]}"
            assert metric(reg, "vgate_upstream_up", upstream=victim.url) == 0, "the dead upstream's breaker is open"
            assert metric(reg, "vgate_upstream_breaker_transitions_total", upstream=victim.url, state="open") >= 1
            assert metric(reg, "vgate_upstream_up", upstream=survivor.url) == 1

            await survivor.reset()
            victim_picks = picks(gw, victim.url)
            later = await asyncio.wait_for(asyncio.gather(*(call(i) for i in range(20))), 30)
            assert [r.status_code for r in later] == [200] * 20
            assert await survivor.requests() == 20, "every later call went to the survivor, once"
            assert picks(gw, victim.url) == victim_picks, "no later call was sent to the dead upstream"


# --------------------------------------------------------------------------- 4. saturation


async def test_a_saturated_fleet_answers_429_at_once(fleet):
    """vLLM with 4 slots and 24 calls: its waiting queue holds ~20, far over the threshold of 2.
    Once the gateway has seen that (two scrapes, 0.1 s apart), a new interactive call gets a 429
    upstream_overloaded with Retry-After at once, instead of joining vLLM's queue."""
    tiny = fleet["tiny"]
    await reset(tiny)
    async with gateway(tiny.url, saturation_queue_threshold=2, metrics_scrape_interval_s=0.1, **QUIET) as gw:
        reg = gw.state.metrics.registry
        flood = [asyncio.ensure_future(gw.client.post("/v1/chat/completions", json=chat_body(f"flood {i}")))
                 for i in range(24)]
        saturation = 0.0
        for _ in range(200):
            saturation = metric(reg, "vgate_upstream_saturation", upstream=tiny.url)
            if saturation >= 1:
                break
            await asyncio.sleep(0.05)
        assert saturation >= 1, f"setup: the gateway never saw the upstream saturated ({saturation})"
        t0 = time.perf_counter()
        r = await gw.client.post("/v1/chat/completions", json=chat_body("one more"))
        elapsed = time.perf_counter() - t0
        shed = {f"{s.labels['model']}/{s.labels['priority']}": s.value for fam in reg.collect() for s in fam.samples
                if s.name == "vgate_shed_total" and s.labels["reason"] == "saturated"}
        flooded = await asyncio.wait_for(asyncio.gather(*flood), 60)
    assert r.status_code == 429, r.text
    err = r.json()["error"]
    assert err["type"] == "upstream_overloaded" and {"message", "type", "param", "code"} <= err.keys()
    assert int(r.headers["retry-after"]) >= 1
    assert elapsed < 1.0, f"a saturated fleet should refuse at once, took {elapsed:.2f} s"
    assert sum(shed.values()) >= 1 and set(shed) == {f"{MODEL}/interactive"}, (
        f"vgate_shed_total{{reason=saturated}} should count the refusal under model={MODEL}, priority=interactive; "
        f"got {shed}")
    for f in flooded:  # admitted before the saturation showed, or refused the same clean way
        assert f.status_code == 200 or (f.status_code == 429 and f.json()["error"]["type"] == "upstream_overloaded")
    assert sum(f.status_code == 200 for f in flooded) >= 4


# --------------------------------------------------------------------------- 5. priorities


async def _interactive_during_batch(gw, headers: dict[str, str]) -> tuple[list[float], float]:
    t0 = time.perf_counter()
    batch = asyncio.ensure_future(gw.client.post(
        "/predict", json={"signature": PREDICT_SIG, "batch": [{"q": f"batch item {i}"} for i in range(300)]},
        timeout=120))
    await asyncio.sleep(0.5)  # the batch holds every slot, its rest waits in the gateway's queue
    assert not batch.done(), "setup: the batch should still be running"
    latencies: list[float] = []

    async def one(i: int) -> None:
        t = time.perf_counter()
        r = await gw.client.post("/predict", json={"signature": PREDICT_SIG, "inputs": {"q": f"urgent {i}"}},
                                 headers=headers)
        assert r.status_code == 200, r.text
        latencies.append(time.perf_counter() - t)

    singles = []
    for i in range(10):
        singles.append(asyncio.ensure_future(one(i)))
        await asyncio.sleep(0.1)
    await asyncio.wait_for(asyncio.gather(*singles), 60)
    rb = await asyncio.wait_for(batch, 90)
    wall = time.perf_counter() - t0
    assert rb.status_code == 200 and rb.json()["succeeded"] == 300, rb.text[:300]
    return latencies, wall


async def test_interactive_calls_are_not_starved_by_a_batch(fleet):
    """A 300-item /predict batch on one upstream with 16 slots; single /predict calls sent meanwhile
    take the next free slot ahead of the batch's waiting items. The same calls marked
    ``X-Vgate-Priority: batch`` wait behind the batch: priority is what made the difference."""
    sim = fleet["fast"]
    async with gateway(sim.url, max_inflight_per_upstream=16, **QUIET) as gw:
        fast, batch_wall = await _interactive_during_batch(gw, {})
    async with gateway(sim.url, max_inflight_per_upstream=16, **QUIET) as gw:
        lowered, _ = await _interactive_during_batch(gw, {"X-Vgate-Priority": "batch"})
    p50, p50_lowered = statistics.median(fast), statistics.median(lowered)
    print(f"batch {batch_wall:.2f} s; interactive p50 {p50:.2f} s; lowered p50 {p50_lowered:.2f} s")
    assert p50 < batch_wall / 3, (f"interactive p50 {p50:.2f} s during a batch of {batch_wall:.2f} s: "
                                  "interactive calls should go ahead of the batch's queue")
    assert p50_lowered > 3 * p50 and p50_lowered > batch_wall / 3, (
        f"lowered to batch, the same calls should wait behind the batch: p50 {p50_lowered:.2f} s "
        f"vs {p50:.2f} s interactive (batch {batch_wall:.2f} s)")
