"""Faults of one upstream among two, through every surface: the OpenAI passthrough (stream and not),
/predict, and /agent (JSON and its event stream).

Faults are the simulator's (``x-sim-fault``), put on the gateway's upstream calls by
``FaultTransport`` for one client request id, which also records where each attempt went. For each
fault the client gets a retried success or a clear error in its surface's shape, within the call's
deadline; nothing is counted twice (every request a simulator received is a first attempt or a
counted retry); a stream that already sent bytes to its client is never retried."""

from __future__ import annotations

import asyncio
import json

import pytest

from tests.fleet_calls import (
    QUIET,
    SURFACES,
    Fleet,
    _ids,
    assert_books,
    assert_clear_error,
    assert_retries,
    call,
    distinct_upstreams,
    fleet,
)
from tests.fleet_support import (
    MODEL,
    FaultTransport,
    dead_url,
    metric,
    upstreams,
)
from tests.support import gateway

# --------------------------------------------------------------------------- 5xx


@pytest.mark.parametrize("surface", SURFACES)
async def test_a_5xx_burst_is_retried_on_the_other_upstream(pair, surface):
    """503 on the first two attempts (across the fleet): the first retry goes to the other upstream at
    once, the third attempt succeeds; the client sees only the success."""
    async with fleet(pair) as fl:
        rid = f"burst-{next(_ids)}"
        fl.faults.fault(rid, "status=503", times=2)
        before = await fl.books()
        o = await call(fl, surface, rid)
        after = await fl.books()
    assert o.ok, o.describe()
    where = distinct_upstreams(fl, rid, 3)
    assert where[0] != where[1], f"the first retry goes to the other upstream: {where}"
    assert_retries(fl, "503", 2)
    assert after["ok"] - before["ok"] == 1
    assert_books(before, after)


@pytest.mark.parametrize("surface", SURFACES)
async def test_a_500_is_a_clear_502_and_is_not_retried(pair, surface):
    async with fleet(pair) as fl:
        rid = f"e500-{next(_ids)}"
        fl.faults.fault(rid, "status=500")
        before = await fl.books()
        o = await call(fl, surface, rid)
        after = await fl.books()
    assert_clear_error(o, "upstream_error", 502)
    assert o.error.get("upstream_status") == 500, o.describe()
    distinct_upstreams(fl, rid, 1)
    assert after["retries"] == before["retries"]
    assert_books(before, after)


# --------------------------------------------------------------------------- 429


@pytest.mark.parametrize("surface", SURFACES)
async def test_an_upstream_429_fails_over_without_waiting_its_retry_after(pair, surface):
    """A 429 with Retry-After: 30 from one upstream: the other can take the call now, so the retry
    goes there at once (not 30 s later)."""
    async with fleet(pair) as fl:
        rid = f"r429-{next(_ids)}"
        fl.faults.fault(rid, "status=429;retry_after=30", times=1)
        before = await fl.books()
        o = await call(fl, surface, rid, bound=25)
        after = await fl.books()
    assert o.ok, o.describe()
    where = distinct_upstreams(fl, rid, 2)
    assert where[0] != where[1]
    assert o.elapsed < 10, f"the failover waited for the busy upstream's Retry-After: {o.elapsed:.1f} s"
    assert_books(before, after)


@pytest.mark.parametrize("surface", SURFACES)
async def test_429s_from_every_upstream_pass_their_retry_after_on(pair, surface):
    """Both upstreams answer 429 with Retry-After: 2; with one retry allowed, the client gets a 429
    upstream_overloaded that carries the upstream's Retry-After."""
    async with fleet(pair, max_retries=1) as fl:
        rid = f"all429-{next(_ids)}"
        fl.faults.fault(rid, "status=429;retry_after=2")
        before = await fl.books()
        o = await call(fl, surface, rid)
        after = await fl.books()
    assert_clear_error(o, "upstream_overloaded", 429)
    assert o.error.get("retry_after_s") == 2, o.describe()
    if o.surface != "agent_sse":
        assert o.headers.get("retry-after") == "2", o.describe()
    where = distinct_upstreams(fl, rid, 2)
    assert where[0] != where[1], "the one retry went to the other upstream"
    assert_books(before, after)


# --------------------------------------------------------------------------- slow first token


# A non-stream /v1 call has no first token to time: vLLM answers it whole when it is done, so its
# silence is bounded by the call's deadline alone (test_a_long_non_stream_answer_is_not_a_stall).
TIMED = [x for x in SURFACES if x != "v1"]


@pytest.mark.parametrize("surface", TIMED)
async def test_a_slow_first_token_is_retried_on_the_other_upstream(pair, surface):
    """The first attempt's first token comes after 3 s, past read_timeout_s (0.5 s): nothing reached
    the client yet, so the call is retried on the other upstream and succeeds."""
    async with fleet(pair, read_timeout_s=0.5) as fl:
        rid = f"slow1-{next(_ids)}"
        fl.faults.fault(rid, "slow_first_token_ms=3000", times=1)
        before = await fl.books()
        o = await call(fl, surface, rid)
        after = await fl.books()
    assert o.ok, o.describe()
    where = distinct_upstreams(fl, rid, 2)
    assert where[0] != where[1]
    assert_retries(fl, "timeout", 1)
    assert o.elapsed < 2.9, f"retried after the read timeout, not after the slow token: {o.elapsed:.2f} s"
    assert_books(before, after)


@pytest.mark.parametrize("surface", SURFACES)
async def test_a_slow_first_token_everywhere_is_a_504_within_the_deadline(pair, surface):
    """Every attempt is slow past read_timeout_s (non-stream /v1: past the deadline itself): a 504 by
    the call's deadline, never later."""
    deadline = 2.5
    async with fleet(pair, read_timeout_s=0.4, request_timeout_s=deadline) as fl:
        rid = f"slowall-{next(_ids)}"
        fl.faults.fault(rid, "slow_first_token_ms=5000")
        before = await fl.books()
        o = await call(fl, surface, rid)
        after = await fl.books()
    assert_clear_error(o, "upstream_timeout", 504)
    assert o.elapsed < deadline + 1.5, f"the 504 came after the call's deadline ({deadline} s): {o.elapsed:.2f} s"
    if surface != "v1":  # non-stream: one attempt waits out the deadline
        assert len(fl.faults.attempts_of(rid)) >= 2, "retried at least once, on the other upstream"
    assert_books(before, after)


async def test_a_long_non_stream_answer_is_not_a_stall(pair):
    """vLLM sends a non-stream answer only when it is done: 1.5 s of silence past read_timeout_s
    (0.5 s) is a long generation, not a stall; it is not retried (the work done again) nor held
    against the upstream's breaker."""
    async with fleet(pair, read_timeout_s=0.5) as fl:
        rid = f"long-{next(_ids)}"
        fl.faults.fault(rid, "slow_first_token_ms=1500", times=1)
        before = await fl.books()
        o = await call(fl, "v1", rid)
        after = await fl.books()
    assert o.ok, o.describe()
    assert len(fl.faults.attempts_of(rid)) == 1, "one attempt"
    assert_books(before, after)


async def test_a_hung_upstream_is_a_504_within_the_deadline(pair):
    async with fleet(pair, read_timeout_s=0.4, request_timeout_s=2.0) as fl:
        rid = f"hang-{next(_ids)}"
        fl.faults.fault(rid, "hang=1")
        o = await call(fl, "v1", rid)
    assert_clear_error(o, "upstream_timeout", 504)
    assert o.elapsed < 3.5, o.describe()


# --------------------------------------------------------------------------- malformed


@pytest.mark.parametrize("surface", SURFACES)
async def test_malformed_json_from_the_upstream_is_a_clear_502(pair, surface):
    """The upstream's JSON is cut off (a non-stream body; in a stream, the first event after the role
    chunk). The client gets upstream_malformed in its surface's shape — never a 500, never the broken
    JSON passed on as a 200, never an answer with a hole in it."""
    async with fleet(pair) as fl:
        rid = f"malformed-{next(_ids)}"
        fl.faults.fault(rid, "malformed=1")
        before = await fl.books()
        o = await call(fl, surface, rid)
        after = await fl.books()
    if surface == "v1" and o.status == 200:
        pytest.fail("passthrough, non-stream: vLLM's cut-off JSON body was relayed to the client as a 200 "
                    "(app/services/passthrough/service.py PassthroughService.call returns opened.body as it "
                    "came; read_usage only logs the decode error). It should be a 502 upstream_malformed. "
                    f"Got: {o.describe()}")
    if surface == "v1_stream":
        assert o.status == 200 and o.error is not None, f"a stream already started: an error event. {o.describe()}"
        assert o.error.get("type") == "upstream_malformed", o.describe()
        assert o.events[-1] == "[DONE]", o.describe()
        at = next(i for i, d in enumerate(o.events) if d != "[DONE]" and "error" in json.loads(d))
        assert o.events[at + 1:] == ["[DONE]"], (
            "passthrough stream: after the upstream_malformed error event the relay goes on passing the "
            f"upstream's later chunks ({len(o.events) - at - 2} of them), so a client that reads past the error "
            "gets an answer with a hole in it; the error should end the stream (error event, then [DONE]) — "
            "app/services/passthrough/relay.py StreamReader._event returns the error chunk and keeps relaying")
    else:
        assert_clear_error(o, "upstream_malformed", 502)
    assert_books(before, after)


# --------------------------------------------------------------------------- one upstream down from the start


async def test_with_one_of_two_upstreams_down_from_the_start_every_request_succeeds(pair):
    a = pair[0]
    await a.reset()
    dead = dead_url()
    faults = FaultTransport()
    async with gateway(a.url, upstreams=upstreams(dead, a), lm_transport=faults, request_timeout_s=10.0,
                       **QUIET) as gw:
        fl = Fleet(gw, faults, (a,), {"request_timeout_s": 10.0})
        r = await asyncio.wait_for(gw.client.get("/v1/models"), 15)
        assert r.status_code == 200 and [m["id"] for m in r.json()["data"]] == [MODEL], r.text
        before = await fl.books()
        outcomes = []
        for round_ in range(3):
            for surface in SURFACES:
                outcomes.append(await call(fl, surface, f"down-{round_}-{surface}"))
        after = await fl.books()
        reg = fl.registry
        up_dead, up_live = metric(reg, "vgate_upstream_up", upstream=dead), metric(reg, "vgate_upstream_up",
                                                                                    upstream=a.url)
    failed = [o.describe() for o in outcomes if not o.ok]
    assert not failed, f"{len(failed)} of {len(outcomes)} failed with one upstream down: {failed[:3]}"
    assert up_dead == 0 and up_live == 1
    to_dead = [x for x in faults.attempts if x.upstream == dead]
    assert len(to_dead) <= 2, f"a connect failure opens the breaker at once, yet {len(to_dead)} calls went there"
    assert after["sims"] - before["sims"] == len(outcomes), "the live upstream served each call once"
    assert after["retries"] - before["retries"] == len(to_dead), "each attempt on the dead one was a counted retry"
    assert after["ok"] - before["ok"] == len(outcomes)
