"""The upstream admission queue: FIFO, bounded, deadline-aware, no slot ever lost."""

from __future__ import annotations

import asyncio
import time

import pytest

from app.services.lm.admission import Admission, Overloaded


def _deadline(s: float) -> float:
    return time.perf_counter() + s


async def test_slots_are_handed_over_in_arrival_order():
    adm = Admission(slots=1, max_queued=10)
    await adm.acquire(_deadline(5))
    order: list[int] = []

    async def waiter(i: int) -> None:
        await adm.acquire(_deadline(5))
        order.append(i)
        adm.release()

    tasks = [asyncio.create_task(waiter(i)) for i in range(5)]
    await asyncio.sleep(0)
    assert adm.queued == 5
    adm.release()
    await asyncio.gather(*tasks)
    assert order == [0, 1, 2, 3, 4] and adm.in_use == 0 and adm.queued == 0


async def test_queue_bound_refuses_at_once():
    adm = Admission(slots=1, max_queued=1)
    await adm.acquire(_deadline(5))
    queued = asyncio.create_task(adm.acquire(_deadline(5)))
    await asyncio.sleep(0)
    with pytest.raises(Overloaded) as ei:
        await adm.acquire(_deadline(5))
    assert ei.value.reason == "queue_full" and ei.value.status_code == 503
    adm.release()
    await queued
    adm.release()
    assert adm.in_use == 0


async def test_a_deadline_the_queue_cannot_meet_is_refused_at_once():
    adm = Admission(slots=2, max_queued=10)
    adm.hold_s = 1.0  # calls hold a slot ~1 s: slots free up at 2 per second
    await adm.acquire(_deadline(5))
    await adm.acquire(_deadline(5))
    first = asyncio.create_task(adm.acquire(_deadline(0.8)))  # expected wait 0.5 s: may wait
    await asyncio.sleep(0)
    assert adm.queued == 1
    t0 = time.perf_counter()
    with pytest.raises(Overloaded) as ei:
        await adm.acquire(_deadline(0.8))  # second in line: expected wait 1.0 s > 0.8 s
    assert ei.value.reason == "deadline" and time.perf_counter() - t0 < 0.1
    adm.release()
    await first


async def test_waiting_past_the_deadline_is_overloaded_and_leaves_the_line():
    adm = Admission(slots=1, max_queued=10)
    await adm.acquire(_deadline(5))
    with pytest.raises(Overloaded) as ei:
        await adm.acquire(_deadline(0.05))
    assert ei.value.reason == "deadline" and adm.queued == 0
    adm.release()
    assert adm.in_use == 0


async def test_a_cancelled_waiter_never_keeps_a_slot():
    adm = Admission(slots=1, max_queued=10)
    await adm.acquire(_deadline(5))
    waiter = asyncio.create_task(adm.acquire(_deadline(5)))
    await asyncio.sleep(0)
    adm.release()  # hands the slot to the waiter ...
    waiter.cancel()  # ... which is cancelled before it runs
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert adm.in_use == 0 and adm.queued == 0
    await adm.acquire(_deadline(1))  # and the slot is free for the next caller
    assert adm.in_use == 1
