"""Admission and routing without a network: slots, the per-model queue, priorities, 429s, affinity."""

from __future__ import annotations

import asyncio
import math
import random
import time

import pytest

from app.errors import OverloadedError
from app.metrics import Metrics
from app.services.upstreams.choice import Chooser
from app.services.upstreams.load import LoadReport
from app.services.upstreams.scheduler import Scheduler
from app.services.upstreams.upstream import Upstream
from app.settings import Settings, UpstreamConfig

MODEL = "m"


def _deadline(s: float) -> float:
    return time.perf_counter() + s


def make(*slots: int, max_queued: int = 10, batch_min_share: float = 0.0, policy: str = "load",
         affinity: int = 100) -> tuple[Scheduler, list[Upstream]]:
    settings = Settings(max_inflight_per_upstream=max(slots), max_connections=max(max(slots), 512),
                        saturation_queue_threshold=4)
    ups = []
    for i, n in enumerate(slots):
        u = Upstream(UpstreamConfig(url=f"http://u{i}"), settings)
        u.slots = n
        ups.append(u)
    chooser = Chooser(policy, affinity, rng=random.Random(0))
    sched = Scheduler(lambda model: ups, chooser, max_queued=max_queued, batch_min_share=batch_min_share,
                      metrics=Metrics(), label=lambda m: m)
    return sched, ups


def saturate(u: Upstream, waiting: float) -> None:
    u.scraped, u.report, u.report_at = True, LoadReport(waiting=waiting), time.monotonic()


async def test_slots_are_handed_over_in_arrival_order():
    sched, (u,) = make(1)
    first = await sched.acquire(MODEL, "interactive", _deadline(5))
    order: list[int] = []

    async def waiter(i: int) -> None:
        lease = await sched.acquire(MODEL, "interactive", _deadline(5))
        order.append(i)
        sched.release(lease)

    tasks = [asyncio.create_task(waiter(i)) for i in range(5)]
    await asyncio.sleep(0)
    assert sched.queued(MODEL) == 5
    sched.release(first)
    await asyncio.gather(*tasks)
    assert order == [0, 1, 2, 3, 4] and u.in_use == 0 and sched.queued() == 0


async def test_queue_bound_refuses_at_once_with_a_429():
    sched, (u,) = make(1, max_queued=1)
    lease = await sched.acquire(MODEL, "interactive", _deadline(5))
    queued = asyncio.create_task(sched.acquire(MODEL, "interactive", _deadline(5)))
    await asyncio.sleep(0)
    with pytest.raises(OverloadedError) as ei:
        await sched.acquire(MODEL, "interactive", _deadline(5))
    assert ei.value.reason == "queue_full" and ei.value.status_code == 429 and ei.value.retry_after_s >= 1
    sched.release(lease)
    sched.release(await queued)
    assert u.in_use == 0


async def test_a_deadline_the_queue_cannot_meet_is_refused_at_once():
    sched, (u,) = make(2)
    u.hold_s = 1.0  # calls hold a slot ~1 s: slots free up at 2 per second
    held = [await sched.acquire(MODEL, "interactive", _deadline(5)) for _ in range(2)]
    first = asyncio.create_task(sched.acquire(MODEL, "interactive", _deadline(0.8)))  # expected 0.5 s: may wait
    await asyncio.sleep(0)
    t0 = time.perf_counter()
    with pytest.raises(OverloadedError) as ei:
        await sched.acquire(MODEL, "interactive", _deadline(0.8))  # second in line: expected 1.0 s > 0.8 s
    assert ei.value.reason == "deadline" and time.perf_counter() - t0 < 0.1
    sched.release(held[0])
    sched.release(await first)
    sched.release(held[1])


async def test_waiting_past_the_deadline_is_a_429_and_leaves_the_line():
    sched, (u,) = make(1)
    lease = await sched.acquire(MODEL, "interactive", _deadline(5))
    with pytest.raises(OverloadedError) as ei:
        await sched.acquire(MODEL, "interactive", _deadline(0.05))
    assert ei.value.reason == "deadline" and sched.queued() == 0
    sched.release(lease)
    assert u.in_use == 0


async def test_a_cancelled_waiter_never_keeps_a_slot():
    sched, (u,) = make(1)
    lease = await sched.acquire(MODEL, "interactive", _deadline(5))
    waiter = asyncio.create_task(sched.acquire(MODEL, "interactive", _deadline(5)))
    await asyncio.sleep(0)
    sched.release(lease)  # hands the slot to the waiter ...
    waiter.cancel()  # ... which is cancelled before it runs
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert u.in_use == 0 and sched.queued() == 0 and sched.running(MODEL) == {"interactive": 0, "batch": 0}
    await sched.acquire(MODEL, "interactive", _deadline(1))  # and the slot is free for the next caller
    assert u.in_use == 1


async def test_interactive_calls_overtake_a_waiting_batch():
    sched, (u,) = make(2, max_queued=100)
    held = [await sched.acquire(MODEL, "batch", _deadline(5)) for _ in range(2)]
    got: list[str] = []

    async def call(priority: str, tag: str) -> None:
        lease = await sched.acquire(MODEL, priority, _deadline(5))
        got.append(tag)
        await asyncio.sleep(0)
        sched.release(lease)

    batch = [asyncio.create_task(call("batch", f"b{i}")) for i in range(5)]
    await asyncio.sleep(0)
    inter = asyncio.create_task(call("interactive", "i"))
    await asyncio.sleep(0)
    sched.release(held[0])
    await asyncio.sleep(0)
    assert got == ["i"]  # the newest call, but interactive: first through
    sched.release(held[1])
    await asyncio.gather(inter, *batch)
    assert got[1:] == [f"b{i}" for i in range(5)]


async def test_a_batch_keeps_its_floor_while_interactive_calls_wait():
    sched, (u,) = make(10, max_queued=100, batch_min_share=0.2)  # floor: 2 of the 10 slots
    held = [await sched.acquire(MODEL, "interactive", _deadline(5)) for _ in range(10)]
    batch = [asyncio.create_task(sched.acquire(MODEL, "batch", _deadline(5))) for _ in range(3)]
    inter = [asyncio.create_task(sched.acquire(MODEL, "interactive", _deadline(5))) for _ in range(5)]
    await asyncio.sleep(0)
    for lease in held[:5]:
        sched.release(lease)
    await asyncio.sleep(0)
    assert sum(t.done() for t in batch) == 2  # below the floor, batch goes first; at it, interactive
    assert sum(t.done() for t in inter) == 3
    for t in [*batch, *inter]:
        t.cancel()


async def test_saturation_refuses_interactive_at_once_but_a_batch_waits_it_out():
    sched, (a, b) = make(4, 4)
    saturate(a, 10)
    saturate(b, 4)  # waiting 4 >= threshold 4
    with pytest.raises(OverloadedError) as ei:
        await sched.acquire(MODEL, "interactive", _deadline(5))
    assert ei.value.reason == "saturated" and ei.value.status_code == 429
    assert sched.refusal(MODEL, 10)[0] == "saturated"  # a batch arriving now is refused whole
    waiting = asyncio.create_task(sched.acquire(MODEL, "batch", _deadline(5)))
    await asyncio.sleep(0.01)
    assert not waiting.done()
    saturate(b, 0)
    sched.dispatch()  # what the monitor does after a scrape
    lease = await waiting
    assert lease.upstream is b


async def test_batch_calls_leave_headroom_for_interactive_ones():
    sched, (u,) = make(4)
    saturate(u, 2)  # half the threshold of 4: batch stops here, interactive does not
    batch = asyncio.create_task(sched.acquire(MODEL, "batch", _deadline(5)))
    await asyncio.sleep(0.01)
    assert not batch.done()
    lease = await sched.acquire(MODEL, "interactive", _deadline(5))
    assert lease.upstream is u
    batch.cancel()


async def test_a_waiting_call_takes_the_first_slot_freed_on_any_upstream():
    sched, (a, b) = make(1, 1)
    la = await sched.acquire(MODEL, "interactive", _deadline(5))
    lb = await sched.acquire(MODEL, "interactive", _deadline(5))
    assert {la.upstream, lb.upstream} == {a, b}
    waiting = asyncio.create_task(sched.acquire(MODEL, "interactive", _deadline(5)))
    await asyncio.sleep(0)
    sched.release(lb)
    assert (await waiting).upstream is lb.upstream


async def test_the_less_loaded_upstream_is_chosen():
    sched, (a, b) = make(10, 10)
    for _ in range(3):
        a.took()
    for _ in range(5):
        lease = await sched.acquire(MODEL, "interactive", _deadline(5))
        assert lease.upstream is b or b.in_use > a.in_use - 1
    assert a.in_use == b.in_use == 4 or abs(a.in_use - b.in_use) <= 1


async def test_weight_scales_the_load():
    sched, (a, b) = make(100, 100)
    b.weight = 3.0
    for _ in range(40):
        await sched.acquire(MODEL, "interactive", _deadline(5))
    assert b.in_use == pytest.approx(30, abs=2) and a.in_use == pytest.approx(10, abs=2)


async def test_a_failed_upstream_is_set_aside_for_the_retry():
    sched, (a, b) = make(2, 2)
    for _ in range(5):
        lease = await sched.acquire(MODEL, "interactive", _deadline(5), exclude={a})
        assert lease.upstream is b
        sched.release(lease)
    only = make(2)[0]
    lease = await only.acquire(MODEL, "interactive", _deadline(5), exclude=set(only._candidates(MODEL)))
    assert lease is not None  # the only upstream is retried rather than nothing


async def test_prefix_affinity_keeps_a_prefix_home_until_it_is_full():
    sched, (a, b) = make(3, 3)
    leases = [await sched.acquire(MODEL, "interactive", _deadline(5), affinity=42) for _ in range(3)]
    home = leases[0].upstream
    assert all(lease.upstream is home for lease in leases) and leases[0].how == "load"
    assert [lease.how for lease in leases[1:]] == ["affinity", "affinity"]
    spill = await sched.acquire(MODEL, "interactive", _deadline(5), affinity=42)
    assert spill.upstream is not home and spill.how == "spill"
    sched.release(leases[0])
    back = await sched.acquire(MODEL, "interactive", _deadline(5), affinity=42)
    assert back.upstream is home and back.how == "affinity"


async def test_the_affinity_memory_is_bounded():
    sched, _ = make(1000, affinity=10)
    for key in range(50):
        sched.release(await sched.acquire(MODEL, "interactive", _deadline(5), affinity=key))
    assert len(sched.chooser._affinity) == 10


async def test_stale_metrics_count_as_saturated_but_a_server_without_them_does_not():
    _, (u,) = make(1)
    assert u.saturation() == 0  # never scraped (llama.cpp): the gateway's own counts decide
    saturate(u, 0)
    assert u.saturation() == 0
    u.report_at -= u.settings.metrics_stale_s + 1
    assert math.isinf(u.saturation())


async def test_batch_calls_take_at_most_their_share_of_the_slots_while_interactive_calls_come():
    sched, (u,) = make(10, max_queued=100)
    sched.batch_max_share = 0.3
    alone = [await sched.acquire(MODEL, "batch", _deadline(5)) for _ in range(10)]
    assert u.in_use == 10  # a batch alone takes every slot
    for lease in alone:
        sched.release(lease)
    sched.release(await sched.acquire(MODEL, "interactive", _deadline(5)))  # an interactive call came
    held = [await sched.acquire(MODEL, "batch", _deadline(5)) for _ in range(3)]
    fourth = asyncio.create_task(sched.acquire(MODEL, "batch", _deadline(5)))
    await asyncio.sleep(0.01)
    assert not fourth.done() and u.in_use == 3  # 3 of 10: the rest stay for interactive calls
    inter = [await sched.acquire(MODEL, "interactive", _deadline(5)) for _ in range(7)]
    assert u.in_use == 10 and all(lease.upstream is u for lease in inter)
    sched.release(held[0])
    assert (await fourth).priority == "batch"


async def test_saturation_by_the_gateways_own_batch_queues_interactive_calls_instead_of_refusing_them():
    sched, (u,) = make(4)
    batch = [await sched.acquire(MODEL, "batch", _deadline(5)) for _ in range(4)]
    saturate(u, 10)  # vLLM's queue is long, and this gateway's batch is in it
    waiting = asyncio.create_task(sched.acquire(MODEL, "interactive", _deadline(5)))
    await asyncio.sleep(0.01)
    assert not waiting.done()  # not a 429: it can overtake the batch
    saturate(u, 2)
    sched.release(batch[0])
    assert (await waiting).priority == "interactive"
    for lease in batch[1:]:
        sched.release(lease)
    assert u.batch_in_use == 0
    saturate(u, 10)  # saturated by others alone: a 429 at once
    with pytest.raises(OverloadedError):
        await sched.acquire(MODEL, "interactive", _deadline(5))


def _sched_over(candidates, **kw) -> Scheduler:
    base = dict(max_queued=100, batch_min_share=0.0, metrics=Metrics(), label=lambda m: m)
    base.update(kw)
    return Scheduler(candidates, Chooser("load", 100, rng=random.Random(0)), **base)


async def test_slots_go_to_the_oldest_waiter_across_the_models_an_upstream_serves():
    _, (u,) = make(1)
    sched = _sched_over(lambda m: [u])
    sched.release(await sched.acquire("a", "interactive", _deadline(5)))  # model "a" comes first in the books
    held = await sched.acquire("a", "interactive", _deadline(5))
    b = asyncio.create_task(sched.acquire("b", "interactive", _deadline(5)))  # waits first
    await asyncio.sleep(0)
    a = [asyncio.create_task(sched.acquire("a", "interactive", _deadline(5))) for _ in range(3)]
    await asyncio.sleep(0)
    sched.release(held)
    await asyncio.sleep(0)
    assert b.done() and not any(t.done() for t in a)  # not "a" again because its entry is older
    for t in a:
        t.cancel()


async def test_the_batch_cap_and_floor_count_each_models_own_calls():
    _, (ua, ub) = make(4, 4)
    sched = _sched_over(lambda m: [ua] if m == "a" else [ub], batch_max_share=0.5)
    await sched.acquire("a", "interactive", _deadline(5))
    [await sched.acquire("a", "batch", _deadline(5)) for _ in range(2)]  # a's cap reached
    lease = await sched.acquire("b", "batch", _deadline(0.5))  # b: no interactive calls, its own slots
    assert lease.upstream is ub


async def test_a_retry_waiting_at_the_head_does_not_hold_up_the_calls_behind_it():
    _, (u0, u1) = make(1, 1)
    sched = _sched_over(lambda m: [u0, u1])
    l0 = await sched.acquire(MODEL, "interactive", _deadline(5))
    await sched.acquire(MODEL, "interactive", _deadline(5))
    retry = asyncio.create_task(sched.acquire(MODEL, "interactive", _deadline(5), exclude={l0.upstream}))
    fresh = asyncio.create_task(sched.acquire(MODEL, "interactive", _deadline(5)))
    await asyncio.sleep(0)
    sched.release(l0)  # a slot frees on the upstream the retry avoids
    await asyncio.sleep(0)
    assert fresh.done() and not retry.done()
    retry.cancel()


async def test_model_entries_do_not_pile_up():
    _, (u,) = make(1)
    sched = _sched_over(lambda m: [u])
    for i in range(500):
        sched.release(await sched.acquire(f"name-{i}", "batch", _deadline(5)))
    assert len(sched._models) < 10


async def test_one_shared_prefix_does_not_leave_the_other_upstreams_idle():
    sched, (u0, u1) = make(256, 256)
    leases = [await sched.acquire(MODEL, "interactive", _deadline(5), affinity=7) for _ in range(100)]
    assert min(u0.in_use, u1.in_use) >= 25, (u0.in_use, u1.in_use)  # the cache still gets most of them
    assert {lease.how for lease in leases} == {"load", "affinity", "spill"}


async def test_interactive_calls_waiting_on_our_batch_are_refused_once_it_is_gone_and_vllm_stays_saturated():
    sched, (u,) = make(1)
    batch = await sched.acquire(MODEL, "batch", _deadline(5))  # the only slot
    saturate(u, 100)  # other clients fill vLLM's queue
    waiting = asyncio.create_task(sched.acquire(MODEL, "interactive", _deadline(5)))
    await asyncio.sleep(0.01)
    t0 = time.perf_counter()
    sched.release(batch)  # nothing of ours left to overtake
    with pytest.raises(OverloadedError) as ei:
        await waiting
    assert ei.value.reason == "saturated" and time.perf_counter() - t0 < 0.2
