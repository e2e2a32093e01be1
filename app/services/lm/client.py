"""The LM client: every model call of the gateway goes through :class:`LMClient`.

- aiohttp's connection pool under httpx's errors and timeouts (``httpx-aiohttp``'s transport, called
  through ``Wire``, as the passthrough does, without httpx's client layer): the shared perf notes measure
  plain httpx at ~1/4 of the throughput at 64 concurrent calls.
- Several upstreams (``app.services.upstreams``): each call takes a slot on the upstream the pool
  chooses (load, prefix affinity, health), waiting in its model's queue by priority class when none
  is free; queue time counts against the call's deadline. A failed attempt that may be retried goes
  to another upstream when there is one, at once.
- Every call streams from the upstream (``include_usage``), which gives time to first token for
  every call, lets a disconnect abort the sequence in vLLM, and is one code path to get right.
- Retries (``retry.py``) only where safe, bounded by the deadline, never once a chunk has been
  handed to the caller; ``chat()``, which hands nothing on until the end, also replays a call whose
  stream broke (on another upstream). Each call carries its own request id, ``<request id>-<n>``.
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

from app.context import request_context
from app.errors import (
    InvalidRequestError,
    UpstreamError,
    UpstreamTimeoutError,
    VGateError,
)
from app.metrics import Metrics
from app.services.access import current_principal
from app.services.lm.calls import Call, CallBooks, UsageCallback
from app.services.lm.dispatch import Dispatcher
from app.services.lm.errors import AttemptFailed, dropped, parse_retry_after, status_failure, transport_failure
from app.services.lm.stream import Chunk, ChunkReader, EndOfStream
from app.services.lm.types import Done, LMResult, StreamEvent, UpstreamModel
from app.services.upstreams import Upstream, UpstreamPool
from app.services.upstreams.wire import WireResponse
from app.settings import Settings

log = structlog.get_logger("vgate.lm")
# Routes whose calls are items of a batch admitted whole (LMClient.admit_batch): no arrival check of their own.
BATCH_ADMITTED = frozenset({"predict_batch", "evaluate", "optimize"})


@dataclass(slots=True)
class _Opened:
    response: WireResponse
    lines: ChunkReader
    first: Chunk | None  # None: [DONE] at once

    async def close(self) -> None:
        await self.lines.aclose()
        await self.response.close()


async def _close(lines: ChunkReader, response: WireResponse) -> None:
    await lines.aclose()
    await response.close()


def _encode(body: dict[str, Any]) -> bytes:
    """The request body as JSON, or a 422 for what JSON cannot carry (inf/nan, lone surrogates)."""
    try:
        return json.dumps(body, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode()
    except (ValueError, UnicodeEncodeError) as exc:
        raise InvalidRequestError(f"the request holds a value JSON cannot carry: {exc}",
                                  type="invalid_request") from None


class StreamBroke(UpstreamError):
    """The upstream's stream broke after it began: nothing may be retried once it reached the client,
    but a caller that passed nothing on (``chat()``) may replay the call elsewhere."""

    type = "upstream_stream_error"

    def __init__(self, message: str, upstream: Upstream | None, label: str) -> None:
        super().__init__(message)
        self.upstream = upstream
        self.label = label  # the model's, for the replay's metric


class LMClient:
    """Client of the gateway's vLLM (OpenAI-compatible) upstreams. Owned by the app's lifespan."""

    def __init__(
        self,
        settings: Settings,
        metrics: Metrics,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        meter=None,
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.pool = UpstreamPool(settings, metrics, transport=transport)
        self.dispatch = Dispatcher(self.pool, settings, metrics, meter)
        self.books = CallBooks(metrics, settings, meter)

    def start(self) -> None:
        """Background health, load and model checks of the upstreams."""
        self.pool.start()

    async def aclose(self) -> None:
        """Close every upstream's connections and stop the monitor."""
        await self.pool.aclose()

    # ------------------------------------------------------------------ models & health

    async def list_models(self, *, refresh: bool = False) -> list[UpstreamModel]:
        """The models every upstream serves (cached for models_refresh_s unless ``refresh``)."""
        return await self.pool.list_models(refresh=refresh)

    async def resolve_model(self, model: str | None) -> str:
        """The model to call; a 403 when the caller's key may not use it."""
        resolved = await self.pool.resolve(model)
        principal = current_principal()
        if principal is not None:
            principal.allow_model(resolved)
        return resolved

    async def admit_batch(self, model: str | None, size: int, priority_route: str) -> str:
        """The model a batch of ``size`` calls will use, or a 429 for the whole batch when it would be refused now."""
        return await self.dispatch.admit_batch(model, size, priority_route)

    async def health(self) -> bool:
        """Whether any upstream answers its /health."""
        results = await asyncio.gather(*(self.pool.monitor.check_health(u) for u in self.pool.upstreams))
        return any(results)

    def model_label(self, model: str) -> str:
        """The model's metrics label: its name when configured or served, else "other"."""
        return self.pool.label(model)

    # ------------------------------------------------------------------ calls

    async def chat(
        self,
        messages: list[dict[str, Any]],
        *,
        model: str | None = None,
        route: str = "predict",
        priority_route: str | None = None,
        request_id: str | None = None,
        headers: dict[str, str] | None = None,
        on_usage: UsageCallback | None = None,
        deadline: float | None = None,
        **params: Any,
    ) -> LMResult:
        """One chat completion, aggregated. Raises a ``VGateError`` subclass on failure.

        Nothing reaches the caller before the end, so a call whose stream broke midway is replayed
        (on another upstream when there is one), within the retry budget and the deadline; the
        broken attempt keeps its own books (the work it cost is counted once, as estimated).
        ``deadline`` (``time.perf_counter``'s clock): the caller's own, when it ends before the call's
        ``request_timeout_s`` would (a request that makes several calls in turn). With ``n`` > 1 the
        result's ``choices`` has every choice."""
        deadline = min(time.perf_counter() + self.settings.request_timeout_s,
                       deadline if deadline is not None else float("inf"))
        exclude: set[Upstream] = set()
        replays = 0
        while True:
            stream = self.stream_chat(messages, model=model, route=route, priority_route=priority_route,
                                      request_id=request_id, headers=headers, on_usage=on_usage,
                                      _deadline=deadline, _exclude=exclude, _deltas=False, **params)
            try:
                async with aclosing(stream):
                    async for event in stream:
                        if isinstance(event, Done):
                            return event.result
            except StreamBroke as exc:
                replays += 1
                if replays > self.settings.max_retries or time.perf_counter() >= deadline:
                    raise
                if exc.upstream is not None:
                    exclude.add(exc.upstream)
                self.metrics.upstream_retries.labels(model=exc.label, reason="replay").inc()
                log.info("upstream_replay", replay=replays, reason=exc.message)
                continue
            raise UpstreamError("upstream stream ended without a result")  # unreachable in practice

    async def stream_chat(
        self,
        messages: list[dict[str, Any]],
        *,
        model: str | None = None,
        route: str = "predict",
        priority_route: str | None = None,
        request_id: str | None = None,
        headers: dict[str, str] | None = None,
        on_usage: UsageCallback | None = None,
        _deadline: float | None = None,
        _exclude: set[Upstream] | None = None,
        _deltas: bool = True,
        **params: Any,
    ) -> AsyncIterator[StreamEvent]:
        """Stream one chat completion: deltas as they come, then ``Done`` with the accounting.

        Closing the iterator early (client gone, task cancelled) closes the upstream
        connection, which makes vLLM abort the sequence and free its KV cache. ``on_usage`` gets
        the call's tokens and cost once, whether it completed or was cut short. ``priority_route``
        names the route whose priority class applies (default: ``route``). ``_deltas=False``
        (``chat``, which wants the result alone): only ``Done`` is yielded, not a resumption per token.
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
        tools = params.get("tools")
        call = Call(model=model, label=self.model_label(model), route=route, messages=messages,
                    tools=tools, on_usage=on_usage, priority=self.dispatch.priority(priority_route or route),
                    affinity=self.dispatch.affinity(model, messages, tools),
                    in_batch=priority_route in BATCH_ADMITTED,
                    max_tokens=params.get("max_tokens") or params.get("max_completion_tokens"),
                    outputs=max(1, int(params.get("n") or 1)))
        if _exclude:
            call.tried.update(_exclude)
        deadline = _deadline if _deadline is not None else call.entered + self.settings.request_timeout_s
        acc = call.acc
        ctx = request_context.get()
        timer = ctx.timer if ctx is not None else None
        try:
            try:
                call.opened = await self.dispatch.open_call(
                    call, lambda u: self._open_once(call, u, "/v1/chat/completions", content, request_id, headers,
                                                    deadline), deadline, timer)
                try:
                    chunk = call.opened.first
                    while chunk is not None:
                        events = acc.feed(chunk)
                        if call.ttft is None and events:
                            call.ttft = time.perf_counter() - call.started
                        if _deltas:
                            for ev in events:
                                yield ev
                        if time.perf_counter() > deadline:
                            raise UpstreamTimeoutError("upstream call exceeded its deadline")
                        chunk = await call.opened.lines.next()
                except EndOfStream:
                    if not acc.finished(call.outputs):  # cut off: never pass half an answer as whole
                        self.dispatch.broke(call)
                        raise StreamBroke("upstream closed the stream before finishing", call.upstream,
                                          call.label) from None
                except httpx.HTTPError as exc:
                    if isinstance(exc, httpx.TimeoutException) and not dropped(exc):
                        raise UpstreamTimeoutError("upstream stalled mid-stream") from exc
                    self.dispatch.broke(call)
                    raise StreamBroke("upstream connection broke mid-stream", call.upstream, call.label) from exc
                finally:
                    await call.opened.close()
            finally:
                if call.timing and timer is not None:
                    timer.exit()
                self.dispatch.release(call)
            result = self._result(call)
            call.outcome = "ok"
            self.books.settle(call)
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
                self.books.settle(call)

    async def _open_once(self, call: Call, upstream: Upstream, path: str, content: bytes, request_id: str | None,
                         extra_headers: dict[str, str] | None, deadline: float) -> _Opened:
        timeout, headers = self.dispatch.attempt_setup(call, deadline, request_id, extra_headers)
        try:
            # The upstream's aiohttp session directly (as the passthrough's calls): httpx's client
            # layer over it (request building, cookies, text and line decoding) was a fifth of the
            # gateway's CPU per /predict.
            response = await upstream.wire.post(path, content, headers, timeout)
        except httpx.HTTPError as exc:
            raise transport_failure(exc, upstream.name) from exc
        lines = ChunkReader(response.chunks())
        try:
            if response.status != 200:
                body = await response.read()
                if response.status == 404:
                    upstream.models.invalidate()  # the served list changed: fetch it again next time
                raise status_failure(response.status, body, parse_retry_after(response.retry_after), model=call.model)
            call.taken = True  # vLLM admitted it: prefill is under way, whatever happens next
            first = await lines.next()
        except AttemptFailed:
            await _close(lines, response)
            raise
        except EndOfStream:
            await _close(lines, response)  # closed before a single chunk: nothing was passed on, so retry
            raise AttemptFailed(UpstreamError("upstream closed the stream before finishing",
                                              type="upstream_stream_error"), retry=True, reason="disconnect") from None
        except httpx.HTTPError as exc:
            # Nothing reached our caller yet: a timeout or drop before the first chunk is retryable.
            await _close(lines, response)
            raise transport_failure(exc, upstream.name) from exc
        except VGateError as exc:  # malformed first chunk
            await _close(lines, response)
            raise AttemptFailed(exc, retry=False, reason=exc.type) from exc
        except BaseException:
            await _close(lines, response)
            raise
        return _Opened(response=response, lines=lines, first=first)

    def _result(self, call: Call) -> LMResult:
        acc = call.acc
        latency = time.perf_counter() - call.started
        usage = self.books.usage(call)
        decode_s = latency - (call.ttft or 0.0)
        tps = usage.completion_tokens / decode_s if decode_s > 0 and usage.completion_tokens else None
        call.tokens_per_s = tps
        choices = acc.choices(call.outputs)
        return LMResult(
            content=choices[0].content,
            reasoning=choices[0].reasoning,
            tool_calls=acc.tool_calls(),
            finish_reason=acc.finish_reason,
            usage=usage,
            model=acc.model or call.model,
            cost_usd=self.books.cost(call, usage),
            latency_ms=latency * 1000,
            ttft_ms=call.ttft * 1000 if call.ttft is not None else None,
            tokens_per_s=tps,
            attempts=call.attempts,
            upstream_id=acc.id,
            queue_ms=(call.started - call.entered) * 1000,
            choices=choices,
        )
