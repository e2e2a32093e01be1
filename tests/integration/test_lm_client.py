"""The LM client against the simulator: accounting, retries, timeouts, error mapping, the in-flight cap."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest

from app.errors import (
    NotFoundError,
    UpstreamBadRequestError,
    UpstreamError,
    UpstreamTimeoutError,
    UpstreamUnavailableError,
)
from app.metrics import Metrics
from app.services.lm import ContentDelta, Done, LMClient
from tests.support import fake_upstream, free_port, make_settings, sim_reset, sim_stats

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


async def test_request_id_propagates_to_upstream(sim_url):
    async with client(sim_url) as (lm, _):
        r = await lm.chat(MSG, max_tokens=5, request_id="abc-123")
    assert r.upstream_id == "chatcmpl-abc-123"


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
    return await lm.chat(MSG, max_tokens=params.pop("max_tokens", 5), request_id=rid,
                         headers={"x-sim-fault": fault}, **params)


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


async def test_time_queued_for_a_slot_is_not_part_of_the_deadline(sim_latency_url):
    """Six calls through one slot (~0.27 s each) take longer than one call's deadline; none may time out."""
    async with client(sim_latency_url, max_inflight_per_upstream=1, request_timeout_s=1.0) as (lm, _):
        t0 = time.perf_counter()
        results = await asyncio.gather(*(lm.chat(MSG, max_tokens=30, min_tokens=30) for _ in range(6)))
        elapsed = time.perf_counter() - t0
    assert len(results) == 6 and elapsed > 1.0  # queued longer than the deadline, and still fine
    assert max(r.latency_ms for r in results) < elapsed * 1000 / 2  # latency excludes the queue
