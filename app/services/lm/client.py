"""The LM client: every model call of the gateway goes through :class:`LMClient`.

- httpx's API over aiohttp's connection pool (``httpx-aiohttp``): the shared perf notes measure
  plain httpx at ~1/4 of the throughput at 64 concurrent calls.
- Admission (``admission.py``): a cap on calls in flight to the upstream (default 256 = vLLM's
  ``max_num_seqs``, so a batch of 1,000 keeps continuous batching full) and a bounded queue behind
  it; queue time counts against the call's deadline.
- Every call streams from the upstream (``include_usage``), which gives time to first token for
  every call, lets a disconnect abort the sequence in vLLM, and is one code path to get right.
- Retries (``retry.py``) only where safe, bounded by the deadline, never once a chunk has been
  handed to the caller. Each call carries its own request id, ``<request id>-<n>``.
- Accounting: usage, cost, latency, queue time, TTFT, tokens/s per call, in Prometheus and one
  ``upstream_call`` log line — for a call cut short too, with estimated tokens.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any

import httpx
import structlog
from httpx_aiohttp import AiohttpTransport

from app.context import request_context, upstream_request_id
from app.errors import (
    InvalidRequestError,
    UpstreamError,
    UpstreamTimeoutError,
    VGateError,
)
from app.metrics import Metrics
from app.services.lm.admission import Admission, Overloaded
from app.services.lm.calls import Call, CallBooks, UsageCallback
from app.services.lm.errors import AttemptFailed, parse_retry_after, status_failure, transport_failure
from app.services.lm.models import ModelCatalog
from app.services.lm.retry import RetryPolicy, with_retries
from app.services.lm.stream import Chunk, EndOfStream, next_chunk
from app.services.lm.types import Done, LMResult, StreamEvent, UpstreamModel
from app.settings import Settings

log = structlog.get_logger("vgate.lm")



@dataclass(slots=True)
class _Opened:
    response: httpx.Response
    lines: AsyncIterator[str]
    first: Chunk | None  # None: [DONE] at once


def _encode(body: dict[str, Any]) -> bytes:
    """The request body as JSON, or a 422 for what JSON cannot carry (inf/nan, lone surrogates)."""
    try:
        return json.dumps(body, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode()
    except (ValueError, UnicodeEncodeError) as exc:
        raise InvalidRequestError(f"the request holds a value JSON cannot carry: {exc}",
                                  type="invalid_request") from None


class LMClient:
    """Client of one vLLM (OpenAI-compatible) upstream. Owned by the app's lifespan."""

    def __init__(
        self,
        settings: Settings,
        metrics: Metrics,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.upstream = settings.upstream_url
        limits = httpx.Limits(
            max_connections=settings.max_connections,
            max_keepalive_connections=settings.max_connections,
            keepalive_expiry=30,
        )
        headers = {"accept": "application/json"}
        if settings.upstream_api_key is not None:
            headers["authorization"] = f"Bearer {settings.upstream_api_key.get_secret_value()}"
        self._http = httpx.AsyncClient(
            base_url=settings.upstream_url,
            transport=transport or AiohttpTransport(limits=limits),
            timeout=httpx.Timeout(
                connect=settings.connect_timeout_s,
                read=settings.read_timeout_s,
                write=settings.read_timeout_s,
                pool=settings.request_timeout_s,
            ),
            headers=headers,
        )
        assert settings.max_queued_per_upstream is not None  # Settings fills in its default
        self._admission = Admission(settings.max_inflight_per_upstream, settings.max_queued_per_upstream)
        # Gauges read at scrape time: nothing to update on the hot path.
        metrics.upstream_in_flight.labels(upstream=self.upstream).set_function(lambda: self._admission.in_use)
        metrics.upstream_queued.labels(upstream=self.upstream).set_function(lambda: self._admission.queued)
        self._books = CallBooks(metrics, settings, metrics.upstream_queue.labels(upstream=self.upstream))
        self._retry = RetryPolicy(settings.max_retries, settings.retry_backoff_initial_s, settings.retry_backoff_max_s)
        self.models = ModelCatalog(self._http, settings)

    async def aclose(self) -> None:
        await self._http.aclose()

    # ------------------------------------------------------------------ models & health

    async def list_models(self, *, refresh: bool = False) -> list[UpstreamModel]:
        return await self.models.list(refresh=refresh)

    async def resolve_model(self, model: str | None) -> str:
        return await self.models.resolve(model)

    async def health(self) -> bool:
        try:
            r = await self._http.get("/health", timeout=self.settings.connect_timeout_s)
        except httpx.HTTPError:
            return False
        return r.status_code == 200

    def model_label(self, model: str) -> str:
        return self.models.label(model)

    # ------------------------------------------------------------------ calls

    async def chat(
        self,
        messages: list[dict[str, Any]],
        *,
        model: str | None = None,
        route: str = "predict",
        request_id: str | None = None,
        headers: dict[str, str] | None = None,
        on_usage: UsageCallback | None = None,
        **params: Any,
    ) -> LMResult:
        """One chat completion, aggregated. Raises a ``VGateError`` subclass on failure."""
        stream = self.stream_chat(messages, model=model, route=route, request_id=request_id, headers=headers,
                                  on_usage=on_usage, **params)
        async with aclosing(stream):
            async for event in stream:
                if isinstance(event, Done):
                    return event.result
        raise UpstreamError("upstream stream ended without a result")  # unreachable in practice

    async def stream_chat(
        self,
        messages: list[dict[str, Any]],
        *,
        model: str | None = None,
        route: str = "predict",
        request_id: str | None = None,
        headers: dict[str, str] | None = None,
        on_usage: UsageCallback | None = None,
        **params: Any,
    ) -> AsyncIterator[StreamEvent]:
        """Stream one chat completion: deltas as they come, then ``Done`` with the accounting.

        Closing the iterator early (client gone, task cancelled) closes the upstream
        connection, which makes vLLM abort the sequence and free its KV cache. ``on_usage`` gets
        the call's tokens and cost once, whether it completed or was cut short.
        """
        model = await self.resolve_model(model)
        body: dict[str, Any] = {
            "model": model,
            "messages": messages,
            **{k: v for k, v in params.items() if v is not None},
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        content = _encode(body)
        call = Call(model=model, label=self.model_label(model), route=route, messages=messages,
                     tools=params.get("tools"), on_usage=on_usage)
        deadline = call.entered + self.settings.request_timeout_s  # the queue's wait counts against it
        acc = call.acc
        try:
            try:
                await self._admission.acquire(deadline)
            except Overloaded as exc:
                call.outcome = "shed"
                self.metrics.upstream_shed.labels(upstream=self.upstream, reason=exc.reason).inc()
                raise
            finally:
                call.started = time.perf_counter()  # what it waited until now is queue time
            call.admitted = True
            ctx = request_context.get()
            timer = ctx.timer if ctx is not None else None
            if timer is not None:
                timer.enter()
            try:
                call.opened, call.attempts = await with_retries(
                    lambda: self._open_once(call, content, request_id, headers, deadline),
                    self._retry, deadline, lambda n, failed, sleep: self._on_retry(call.label, n, failed, sleep))
                try:
                    chunk = call.opened.first
                    while chunk is not None:
                        events = acc.feed(chunk)
                        if call.ttft is None and events:
                            call.ttft = time.perf_counter() - call.started
                        for ev in events:
                            yield ev
                        if time.perf_counter() > deadline:
                            raise UpstreamTimeoutError("upstream call exceeded its deadline")
                        chunk = await next_chunk(call.opened.lines)
                except EndOfStream:
                    if acc.finish_reason is None:  # cut off: never pass half an answer as whole
                        raise UpstreamError("upstream closed the stream before finishing",
                                            type="upstream_stream_error") from None
                except httpx.TimeoutException as exc:
                    raise UpstreamTimeoutError("upstream stalled mid-stream") from exc
                except httpx.HTTPError as exc:
                    raise UpstreamError(f"upstream connection broke mid-stream ({type(exc).__name__})",
                                        type="upstream_stream_error") from exc
                finally:
                    await call.opened.response.aclose()
            finally:
                if timer is not None:
                    timer.exit()
                self._admission.release(time.perf_counter() - call.started)
            result = self._result(call)
            call.outcome = "ok"
            self._books.close(call, result.usage, estimated=acc.usage is None)
            yield Done(result)
        except VGateError as exc:
            call.error_type = exc.type
            call.attempts = call.attempts or exc.details.get("attempts", 0)
            raise
        except (asyncio.CancelledError, GeneratorExit):
            if call.outcome != "ok":  # closing after Done (chat() returning) is not a cancellation
                call.outcome = "cancelled"
            raise
        finally:
            if call.outcome != "ok":
                self._books.cut_short(call)

    # ------------------------------------------------------------------ internals

    def _upstream_request_id(self, request_id: str | None) -> str | None:
        """``<request id>-<n>``: unique per upstream call, a retry included (vLLM refuses an id that is
        already running, and an attempt it is still aborting may be)."""
        if request_id is not None:
            return upstream_request_id(request_id)
        ctx = request_context.get()
        return ctx.next_upstream_id() if ctx is not None else None

    async def _open_once(self, call: Call, content: bytes, request_id: str | None,
                         extra_headers: dict[str, str] | None, deadline: float) -> _Opened:
        remaining = deadline - time.perf_counter()
        if remaining <= 0:
            raise AttemptFailed(UpstreamTimeoutError("upstream call exceeded its deadline"),
                                retry=False, reason="deadline")
        timeout = httpx.Timeout(
            connect=min(self.settings.connect_timeout_s, remaining),
            read=min(self.settings.read_timeout_s, remaining),
            write=min(self.settings.read_timeout_s, remaining),
            pool=remaining,
        )
        headers = {"content-type": "application/json", **(extra_headers or {})}
        call.upstream_request_id = upstream_id = self._upstream_request_id(request_id)
        if upstream_id:
            headers["x-request-id"] = upstream_id
        try:
            request = self._http.build_request("POST", "/v1/chat/completions", content=content, headers=headers,
                                               timeout=timeout)
            response = await self._http.send(request, stream=True)
        except httpx.HTTPError as exc:
            raise transport_failure(exc, self.upstream) from exc
        try:
            if response.status_code != 200:
                body = await response.aread()
                if response.status_code == 404:
                    self.models.invalidate()  # the served list changed: fetch it again next time
                raise status_failure(response.status_code, body,
                                     parse_retry_after(response.headers.get("retry-after")), model=call.model)
            call.taken = True  # vLLM admitted it: prefill is under way, whatever happens next
            lines = response.aiter_lines()
            first = await next_chunk(lines)
        except AttemptFailed:
            await response.aclose()
            raise
        except EndOfStream:
            await response.aclose()  # closed before a single chunk: nothing was passed on, so retry
            raise AttemptFailed(UpstreamError("upstream closed the stream before finishing",
                                              type="upstream_stream_error"), retry=True, reason="disconnect") from None
        except httpx.HTTPError as exc:
            # Nothing reached our caller yet: a timeout or drop before the first chunk is retryable.
            await response.aclose()
            raise transport_failure(exc, self.upstream) from exc
        except VGateError as exc:  # malformed first chunk
            await response.aclose()
            raise AttemptFailed(exc, retry=False, reason=exc.type) from exc
        except BaseException:
            await response.aclose()
            raise
        return _Opened(response=response, lines=lines, first=first)

    def _on_retry(self, label: str, attempt: int, failed: AttemptFailed, sleep_s: float) -> None:
        self.metrics.upstream_retries.labels(model=label, reason=failed.reason).inc()
        log.info("upstream_retry", attempt=attempt, reason=failed.reason, sleep_s=round(sleep_s, 3))

    def _result(self, call: Call) -> LMResult:
        acc = call.acc
        latency = time.perf_counter() - call.started
        usage = self._books.usage(call)
        decode_s = latency - (call.ttft or 0.0)
        tps = usage.completion_tokens / decode_s if decode_s > 0 and usage.completion_tokens else None
        call.tokens_per_s = tps
        return LMResult(
            content="".join(acc.content),
            reasoning="".join(acc.reasoning) or None,
            tool_calls=acc.tool_calls(),
            finish_reason=acc.finish_reason,
            usage=usage,
            model=acc.model or call.model,
            cost_usd=self._books.cost(call, usage),
            latency_ms=latency * 1000,
            ttft_ms=call.ttft * 1000 if call.ttft is not None else None,
            tokens_per_s=tps,
            attempts=call.attempts,
            upstream_id=acc.id,
            queue_ms=(call.started - call.entered) * 1000,
        )
