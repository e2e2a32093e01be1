"""A stream that breaks midway, through every streaming surface of a gateway in front of two
simulators: the client gets an error event (and [DONE] on /v1), nothing is retried once bytes reached
it, and the call is booked once; a paced stream is relayed whole (the relay's control test)."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from tests.fleet_calls import (
    QUIET,
    _ids,
    assert_books,
    call,
    distinct_upstreams,
    fleet,
    retries_by_model,
)
from tests.fleet_support import (
    MODEL,
    FaultTransport,
    Sim,
    live_gateway,
    metric_sum,
    sims,
    sse_data,
    sse_events,
    upstreams,
)
from tests.support import gateway

# --------------------------------------------------------------------------- a stream that breaks midway


async def faulted_call(fl, kind: str, prefix: str, fault: str, **fault_kw) -> tuple:
    """One ``kind`` call under ``fault``: its request id, outcome, and the books before and after."""
    rid = f"{prefix}-{next(_ids)}"
    fl.faults.fault(rid, fault, **fault_kw)
    before = await fl.books()
    o = await call(fl, kind, rid)
    return rid, o, before, await fl.books()


@pytest.mark.parametrize("fault", ["stream_error=3", "drop_after_chunks=3"])
async def test_a_passthrough_stream_that_breaks_midway_ends_with_an_error_and_is_not_retried(pair, fault):
    """Three events reached the client, then the upstream sent an error event (stream_error) or cut
    the connection (drop): the client gets an error event then [DONE]; nothing is retried (its bytes
    are out) and the call is booked once."""
    async with fleet(pair) as fl:
        rid, o, before, after = await faulted_call(fl, "v1_stream", "midway", fault)
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
        rid, o, before, after = await faulted_call(fl, "agent_sse", "agentmid", fault)
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
        rid, o, before, after = await faulted_call(fl, "predict", "replay", "drop_after_chunks=3", times=1)
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
