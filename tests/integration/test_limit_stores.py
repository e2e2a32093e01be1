"""The two limit stores side by side (memory, and a real Redis): the same answers to the same
sequence of calls, and what a replica that dies leaves behind is given back."""

from __future__ import annotations

import asyncio

import pytest

from app.services.limits import Limits, MemoryLimitStore, Periods, RedisLimitStore


@pytest.fixture(params=["memory", "redis"])
async def store(request):
    if request.param == "memory":
        yield MemoryLimitStore()
        return
    import redis.asyncio as aredis

    client = aredis.Redis.from_url(request.getfixturevalue("redis_clean"))
    yield RedisLimitStore(client)
    await client.aclose()


async def test_a_reservation_never_settled_goes_back_to_the_budget_after_its_hold(store):
    limits = Limits(budget_usd_daily=1.0)
    p = Periods.at()
    first = await store.reserve("k", limits, "r1", 10, 0.8, 0.3, p)  # its replica dies: never settled
    refused = await store.reserve("k", limits, "r2", 10, 0.5, 10, p)
    await asyncio.sleep(0.4)
    after = await store.reserve("k", limits, "r3", 10, 0.5, 10, p)
    assert first.ok and not refused.ok and refused.limit == "budget_usd_daily"
    assert after.ok and after.spent_day == pytest.approx(0.5)


async def test_a_lease_never_given_back_expires(store):
    limits = Limits(max_concurrent=1)
    p = Periods.at()
    assert (await store.admit("k", limits, "a", 0.3, p)).ok
    held = await store.admit("k", limits, "b", 0.3, p)
    await asyncio.sleep(0.4)
    assert not held.ok and held.limit == "max_concurrent"
    assert (await store.admit("k", limits, "c", 0.3, p)).ok


async def test_settling_replaces_the_reservation_with_the_real_cost_and_records_usage(store):
    limits = Limits(tpm=1000, budget_usd_daily=1.0)
    p = Periods.at()
    r = await store.reserve("k", limits, "r1", 600, 0.6, 10, p)
    await store.settle("k", "r1", "m", 30, 20, 0.05, True, True, p)
    again = await store.reserve("k", limits, "r2", 900, 0.9, 10, p)  # fits only after the settlement
    rows = await store.usage(p.day, p.day, "k", None)
    assert r.ok and again.ok and again.tokens_used == 950 and again.spent_day == pytest.approx(0.95)
    assert rows == [{"day": p.day, "key": "k", "model": "m", "requests": 1, "prompt_tokens": 30,
                     "completion_tokens": 20, "cost_usd": pytest.approx(0.05)}]


async def test_a_call_bigger_than_tpm_may_run_alone_but_not_beside_others(store):
    limits = Limits(tpm=100)
    p = Periods.at()
    alone = await store.reserve("k", limits, "r1", 500, 0.0, 10, p)
    beside = await store.reserve("k", limits, "r2", 10, 0.0, 10, p)
    assert alone.ok and not beside.ok and beside.limit == "tpm" and 0 < beside.retry_after_s <= 60


async def test_the_stores_agree_on_a_sequence(redis_clean):
    import redis.asyncio as aredis

    client = aredis.Redis.from_url(redis_clean)
    stores = [MemoryLimitStore(), RedisLimitStore(client)]
    limits = Limits(rpm=3, tpm=50, max_concurrent=2, budget_usd_daily=0.1)
    p = Periods.at()
    answers: list[list] = [[], []]
    for i, s in enumerate(stores):
        for n in range(5):
            v = await s.admit("k", limits, f"l{n}", 60, p)
            answers[i].append((v.limit, v.requests_used))
            if v.ok and n % 2:
                await s.leave("k", f"l{n}")
            r = await s.reserve("k", limits, f"r{n}", 20, 0.03, 60, p)
            answers[i].append((r.limit, r.tokens_used, round(r.spent_day, 6)))
            if r.ok:
                await s.settle("k", f"r{n}", "m", 5, 5, 0.02, True, True, p)
    await client.aclose()
    assert answers[0] == answers[1]


async def test_settlements_survive_a_redis_that_lost_its_scripts(redis_clean):
    import redis.asyncio as aredis

    client = aredis.Redis.from_url(redis_clean)
    store = RedisLimitStore(client)
    p = Periods.at()
    store.record("k", None, "m", 1, 2, 0.5, False, True, p)
    await store.drain()
    await client.script_flush()  # as after a restart
    store.record("k", None, "m", 3, 4, 0.25, False, True, p)
    await store.drain()
    rows = await store.usage(p.day, p.day, "k", None)
    await client.aclose()
    assert rows[0]["requests"] == 2 and rows[0]["prompt_tokens"] == 4 and rows[0]["cost_usd"] == pytest.approx(0.75)
