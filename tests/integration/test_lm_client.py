"""The LM client against the simulator: accounting, retries, timeouts, error mapping, the in-flight cap."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import pytest
from structlog.testing import capture_logs

from app.context import RequestContext, request_context
from app.errors import (
    NotFoundError,
    OverloadedError,
    UpstreamBadRequestError,
    UpstreamError,
    UpstreamTimeoutError,
    UpstreamUnavailableError,
)
from app.metrics import Metrics
from app.services.lm import ContentDelta, Done, LMClient
from tests.support import completion_chunks, fake_upstream, free_port, gateway, make_settings, sim_reset, sim_stats

MSG = [{"role": "user", "content": "Tell me about continuous batching."}]


@asynccontextmanager
async def client(upstream: str, **kw) -> AsyncIterator[tuple[LMClient, Metrics]]:
    metrics = Metrics()
    lm = LMClient(make_settings(upstream, **kw), metrics)
    try:
        yield lm, metrics
    finally:
        await lm.aclose()


def sample(metrics: Metrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


async def test_chat_accounts_usage_cost_latency(sim_url):
    async with client(sim_url, prices={"sim-model": {"input_per_1k": 1.0, "output_per_1k": 2.0}}) as (lm, m):
        r = await lm.chat(MSG, max_tokens=40)
    assert r.content and r.model == "sim-model"
    assert r.usage.prompt_tokens > 0 and 0 < r.usage.completion_tokens <= 40
    assert r.cost_usd == pytest.approx((r.usage.prompt_tokens * 1.0 + r.usage.completion_tokens * 2.0) / 1000)
    assert r.ttft_ms is not None and 0 <= r.ttft_ms <= r.latency_ms
    assert r.attempts == 1
    assert sample(m, "vgate_prompt_tokens_total", model="sim-model", route="predict") == r.usage.prompt_tokens
    assert sample(m, "vgate_completion_tokens_total", model="sim-model", route="predict") == r.usage.completion_tokens
    assert sample(m, "vgate_cost_usd_total", model="sim-model", route="predict") == pytest.approx(r.cost_usd)
    assert sample(m, "vgate_upstream_requests_total", model="sim-model", outcome="ok") == 1


async def test_default_price_applies_to_unpriced_models(sim_url):
    async with client(sim_url) as (lm, _):
        r = await lm.chat(MSG, max_tokens=10)
    assert r.cost_usd == pytest.approx((r.usage.prompt_tokens * 0.01 + r.usage.completion_tokens * 0.03) / 1000)


async def test_request_id_propagates_to_upstream_unique_per_call(sim_url):
    """vLLM refuses a request id that is already running: each call of a request gets its own."""
    ctx = RequestContext("abc-123")
    token = request_context.set(ctx)
    try:
        async with client(sim_url) as (lm, _):
            rs = await asyncio.gather(*(lm.chat(MSG, max_tokens=5) for _ in range(3)))
            later = await lm.chat(MSG, max_tokens=5)
    finally:
        request_context.reset(token)
    ids = [r.upstream_id for r in [*rs, later]]
    assert len(set(ids)) == 4 and all(re.fullmatch(r"chatcmpl-abc-123-\d+", i) for i in ids)


async def test_explicit_request_id_is_numbered_too(sim_url):
    async with client(sim_url) as (lm, _):
        a = await lm.chat(MSG, max_tokens=5, request_id="abc")
        b = await lm.chat(MSG, max_tokens=5, request_id="abc")
    assert a.upstream_id != b.upstream_id and a.upstream_id.startswith("chatcmpl-abc-")


async def test_stream_yields_deltas_then_done(sim_url):
    events = []
    async with client(sim_url) as (lm, _):
        async for ev in lm.stream_chat(MSG, max_tokens=20):
            events.append(ev)
    deltas = [e for e in events if isinstance(e, ContentDelta)]
    assert len(deltas) > 1 and isinstance(events[-1], Done)
    assert "".join(d.text for d in deltas) == events[-1].result.content


async def test_retries_transient_503_then_succeeds(sim_url):
    async with client(sim_url, max_retries=3) as (lm, m):
        r = await _chat_with_fault(lm, "status=503;times=2", "r1")
    assert r.attempts == 3
    assert sample(m, "vgate_upstream_retries_total", model="sim-model", reason="503") == 2


async def _chat_with_fault(lm: LMClient, fault: str, rid: str, **params):
    # group: the simulator counts a fault's `times` by it, as each attempt carries its own request id
    return await lm.chat(MSG, max_tokens=params.pop("max_tokens", 5), request_id=rid,
                         headers={"x-sim-fault": f"{fault};group={rid}"}, **params)


async def test_each_attempt_carries_its_own_request_id():
    """A retry must not reuse the id of an attempt vLLM may still be aborting ("already running")."""
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/models":
            return httpx.Response(200, json={"data": [{"id": "m"}]})
        seen.append(request.headers["x-request-id"])
        if len(seen) == 1:
            return httpx.Response(503, json={"error": {"message": "busy"}})
        return fake_upstream(completion_chunks('{"a": 1}')).handler(request)

    token = request_context.set(RequestContext("rq"))
    try:
        r = await _chat_against(httpx.MockTransport(handler))
    finally:
        request_context.reset(token)
    assert r.attempts == 2 and len(set(seen)) == 2 and all(re.fullmatch(r"rq-\d+", i) for i in seen)


async def test_two_requests_with_the_same_client_request_id_never_share_an_upstream_id(sim_url):
    """A client that retries with its X-Request-Id while vLLM still runs (or aborts) the first call,
    or two clients that pick the same id, must not collide upstream ("already running")."""
    async with gateway(sim_url, log_level="INFO") as gw:
        async def one() -> str:
            r = await gw.client.post("/predict", headers={"x-request-id": "client-retry-7"},
                                     json={"signature": "q -> a", "inputs": {"q": "x"}})
            assert r.status_code == 200 and r.json()["request_id"] == "client-retry-7"
            return r.json()["request_id"]

        with capture_logs() as logs:
            await asyncio.gather(one(), one(), one())
    ids = [e["upstream_request_id"] for e in logs if e["event"] == "upstream_call"]
    assert len(ids) == 3 and len(set(ids)) == 3 and all(i.startswith("client-retry-7-") for i in ids)


async def test_persistent_503_gives_up_with_503_and_retry_hint(sim_url):
    async with client(sim_url, max_retries=2) as (lm, m):
        with pytest.raises(UpstreamUnavailableError) as ei:
            await _chat_with_fault(lm, "status=503", "r2")
    err = ei.value
    assert err.status_code == 503 and err.details["attempts"] == 3
    assert err.headers()["Retry-After"]
    assert sample(m, "vgate_upstream_retries_total", model="sim-model", reason="503") == 2


async def test_500_is_not_retried(sim_url):
    async with client(sim_url, max_retries=3) as (lm, m):
        with pytest.raises(UpstreamError) as ei:
            await _chat_with_fault(lm, "status=500", "r3")
    assert ei.value.status_code == 502 and ei.value.details["attempts"] == 1
    assert sample(m, "vgate_upstream_retries_total", model="sim-model", reason="500") == 0


async def test_429_honours_retry_after(sim_url):
    t0 = time.perf_counter()
    async with client(sim_url, max_retries=2, retry_backoff_initial_s=0.0, retry_backoff_max_s=0.0) as (lm, _):
        r = await _chat_with_fault(lm, "status=429;retry_after=1;times=1", "r4")
    assert r.attempts == 2
    assert time.perf_counter() - t0 >= 1.0  # waited as the upstream asked, not our (zero) backoff


async def test_unreachable_upstream_is_503(sim_url):
    async with client(f"http://127.0.0.1:{free_port()}", max_retries=1) as (lm, m):
        with pytest.raises(UpstreamUnavailableError) as ei:
            await lm.chat(MSG, model="m")
    assert "cannot reach the upstream" in ei.value.message and "127.0.0.1" not in ei.value.message
    assert sample(m, "vgate_upstream_retries_total", model="other", reason="connect") == 1


async def test_read_timeout_before_first_byte_is_retried_then_504(sim_url):
    async with client(sim_url, read_timeout_s=0.3, max_retries=1) as (lm, m):
        with pytest.raises(UpstreamTimeoutError) as ei:
            await _chat_with_fault(lm, "hang=1", "r5")
    assert ei.value.status_code == 504
    assert sample(m, "vgate_upstream_retries_total", model="sim-model", reason="timeout") == 1


async def test_deadline_bounds_retries(sim_url):
    t0 = time.perf_counter()
    async with client(sim_url, read_timeout_s=5, request_timeout_s=0.5, max_retries=5) as (lm, _):
        with pytest.raises(UpstreamTimeoutError):
            await _chat_with_fault(lm, "hang=1", "r6")
    assert time.perf_counter() - t0 < 3  # the 0.5 s deadline, not 6 x 5 s reads


async def test_drop_mid_stream_is_502_without_retry(sim_url):
    async with client(sim_url, max_retries=3) as (lm, m):
        with pytest.raises(UpstreamError) as ei:
            await _chat_with_fault(lm, "drop_after_chunks=3", "r7", max_tokens=50)
    assert ei.value.type == "upstream_stream_error"
    assert sample(m, "vgate_upstream_retries_total", model="sim-model", reason="disconnect") == 0


async def test_error_chunk_after_stream_start(sim_url):
    async with client(sim_url) as (lm, _):
        with pytest.raises(UpstreamError) as ei:
            await _chat_with_fault(lm, "stream_error=1", "r8", max_tokens=50)
    assert ei.value.type == "upstream_stream_error" and ei.value.status_code == 502


async def test_malformed_chunk(sim_url):
    async with client(sim_url) as (lm, _):
        with pytest.raises(UpstreamError) as ei:
            await _chat_with_fault(lm, "malformed=1", "r9", max_tokens=50)
    assert ei.value.type == "upstream_malformed"


async def test_unknown_model_is_404(sim_url):
    async with client(sim_url) as (lm, _):
        with pytest.raises(NotFoundError) as ei:
            await lm.chat(MSG, model="no-such-model")
    assert ei.value.type == "model_not_found"


async def test_prompt_longer_than_context_is_400(sim_url):
    long = [{"role": "user", "content": "word " * 20000}]
    async with client(sim_url) as (lm, _):
        with pytest.raises(UpstreamBadRequestError) as ei:
            await lm.chat(long)
    assert ei.value.status_code == 400 and "maximum context length" in ei.value.message


async def test_inflight_cap_holds(sim_latency_url):
    await sim_reset(sim_latency_url)
    async with client(sim_latency_url, max_inflight_per_upstream=5) as (lm, m):
        results = await asyncio.gather(*(lm.chat(MSG, max_tokens=8) for _ in range(20)))
    assert len(results) == 20
    stats = await sim_stats(sim_latency_url)
    assert stats["peak_num_requests_running"] == 5


async def test_stream_cut_off_without_finish_is_an_error():
    """A stream that ends cleanly but before finish_reason and [DONE] is not a complete answer."""
    chunk = {"id": "x", "model": "m", "choices": [{"index": 0, "delta": {"content": "Half an ans"}}]}
    with pytest.raises(UpstreamError) as ei:
        await _chat_against(fake_upstream([chunk], done=False))
    assert ei.value.type == "upstream_stream_error"


@pytest.mark.parametrize("chunk", [
    "null", "42", '{"choices": ["x"]}', '{"choices": [], "usage": {"prompt_tokens": "abc"}}',
])
async def test_upstream_garbage_is_502_malformed(chunk):
    with pytest.raises(UpstreamError) as ei:
        await _chat_against(fake_upstream([chunk]))
    assert ei.value.type == "upstream_malformed" and ei.value.status_code == 502


async def _chat_against(transport):
    lm = LMClient(make_settings("http://up", default_model="m"), Metrics(), transport=transport)
    try:
        return await lm.chat(MSG)
    finally:
        await lm.aclose()


async def _timed(coro, t0: float):
    try:
        return await coro, time.perf_counter() - t0
    except Exception as exc:  # noqa: BLE001 - the test inspects what each call ended with
        return exc, time.perf_counter() - t0


async def test_queue_time_counts_against_the_deadline(sim_url):
    """2 slots, a 1.5 s upstream, a 2 s deadline, 20 calls: nobody waits in line past the deadline
    (the old client had the last one wait 15 s), and those that cannot start get 429 + Retry-After."""
    slow = {"x-sim-fault": "slow_first_token_ms=1500"}
    async with client(sim_url, max_inflight_per_upstream=2, max_connections=2, request_timeout_s=2.0, log_level="INFO",
                      read_timeout_s=5, max_retries=0) as (lm, m):
        t0 = time.perf_counter()
        with capture_logs() as logs:
            outcomes = await asyncio.gather(*(_timed(lm.chat(MSG, max_tokens=3, headers=slow), t0)
                                              for _ in range(20)))
    ok = [r for r, _ in outcomes if not isinstance(r, Exception)]
    shed = [r for r, _ in outcomes if isinstance(r, OverloadedError) and r.type == "upstream_overloaded"]
    assert len(ok) == 2  # the two that held the slots
    # the rest: handed a freed slot at 1.5 s, out of time at 2 s (how many depends on this machine's timing)
    assert len(shed) >= 12 and all(e.status_code == 429 and e.headers().get("Retry-After") for e in shed)
    others = [r for r, _ in outcomes if isinstance(r, Exception) and r not in shed]
    assert all(isinstance(e, UpstreamTimeoutError) for e in others)  # got a slot at 1.5 s, out of time at 2 s
    assert max(t for _, t in outcomes) < 3.5  # bounded by the 2 s deadline, not by the length of the line
    queue = dict(model="sim-model", priority="interactive")
    assert sample(m, "vgate_queue_seconds_count", **queue) == 20
    assert sample(m, "vgate_queue_seconds_sum", **queue) > len(shed) * 1.5  # the shed ones waited
    assert sample(m, "vgate_shed_total", **queue, reason="deadline") == len(shed)
    calls = [e for e in logs if e["event"] == "upstream_call"]
    assert len(calls) == 20 and all("queue_ms" in e for e in calls)
    assert max(e["queue_ms"] for e in calls) >= 1500  # a call's log line says how long it queued ...
    assert all(e["latency_ms"] < 2100 for e in calls)  # ... and its latency is the upstream's alone


async def test_a_full_queue_is_refused_at_once(sim_url):
    """Beyond the queue's bound, calls fail at once instead of joining the line."""
    slow = {"x-sim-fault": "slow_first_token_ms=600"}
    async with client(sim_url, max_inflight_per_upstream=1, max_queued_per_model=2, max_retries=0) as (lm, m):
        t0 = time.perf_counter()
        outcomes = await asyncio.gather(*(_timed(lm.chat(MSG, max_tokens=3, headers=slow), t0) for _ in range(6)))
    refused = [(r, t) for r, t in outcomes if isinstance(r, OverloadedError)]
    served = [(r, t) for r, t in outcomes if not isinstance(r, Exception)]
    assert len(served) == 3 and len(refused) == 3  # one in flight, two queued, three refused
    assert all(r.type == "upstream_overloaded" and r.retry_after_s >= 1 for r, _ in refused)
    assert max(t for _, t in refused) < min(t for _, t in served)  # refused before the first call even ended
    assert sample(m, "vgate_shed_total", model="sim-model", priority="interactive", reason="queue_full") == 3
    # refused calls never reached the upstream: not its errors, not its latency
    assert sample(m, "vgate_upstream_requests_total", model="sim-model", outcome="shed") == 3
    assert sample(m, "vgate_upstream_errors_total", model="sim-model", type="upstream_overloaded") == 0
    assert sample(m, "vgate_upstream_request_duration_seconds_count", model="sim-model") == 3


async def test_overloaded_is_a_429_with_retry_after_through_predict(sim_url):
    async with gateway(sim_url, max_inflight_per_upstream=1, max_queued_per_model=0, max_retries=0) as gw:
        # another call holds the only slot for 0.6 s
        first = asyncio.ensure_future(gw.state.lm.chat(MSG, max_tokens=3,
                                                       headers={"x-sim-fault": "slow_first_token_ms=600"}))
        await asyncio.sleep(0.2)
        r = await gw.client.post("/predict", json={"signature": "q -> a", "inputs": {"q": "x"}})
        assert (await first).content
    assert r.status_code == 429 and r.headers["retry-after"] == "1"
    err = r.json()["error"]
    assert err["type"] == "upstream_overloaded" and err["retryable"] is True and err["request_id"]


async def test_calls_cancelled_in_the_queue_are_not_upstream_latency(sim_url):
    """Four calls wait behind one slot and are cancelled: they never reached the upstream, so they
    add nothing to its latency histogram (they would drag it towards 0 exactly under overload)."""
    slow = {"x-sim-fault": "slow_first_token_ms=600"}
    async with client(sim_url, max_inflight_per_upstream=1, max_retries=0) as (lm, m):
        tasks = [asyncio.ensure_future(lm.chat(MSG, max_tokens=3, headers=slow)) for _ in range(5)]
        await asyncio.sleep(0.3)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    assert sample(m, "vgate_upstream_requests_total", model="sim-model", outcome="cancelled") == 5
    assert sample(m, "vgate_upstream_request_duration_seconds_count", model="sim-model") == 1
    assert sample(m, "vgate_queue_seconds_count", model="sim-model", priority="interactive") == 5


async def test_a_call_cancelled_before_its_first_token_still_counts_its_prompt(sim_url):
    """vLLM took the call (200) and is prefilling when the caller leaves: the prompt's tokens were
    spent, so they are counted (estimated), not $0."""
    seen: list = []
    slow = {"x-sim-fault": "slow_first_token_ms=2000"}
    async with client(sim_url, max_retries=0) as (lm, m):
        task = asyncio.ensure_future(lm.chat(MSG, max_tokens=5, headers=slow, on_usage=seen.append))
        await asyncio.sleep(0.5)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    [usage] = seen
    assert usage.estimated and usage.usage.prompt_tokens > 0 and usage.usage.completion_tokens == 0
    assert usage.cost_usd > 0
    assert sample(m, "vgate_prompt_tokens_total", model="sim-model", route="predict") == usage.usage.prompt_tokens
