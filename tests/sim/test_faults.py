"""Fault injection: per-request header and configured default."""

from __future__ import annotations

import json
import time

import httpx
import pytest

from app.sim.faults import FaultSpec
from app.sim.server import SimConfig
from tests.sim.helpers import (
    USER,
    events,
    live_sim,
    reset,
    sim_client,
    stats,
    wait_stats,
)

BODY = {"messages": USER}
STREAM = {"messages": USER, "stream": True, "stream_options": {"include_usage": True}}


async def post(client, body=BODY, fault=None, **headers):
    if fault is not None:
        headers["x-sim-fault"] = fault
    return await client.post("/v1/chat/completions", json=body, headers=headers)


def test_spec_parsing():
    assert FaultSpec.parse("status=429; retry_after=1.5,times=2") == FaultSpec(status=429, retry_after=1.5, times=2)
    assert FaultSpec.parse("hang=1").hang and FaultSpec.parse("none") is None
    for bad in ("status", "colour=red", "status=abc", "status=200", "rate=2", "stream_error=0"):
        with pytest.raises(ValueError):
            FaultSpec.parse(bad)
    with pytest.raises(ValueError):
        SimConfig(fault="nonsense")


async def test_status_fault_uses_vllm_error_body_and_retry_after(client):
    r = await post(client, fault="status=429;retry_after=1")
    assert r.status_code == 429 and r.headers["retry-after"] == "1"
    assert r.json()["error"] == {"message": "Simulated fault: HTTP 429", "type": "TooManyRequestsError",
                                 "param": None, "code": 429}
    r = await post(client, fault="status=503")
    assert r.status_code == 503 and "retry-after" not in r.headers
    assert r.json()["error"]["type"] == "ServiceUnavailableError"
    assert (await post(client, fault="status=500")).json()["error"]["type"] == "InternalServerError"
    r = await post(client, fault="bogus=1")
    assert r.status_code == 400 and "x-sim-fault" in r.json()["error"]["message"]


async def test_times_fails_only_the_first_attempts_of_a_request(client):
    codes = [(await post(client, fault="status=500;times=2", **{"X-Request-Id": "r1"})).status_code
             for _ in range(4)]
    assert codes == [500, 500, 200, 200]
    # another request id starts over; without one, the body identifies the request
    assert (await post(client, fault="status=500;times=1", **{"X-Request-Id": "r2"})).status_code == 500
    codes = [(await post(client, fault="status=503;times=1")).status_code for _ in range(2)]
    assert codes == [503, 200]
    await client.post("/sim/reset")
    assert (await post(client, fault="status=500;times=2", **{"X-Request-Id": "r1"})).status_code == 500


async def test_rate_is_a_probability(client):
    codes = [(await post(client, fault="status=503;rate=0.3")).status_code for _ in range(200)]
    assert 30 <= codes.count(503) <= 90
    assert {(await post(client, fault="status=503;rate=0")).status_code for _ in range(20)} == {200}


async def test_configured_fault_applies_unless_the_header_replaces_it():
    async with sim_client(SimConfig(fault="status=503")) as c:
        assert (await post(c)).status_code == 503
        assert (await post(c, fault="none")).status_code == 200
        assert (await post(c, fault="status=429")).status_code == 429
        s = (await c.get("/sim/stats")).json()
        assert s["faults_injected_total"] == {"status": 2}


async def test_malformed(client):
    r = await post(client, fault="malformed=1")
    assert r.status_code == 200
    with pytest.raises(ValueError):
        json.loads(r.text)
    r = await post(client, STREAM, fault="malformed=1")
    blocks = r.text.split("\n\n")
    json.loads(blocks[0][len("data: "):])  # the role chunk is fine
    with pytest.raises(ValueError):
        json.loads(blocks[1][len("data: "):])
    assert blocks[-2] == "data: [DONE]"


async def test_stream_error_after_the_stream_started(client):
    r = await post(client, STREAM, fault="stream_error=3")
    assert r.status_code == 200
    evs = events(r.text)
    assert len(evs) == 5 and evs[-1] == "[DONE]"
    assert evs[0]["choices"][0]["delta"]["role"] == "assistant"
    assert evs[3] == {"error": {"message": "Simulated fault: error after the stream started",
                                "type": "InternalServerError", "param": None, "code": 500}}
    r = await post(client, fault="stream_error=1")
    assert r.status_code == 500 and r.json()["error"]["code"] == 500


async def test_keepalive_comments_between_events(client):
    r = await post(client, STREAM, fault="keepalive=1")
    blocks = r.text.split("\n\n")[:-1]
    assert blocks[0::2] == [": keep-alive"] * (len(blocks) // 2)
    assert events("\n\n".join(blocks[1::2]) + "\n\n")[-1] == "[DONE]"


async def test_slow_first_token(client):
    start = time.perf_counter()
    r = await post(client, fault="slow_first_token_ms=250")
    assert r.status_code == 200 and time.perf_counter() - start >= 0.25
    start = time.perf_counter()
    r = await post(client, STREAM, fault="slow_first_token_ms=250")
    assert events(r.text)[-1] == "[DONE]" and time.perf_counter() - start >= 0.25


@pytest.fixture(scope="module")
def live():
    with live_sim() as (url, _):
        yield url


async def test_drop_cuts_the_stream_mid_body(live):
    async with httpx.AsyncClient(base_url=live) as c:
        received = []
        with pytest.raises(httpx.RemoteProtocolError):
            async with c.stream("POST", "/v1/chat/completions", json=STREAM,
                                headers={"x-sim-fault": "drop_after_chunks=3"}) as r:
                assert r.status_code == 200
                async for line in r.aiter_lines():
                    if line:
                        received.append(line)
        assert len(received) == 3 and "[DONE]" not in received[-1]

        with pytest.raises(httpx.RemoteProtocolError):
            await c.post("/v1/chat/completions", json=BODY, headers={"x-sim-fault": "drop_after_chunks=1"})
        # the server is fine afterwards
        assert (await c.post("/v1/chat/completions", json=BODY)).status_code == 200


async def test_hang_never_answers_and_counts_an_abort_when_the_client_leaves(live):
    await reset(live)
    async with httpx.AsyncClient(base_url=live, timeout=httpx.Timeout(5, read=0.3)) as c:
        with pytest.raises(httpx.ReadTimeout):
            await c.post("/v1/chat/completions", json=BODY, headers={"x-sim-fault": "hang=1"})
    after = await wait_stats(live, lambda s: s["requests_aborted_total"] == 1)
    assert after["faults_injected_total"] == {"hang": 1}
    assert (await stats(live))["num_requests_running"] == 0
