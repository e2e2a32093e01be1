"""Faults of one upstream among two, through every surface: the OpenAI passthrough (stream and not),
/predict, and /agent (JSON and its event stream).

Faults are the simulator's (``x-sim-fault``), put on the gateway's upstream calls by
``FaultTransport`` for one client request id, which also records where each attempt went. For each
fault the client gets a retried success or a clear error in its surface's shape, within the call's
deadline; nothing is counted twice (every request a simulator received is a first attempt or a
counted retry); a stream that already sent bytes to its client is never retried."""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import httpx
import pytest

from tests.fleet_support import (
    MODEL,
    FaultTransport,
    Sim,
    dead_url,
    live_gateway,
    metric,
    metric_sum,
    sims,
    sse_data,
    sse_events,
    upstreams,
)
from tests.support import gateway

SURFACES = ["v1", "v1_stream", "predict", "agent_json", "agent_sse"]
STREAMS = {"v1_stream", "agent_sse"}
QUIET = dict(log_format="json")  # a console traceback takes seconds to render on this machine
LEAKS = ("Simulated fault", "InternalServerError", "127.0.0.1")
_ids = itertools.count(1)


@pytest.fixture(scope="module")
def pair() -> Iterator[tuple[Sim, Sim, Sim]]:
    """Two zero-latency simulators behind the gateway, and one with the latency model whose streams
    arrive in many pieces (for the relay's control test)."""
    with sims([], [], ["--step-ms", "20", "--output-tokens", "20"]) as started:
        yield tuple(started)  # type: ignore[misc]


@dataclass
class Fleet:
    gw: object
    faults: FaultTransport
    sims: tuple[Sim, ...]
    settings: dict = field(default_factory=dict)

    @property
    def registry(self):
        return self.gw.state.metrics.registry  # type: ignore[attr-defined]

    async def books(self) -> dict[str, float]:
        """What the simulators received and what the gateway counted."""
        counts = await asyncio.gather(*(s.requests() for s in self.sims))
        reg = self.registry
        return {"sims": sum(counts), "retries": metric_sum(reg, "vgate_upstream_retries_total"),
                "calls": metric_sum(reg, "vgate_upstream_requests_total"),
                "ok": metric_sum(reg, "vgate_upstream_requests_total", outcome="ok")}


@asynccontextmanager
async def fleet(pair, **settings) -> AsyncIterator[Fleet]:
    a, b, _ = pair
    await asyncio.gather(a.reset(), b.reset())
    faults = FaultTransport()
    kw = dict(QUIET, request_timeout_s=10.0)
    kw.update(settings)
    async with gateway(a.url, upstreams=upstreams(a, b), lm_transport=faults, **kw) as gw:
        yield Fleet(gw, faults, (a, b), kw)


# --------------------------------------------------------------------------- calls, per surface


@dataclass
class Outcome:
    surface: str
    status: int
    headers: httpx.Headers
    text: str
    elapsed: float
    ok: bool = False
    error: dict | None = None  # the error the client got: the body's, or its stream's error event
    events: list = field(default_factory=list)  # v1_stream: data payloads; agent_sse: {"event", "data"}

    def describe(self) -> str:
        return f"{self.surface}: HTTP {self.status} after {self.elapsed:.2f} s: {self.text[:600]}"


def _body(surface: str, text: str) -> tuple[str, dict, dict]:
    if surface in ("v1", "v1_stream"):
        body = {"model": MODEL, "messages": [{"role": "user", "content": text}], "max_tokens": 30}
        if surface == "v1_stream":
            body["stream"] = True
        return "/v1/chat/completions", body, {}
    if surface == "predict":
        return "/predict", {"signature": "q -> a", "inputs": {"q": text}}, {}
    accept = "application/json" if surface == "agent_json" else "text/event-stream"
    return "/agent", {"input": text}, {"accept": accept}


async def call(fl: Fleet, surface: str, rid: str, *, bound: float | None = None) -> Outcome:
    """One request; fails the test if it is not answered within ``bound`` (default: the call's
    deadline, request_timeout_s, plus 5 s)."""
    path, body, headers = _body(surface, f"question {rid}")
    bound = bound if bound is not None else fl.settings["request_timeout_s"] + 5
    t0 = time.perf_counter()
    try:
        r = await asyncio.wait_for(fl.gw.client.post(path, json=body, headers={"x-request-id": rid, **headers}),
                                   bound)
    except TimeoutError:
        pytest.fail(f"{surface}: request {rid} hung past {bound} s (its deadline plus a margin)")
    o = Outcome(surface, r.status_code, r.headers, r.text, time.perf_counter() - t0)
    assert r.status_code != 500, f"an unhandled error, never a clean one: {o.describe()}"
    is_stream = r.status_code == 200 and r.headers.get("content-type", "").startswith("text/event-stream")
    if surface == "v1_stream" and is_stream:
        o.events = sse_data(r.text)
        for d in o.events:
            if d != "[DONE]":
                try:
                    json.loads(d)
                except ValueError:
                    pytest.fail(f"the client got an event that is not JSON: {d[:200]!r} in {o.describe()}")
        errors = [e["error"] for e in map(json.loads, (d for d in o.events if d != "[DONE]")) if "error" in e]
        o.error = errors[0] if errors else None
        o.ok = not errors and bool(o.events) and o.events[-1] == "[DONE]"
    elif surface == "agent_sse" and is_stream:
        o.events = sse_events(r.text)
        errors = [e["data"] for e in o.events if e["event"] == "error"]
        o.error = errors[0] if errors else None
        o.ok = bool(o.events) and o.events[-1]["event"] == "final"
    else:
        try:
            data = r.json()
        except ValueError:
            data = None
        if r.status_code == 200:
            want = {"v1": "choices", "v1_stream": "choices", "predict": "outputs", "agent_json": "answer",
                    "agent_sse": "answer"}[surface]
            o.ok = isinstance(data, dict) and want in data
        elif isinstance(data, dict) and isinstance(data.get("error"), dict):
            o.error = data["error"]
    return o


def assert_clear_error(o: Outcome, type_: str, status: int) -> None:
    """The error in the surface's own shape: a JSON error with the status (vLLM's shape on /v1), or on
    the agent's event stream an ``error`` event carrying it; no upstream text."""
    assert not o.ok and o.error is not None, f"expected a clear {type_} error: {o.describe()}"
    assert o.error.get("type") == type_, f"expected {type_}: {o.describe()}"
    assert o.error.get("message"), o.describe()
    if o.surface == "agent_sse" and o.status == 200:
        assert o.error.get("status") == status, o.describe()
    else:
        assert o.status == status, o.describe()
    if o.surface.startswith("v1"):
        assert {"message", "type", "param", "code"} <= o.error.keys(), f"vLLM's error shape: {o.describe()}"
        assert o.error["code"] == status
    for leak in LEAKS:
        assert leak not in o.text, f"upstream text {leak!r} reached the client: {o.describe()}"


def assert_books(before: dict, after: dict, *, calls: int = 1, replays: int = 0) -> None:
    """Every request a simulator received was a call's first attempt or a retry the gateway counted;
    each call was booked once in vgate_upstream_requests_total, however many attempts it took (a
    /predict replay books its broken attempt too)."""
    d = {k: after[k] - before[k] for k in before}
    assert d["sims"] == calls + d["retries"], (
        f"the simulators received {d['sims']} requests for {calls} call(s) and {d['retries']} counted retries")
    assert d["calls"] == calls + replays, (
        f"vgate_upstream_requests_total rose by {d['calls']} for {calls} call(s) and {replays} replay(s)")


def retries_by_model(fl: Fleet, reason: str) -> dict[str, float]:
    return {s.labels["model"]: s.value for f in fl.registry.collect() for s in f.samples
            if s.name == "vgate_upstream_retries_total" and s.labels.get("reason") == reason}


def assert_retries(fl: Fleet, reason: str, n: int) -> None:
    """``n`` retries for ``reason`` (whatever the model label: test_metrics_name_the_model checks it)."""
    got = retries_by_model(fl, reason)
    assert sum(got.values()) == n, f"vgate_upstream_retries_total{{reason={reason!r}}}: expected {n}, got {got}"


def distinct_upstreams(fl: Fleet, rid: str, n: int) -> list[str]:
    where = [a.upstream for a in fl.faults.attempts_of(rid)]
    assert len(where) == n, f"{rid}: expected {n} upstream attempts, got {where}"
    return where


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


# --------------------------------------------------------------------------- a stream that breaks midway


@pytest.mark.parametrize("fault", ["stream_error=3", "drop_after_chunks=3"])
async def test_a_passthrough_stream_that_breaks_midway_ends_with_an_error_and_is_not_retried(pair, fault):
    """Three events reached the client, then the upstream sent an error event (stream_error) or cut
    the connection (drop): the client gets an error event then [DONE]; nothing is retried (its bytes
    are out) and the call is booked once."""
    async with fleet(pair) as fl:
        rid = f"midway-{next(_ids)}"
        fl.faults.fault(rid, fault)
        before = await fl.books()
        o = await call(fl, "v1_stream", rid)
        after = await fl.books()
    assert o.status == 200, o.describe()
    content = [d for d in o.events if '"delta"' in d]
    assert len(content) >= 2, f"the events before the break reached the client: {o.describe()}"
    ends_with_error = len(o.events) >= 2 and o.events[-1] == "[DONE]" and "error" in json.loads(o.events[-2])
    assert o.error is not None and ends_with_error, (
        f"passthrough stream ({fault}): it should end with an error event, then [DONE]; got {len(o.events)} "
        f"events, error={o.error}, last two={o.events[-2:]}")
    assert o.error.get("message"), o.describe()
    assert o.error.get("type") == "upstream_stream_error", (
        f"passthrough stream ({fault}): the upstream failed mid-stream, but the client's error event says "
        f"{o.error.get('type')!r}" + (
            ": vLLM's own error event {\"error\": {...}} does not decode in StreamReader._event "
            "(app/services/passthrough/relay.py): _Piece declares `error: msgspec.Raw | None`, which msgspec "
            "decodes as `None` only (\"Expected `null`, got `object` - at `$.error`\"), so every upstream error "
            "event is reported as upstream_malformed (and logged as a chunk of an unexpected shape)"
            if o.error.get("type") == "upstream_malformed" else ""))
    distinct_upstreams(fl, rid, 1)
    assert after["retries"] == before["retries"], "a stream whose bytes reached the client is never retried"
    assert after["calls"] - before["calls"] == 1, "booked once"
    assert_books(before, after)


@pytest.mark.parametrize("fault", ["stream_error=3", "drop_after_chunks=3"])
async def test_an_agent_stream_that_breaks_midway_ends_with_an_error_event(pair, fault):
    async with fleet(pair) as fl:
        rid = f"agentmid-{next(_ids)}"
        fl.faults.fault(rid, fault)
        before = await fl.books()
        o = await call(fl, "agent_sse", rid)
        after = await fl.books()
    kinds = [e["event"] for e in o.events]
    assert o.status == 200 and "delta" in kinds, o.describe()
    assert kinds[-1] == "error" and "final" not in kinds, o.describe()
    assert o.error.get("type") == "upstream_stream_error", o.describe()
    distinct_upstreams(fl, rid, 1)
    assert after["retries"] == before["retries"] and after["calls"] - before["calls"] == 1
    assert_books(before, after)


async def test_predict_replays_a_stream_that_broke_midway_on_the_other_upstream(pair):
    """/predict passes nothing on until the end, so a stream cut midway is replayed elsewhere."""
    async with fleet(pair) as fl:
        rid = f"replay-{next(_ids)}"
        fl.faults.fault(rid, "drop_after_chunks=3", times=1)
        before = await fl.books()
        o = await call(fl, "predict", rid)
        after = await fl.books()
        replays = metric_sum(fl.registry, "vgate_upstream_retries_total", reason="replay")
    assert o.ok, o.describe()
    where = distinct_upstreams(fl, rid, 2)
    assert where[0] != where[1], "replayed on the other upstream"
    assert replays == 1
    assert after["ok"] - before["ok"] == 1
    assert_books(before, after, replays=1)


async def test_the_replay_metric_is_labelled_with_the_model(pair):
    async with fleet(pair) as fl:
        rid = f"replaylabel-{next(_ids)}"
        fl.faults.fault(rid, "drop_after_chunks=3", times=1)
        o = await call(fl, "predict", rid)
        labelled = retries_by_model(fl, "replay")
    assert o.ok, o.describe()
    assert labelled == {MODEL: 1.0}, (
        f"vgate_upstream_retries_total{{reason=\"replay\"}} is labelled {labelled}, not {{model={MODEL!r}}}: "
        "LMClient.chat (app/services/lm/client.py) labels it with self.model_label(model or \"\"), the "
        "caller's model argument — None when the request names no model — instead of the resolved model")


@pytest.mark.parametrize("surface", ["v1", "predict"])
async def test_metrics_name_the_model(pair, surface):
    """A call's metrics carry the served model's name once the fleet has listed it (here by the
    monitor, before the call), whether the request names the model (/v1) or not (/predict)."""
    async with fleet(pair) as fl:
        for _ in range(100):  # the monitor's first round lists every upstream's models
            if all(u.models.served for u in fl.gw.state.lm.pool.upstreams):  # type: ignore[attr-defined]
                break
            await asyncio.sleep(0.05)
        rid = f"label-{next(_ids)}"
        fl.faults.fault(rid, "status=503", times=1)
        o = await call(fl, surface, rid)
        requests = {s.labels["model"] for f in fl.registry.collect() for s in f.samples
                    if s.name == "vgate_upstream_requests_total"}
        retries = retries_by_model(fl, "503")
    assert o.ok, o.describe()
    assert (requests, set(retries)) == ({MODEL}, {MODEL}), (
        f"{surface}: vgate_upstream_requests_total is labelled {requests} and vgate_upstream_retries_total "
        f"{set(retries)}, not {{{MODEL!r}}}" + (
            ": UpstreamPool.resolve (app/services/upstreams/pool.py) returns on its hot path (a name listed by a "
            "fresh catalog) before list_models(), the only place that adds served names to UpstreamPool._known; "
            "the monitor fills each upstream's catalog with u.models.list() directly, so a request that names "
            "its model is labelled 'other' by UpstreamPool.label in every metric (tokens, cost, requests, "
            "retries, queue, shed)" if "other" in requests | set(retries) else ""))


# --------------------------------------------------------------------------- relay of a paced stream


async def test_a_stream_that_arrives_in_pieces_is_relayed_whole(pair):
    """Control for the tests above and below: a 20-token stream from the latency model (one event per
    engine step, so the gateway reads it in many pieces) reaches the client whole."""
    paced = pair[2]
    async with gateway(paced.url, **QUIET) as gw:
        r = await asyncio.wait_for(gw.client.post("/v1/chat/completions", json={
            "model": MODEL, "messages": [{"role": "user", "content": "a paced stream"}], "max_tokens": 40,
            "stream": True}), 30)
    events = sse_data(r.text)
    content = [d for d in events if '"content"' in d and '"role"' not in d]
    assert r.status_code == 200
    assert events and events[-1] == "[DONE]" and len(content) >= 20, (
        f"passthrough stream cut after {len(events)} events (last {events[-1][:80] if events else None!r}). "
        "PassthroughService._relay (app/services/passthrough/service.py) must go on with the byte iterator _open "
        "started for the first event: httpx streams a response once, a second response.aiter_raw() raises "
        "StreamConsumed and cuts every stream longer than one network read after its first piece")


# --------------------------------------------------------------------------- an upstream killed mid-stream


async def _home_of(client: httpx.AsyncClient, faults: FaultTransport, session: str) -> str:
    """Warm a session (one short call) and return the upstream it is now pinned to."""
    rid = f"warm-{session}"
    r = await client.post("/v1/chat/completions", headers={"x-request-id": rid, "x-vgate-session": session},
                          json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1})
    assert r.status_code == 200, r.text
    return faults.attempts_of(rid)[0].upstream


async def _stream_and_kill(client, path: str, body: dict, headers: dict, victim: Sim, *, token_events: int,
                           is_token) -> tuple[list[str], bool, int]:
    """Stream; SIGKILL ``victim`` once ``token_events`` token events arrived; read on to the end.
    Returns the raw SSE blocks, whether the connection was cut (no clean end), and the tokens seen
    before the kill."""
    blocks: list[str] = []
    seen = 0
    killed_after = -1
    cut = False
    buf = ""
    try:
        async with client.stream("POST", path, json=body, headers=headers) as r:
            assert r.status_code == 200, (await r.aread()).decode()
            async for text in r.aiter_text():
                buf += text.replace("\r\n", "\n")
                while "\n\n" in buf:
                    block, buf = buf.split("\n\n", 1)
                    blocks.append(block)
                    if is_token(block):
                        seen += 1
                    if killed_after < 0 and seen >= token_events:
                        victim.kill()
                        killed_after = seen
    except (httpx.RemoteProtocolError, httpx.ReadError):
        cut = True
    return blocks, cut, killed_after


async def _calls_settle(registry, expected: float) -> float:
    """vgate_upstream_requests_total once the call's books are closed (just after the stream ends)."""
    for _ in range(40):
        n = metric_sum(registry, "vgate_upstream_requests_total")
        if n >= expected:
            break
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.2)  # and nothing more comes
    return metric_sum(registry, "vgate_upstream_requests_total")


async def _killed_mid_stream(path: str, body: dict, request_id: str, is_token) -> dict:
    """A stream pinned (by its session) to one of two upstreams, which is SIGKILLed after three tokens
    reached the client: what the client got, where the attempts went, what the books say."""
    with sims(["--step-ms", "50", "--output-tokens", "200"], ["--step-ms", "50", "--output-tokens", "200"]) as ss:
        faults = FaultTransport()
        with live_gateway(ss[0].url, lm_transport=faults, upstreams=upstreams(*ss), **QUIET) as (base, app):
            reg = app.state.metrics.registry  # type: ignore[attr-defined]
            async with httpx.AsyncClient(base_url=base, timeout=30) as client:
                home = await _home_of(client, faults, f"{request_id}-home")
                victim, other = (ss[0], ss[1]) if ss[0].url == home else (ss[1], ss[0])
                await other.reset()
                calls = metric_sum(reg, "vgate_upstream_requests_total")
                blocks, cut, killed_after = await asyncio.wait_for(_stream_and_kill(
                    client, path, body, {"x-request-id": request_id, "x-vgate-session": f"{request_id}-home"},
                    victim, token_events=3, is_token=is_token), 30)
                after = await _calls_settle(reg, calls + 1)
                other_got = await other.requests()
    return {"text": "\n\n".join(blocks) + "\n\n", "cut": cut, "killed_after": killed_after, "home": home,
            "attempts": [a.upstream for a in faults.attempts_of(request_id)], "other_got": other_got,
            "booked": after - calls}


def _retried_never_booked_once(got: dict) -> None:
    assert got["attempts"] == [got["home"]], "one attempt, never retried"
    assert got["other_got"] == 0, "the other upstream received nothing: no retry after bytes reached the client"
    assert got["booked"] == 1, f"vgate_upstream_requests_total rose by {got['booked']} for one call"


async def test_an_upstream_killed_mid_stream_ends_the_passthrough_stream_with_an_error():
    """The client gets an error event and [DONE]; the call is not retried and is booked once."""
    body = {"model": MODEL, "messages": [{"role": "user", "content": "a long answer"}], "max_tokens": 300,
            "stream": True}
    got = await _killed_mid_stream("/v1/chat/completions", body, "killed-v1",
                                   lambda b: '"content"' in b and '"role"' not in b)
    datas = sse_data(got["text"])
    assert got["killed_after"] >= 0, (
        f"the stream broke before the upstream was killed, after {len(datas)} events (connection cut: {got['cut']}), "
        "with no error event — see test_a_stream_that_arrives_in_pieces_is_relayed_whole")
    assert not got["cut"] and datas[-1] == "[DONE]", f"the stream should end cleanly with [DONE]; {datas[-3:]}"
    error = json.loads(datas[-2]).get("error")
    assert isinstance(error, dict) and error.get("type") and error.get("message"), (
        f"an error event before [DONE]: {datas[-2][:300]}")
    _retried_never_booked_once(got)


async def test_an_upstream_killed_mid_stream_ends_the_agent_stream_with_an_error_event():
    got = await _killed_mid_stream("/agent", {"input": "a long answer"}, "killed-agent",
                                   lambda b: b.startswith("event: delta") or "\nevent: delta" in b)
    events = sse_events(got["text"])
    kinds = [e["event"] for e in events]
    assert got["killed_after"] >= 0, f"the agent stream ended before the kill: {kinds}"
    assert not got["cut"] and kinds[-1] == "error" and "final" not in kinds, f"cut={got['cut']}, events {kinds[-5:]}"
    assert events[-1]["data"].get("type", "").startswith("upstream_"), events[-1]
    _retried_never_booked_once(got)


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
