"""The one LM client: every model call of the gateway goes through here.

- httpx's API over aiohttp's connection pool (``httpx-aiohttp``): the shared perf notes measure
  plain httpx at ~1/4 of the throughput at 64 concurrent calls.
- A cap on calls in flight to the upstream (default 256 = vLLM's ``max_num_seqs``), so a batch of
  1,000 predictions is submitted at once and vLLM's continuous batching stays full.
- Every call streams from the upstream (``include_usage``), which gives time to first token for
  every call, lets a disconnect abort the sequence in vLLM, and is one code path to get right.
- Retries (tenacity): exponential backoff with jitter, honouring ``Retry-After``, only where safe
  (connect errors, 429/502/503/504, timeouts or drops before the first chunk), bounded by the
  call's deadline, never once a chunk has been handed to the caller.
- Accounting: usage, cost, latency, TTFT, tokens/s per call, in Prometheus and one log line.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import AsyncIterator
from contextlib import aclosing, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
import structlog
from httpx_aiohttp import AiohttpTransport
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type

from app.errors import (
    InvalidRequestError,
    NotFoundError,
    UpstreamBadRequestError,
    UpstreamError,
    UpstreamTimeoutError,
    UpstreamUnavailableError,
    VGateError,
)
from app.logging import request_id_var
from app.metrics import Metrics
from app.middleware import upstream_timer_var
from app.settings import Settings

log = structlog.get_logger("vgate.lm")

RETRYABLE_STATUS = {429, 502, 503, 504}


# --------------------------------------------------------------------------- results


@dataclass(slots=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def add(self, other: Usage) -> None:
        self.prompt_tokens += other.prompt_tokens
        self.completion_tokens += other.completion_tokens

    def as_dict(self) -> dict[str, int]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.total_tokens,
        }


@dataclass(slots=True)
class ToolCall:
    id: str
    name: str
    arguments: str  # JSON text, as the model wrote it

    def as_openai(self) -> dict[str, Any]:
        return {"id": self.id, "type": "function", "function": {"name": self.name, "arguments": self.arguments}}


@dataclass(slots=True)
class LMResult:
    content: str
    reasoning: str | None
    tool_calls: list[ToolCall]
    finish_reason: str | None
    usage: Usage
    model: str
    cost_usd: float
    latency_ms: float
    ttft_ms: float | None
    tokens_per_s: float | None
    attempts: int
    upstream_id: str | None = None


# Stream events handed to callers of ``stream_chat``.
@dataclass(slots=True)
class ContentDelta:
    text: str


@dataclass(slots=True)
class ReasoningDelta:
    text: str


@dataclass(slots=True)
class ToolCallDelta:
    index: int
    id: str | None
    name: str | None
    arguments: str  # a fragment to concatenate


@dataclass(slots=True)
class Done:
    result: LMResult


StreamEvent = ContentDelta | ReasoningDelta | ToolCallDelta | Done


# --------------------------------------------------------------------------- attempt errors


class _AttemptFailed(Exception):
    """One failed attempt: whether to retry, why, and the error to raise if we stop."""

    def __init__(self, error: VGateError, *, retry: bool, reason: str, retry_after: float | None = None):
        super().__init__(error.message)
        self.error = error
        self.retry = retry
        self.reason = reason
        self.retry_after = retry_after


def _parse_retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None  # HTTP-date form: fall back to our own backoff


def _upstream_message(body: bytes) -> str:
    """vLLM's error body is {"error": {"message", ...}} (older: flat {"message"})."""
    try:
        data = json.loads(body)
    except ValueError:
        return body[:500].decode("utf-8", "replace")
    if isinstance(data, dict):
        err = data.get("error", data)
        if isinstance(err, dict) and "message" in err:
            return str(err["message"])
        if isinstance(err, str):
            return err
    return body[:500].decode("utf-8", "replace")


def _status_failure(status: int, body: bytes, retry_after: float | None) -> _AttemptFailed:
    msg = _upstream_message(body)
    if status == 429:
        return _AttemptFailed(
            UpstreamUnavailableError(f"upstream is overloaded (429): {msg}", type="upstream_overloaded",
                                     retry_after_s=retry_after or 1.0, upstream_status=status),
            retry=True, reason="429", retry_after=retry_after,
        )
    if status == 503:
        return _AttemptFailed(
            UpstreamUnavailableError(f"upstream unavailable (503): {msg}", retry_after_s=retry_after or 1.0,
                                     upstream_status=status),
            retry=True, reason="503", retry_after=retry_after,
        )
    if status == 504:
        return _AttemptFailed(
            UpstreamTimeoutError(f"upstream timed out (504): {msg}", upstream_status=status),
            retry=True, reason="504", retry_after=retry_after,
        )
    if status == 502:
        return _AttemptFailed(UpstreamError(f"upstream bad gateway (502): {msg}", upstream_status=status),
                              retry=True, reason="502", retry_after=retry_after)
    if status == 404:
        return _AttemptFailed(NotFoundError(msg, type="model_not_found"), retry=False, reason="404")
    if status in (400, 413, 422):
        return _AttemptFailed(UpstreamBadRequestError(msg, upstream_status=status), retry=False, reason=str(status))
    if status in (401, 403):
        return _AttemptFailed(
            UpstreamError(f"upstream rejected the gateway's credentials ({status})", upstream_status=status),
            retry=False, reason=str(status),
        )
    return _AttemptFailed(UpstreamError(f"upstream error ({status}): {msg}", upstream_status=status),
                          retry=False, reason=str(status))


def _transport_failure(exc: Exception, upstream: str) -> _AttemptFailed:
    # Messages go to API clients: no internal addresses in them (the log line has the upstream).
    log.info("upstream_transport_error", upstream=upstream, error=f"{type(exc).__name__}: {exc}")
    if isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout)):
        return _AttemptFailed(UpstreamUnavailableError("cannot reach the upstream model server"),
                              retry=True, reason="connect")
    if isinstance(exc, httpx.TimeoutException):
        return _AttemptFailed(UpstreamTimeoutError("upstream did not answer in time"), retry=True, reason="timeout")
    return _AttemptFailed(UpstreamError(f"upstream connection failed ({type(exc).__name__})"),
                          retry=True, reason="disconnect")


# --------------------------------------------------------------------------- SSE


def _encode(body: dict[str, Any]) -> bytes:
    """The request body as JSON, or a 422 for what JSON cannot carry (inf/nan, lone surrogates)."""
    try:
        return json.dumps(body, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode()
    except (ValueError, UnicodeEncodeError) as exc:
        raise InvalidRequestError(f"the request holds a value JSON cannot carry: {exc}",
                                  type="invalid_request") from None


def _sse_data(line: str) -> str | None:
    """The payload of an SSE ``data:`` line; None for comments, blank lines and other fields."""
    if line.startswith("data:"):
        return line[5:].lstrip(" ")
    return None


_EOF: dict[str, Any] = {}  # sentinel: the stream ended without [DONE]


class _Accumulator:
    """Folds streamed chunks into one result."""

    __slots__ = ("id", "content", "reasoning", "tools", "finish_reason", "usage", "model", "chunks")

    def __init__(self) -> None:
        self.id: str | None = None
        self.content: list[str] = []
        self.reasoning: list[str] = []
        self.tools: dict[int, list[Any]] = {}  # index -> [id, name, [fragments]]
        self.finish_reason: str | None = None
        self.usage: dict[str, Any] | None = None
        self.model: str | None = None
        self.chunks = 0

    def feed(self, chunk: dict[str, Any]) -> list[StreamEvent]:
        if "error" in chunk:
            err = chunk["error"]
            msg = err.get("message") if isinstance(err, dict) else str(err)
            raise UpstreamError(f"upstream failed mid-stream: {msg}", type="upstream_stream_error")
        self.chunks += 1
        if self.id is None:
            self.id = chunk.get("id")
        if chunk.get("model"):
            self.model = chunk["model"]
        if chunk.get("usage"):
            self.usage = chunk["usage"]
        events: list[StreamEvent] = []
        for choice in chunk.get("choices") or ():
            delta = choice.get("delta") or {}
            text = delta.get("content")
            if text:
                self.content.append(text)
                events.append(ContentDelta(text))
            thought = delta.get("reasoning") or delta.get("reasoning_content")
            if thought:
                self.reasoning.append(thought)
                events.append(ReasoningDelta(thought))
            for tc in delta.get("tool_calls") or ():
                idx = tc.get("index", 0)
                fn = tc.get("function") or {}
                slot = self.tools.setdefault(idx, [None, None, []])
                if tc.get("id"):
                    slot[0] = tc["id"]
                if fn.get("name"):
                    slot[1] = fn["name"]
                frag = fn.get("arguments") or ""
                if frag:
                    slot[2].append(frag)
                events.append(ToolCallDelta(idx, tc.get("id"), fn.get("name"), frag))
            if choice.get("finish_reason"):
                self.finish_reason = choice["finish_reason"]
        return events

    def tool_calls(self) -> list[ToolCall]:
        return [
            ToolCall(id=tid or f"call_{idx}", name=name or "", arguments="".join(frags) or "{}")
            for idx, (tid, name, frags) in sorted(self.tools.items())
        ]


# --------------------------------------------------------------------------- client


@dataclass
class _Opened:
    response: httpx.Response
    lines: AsyncIterator[str]
    first: dict[str, Any] | None  # first parsed chunk, None if the stream ended at once
    attempts: int


@dataclass
class UpstreamModel:
    id: str
    max_model_len: int | None = None
    raw: dict[str, Any] = field(default_factory=dict)


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
        self._slots = asyncio.Semaphore(settings.max_inflight_per_upstream)
        self._queued = 0
        self._models: list[UpstreamModel] | None = None
        self._models_lock = asyncio.Lock()
        self._known_models: set[str] = set(settings.prices)
        if settings.default_model:
            self._known_models.add(settings.default_model)

    async def aclose(self) -> None:
        await self._http.aclose()

    # ------------------------------------------------------------------ models & health

    async def list_models(self, *, refresh: bool = False) -> list[UpstreamModel]:
        async with self._models_lock:
            if self._models is None or refresh:
                try:
                    r = await self._http.get("/v1/models", timeout=self.settings.connect_timeout_s * 2)
                except httpx.HTTPError as exc:
                    raise _transport_failure(exc, self.upstream).error from exc
                if r.status_code != 200:
                    raise _status_failure(r.status_code, r.content, None).error
                data = r.json().get("data") or []
                self._models = [
                    UpstreamModel(id=m["id"], max_model_len=m.get("max_model_len"), raw=m) for m in data
                ]
                self._known_models.update(m.id for m in self._models)
            return self._models

    async def resolve_model(self, model: str | None) -> str:
        if model:
            return model
        if self.settings.default_model:
            return self.settings.default_model
        models = await self.list_models()
        if not models:
            raise UpstreamError("the upstream serves no model")
        return models[0].id

    async def health(self) -> bool:
        try:
            r = await self._http.get("/health", timeout=self.settings.connect_timeout_s)
        except httpx.HTTPError:
            return False
        return r.status_code == 200

    def model_label(self, model: str) -> str:
        """Bounded label values: configured or served names only."""
        return model if model in self._known_models else "other"

    # ------------------------------------------------------------------ calls

    async def chat(
        self,
        messages: list[dict[str, Any]],
        *,
        model: str | None = None,
        route: str = "predict",
        request_id: str | None = None,
        headers: dict[str, str] | None = None,
        **params: Any,
    ) -> LMResult:
        """One chat completion, aggregated. Raises a ``VGateError`` subclass on failure."""
        stream = self.stream_chat(messages, model=model, route=route, request_id=request_id, headers=headers,
                                  **params)
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
        **params: Any,
    ) -> AsyncIterator[StreamEvent]:
        """Stream one chat completion: deltas as they come, then ``Done`` with the accounting.

        Closing the iterator early (client gone, task cancelled) closes the upstream
        connection, which makes vLLM abort the sequence and free its KV cache.
        """
        model = await self.resolve_model(model)
        label = self.model_label(model)
        body: dict[str, Any] = {
            "model": model,
            "messages": messages,
            **{k: v for k, v in params.items() if v is not None},
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        content = _encode(body)
        rid = request_id or request_id_var.get() or ""
        # Clocks start once a slot is held: time queued in the gateway is neither the upstream's
        # latency nor part of its deadline (a big batch would otherwise time out in our own queue).
        started = time.perf_counter()
        acc = _Accumulator()
        outcome = "error"
        attempts = 0
        ttft: float | None = None
        try:
            async with self._slot():
                started = time.perf_counter()
                deadline = started + self.settings.request_timeout_s
                opened = await self._open_with_retries(content, rid, headers, label, deadline)
                attempts = opened.attempts
                try:
                    chunk = opened.first
                    while chunk is not None:
                        if chunk is _EOF:
                            if acc.finish_reason is None:  # cut off: never pass half an answer as whole
                                raise UpstreamError("upstream closed the stream before finishing",
                                                    type="upstream_stream_error")
                            break
                        try:
                            events = acc.feed(chunk)
                        except (TypeError, ValueError, AttributeError, KeyError) as exc:
                            raise UpstreamError(f"upstream sent a chunk of an unexpected shape: {exc}",
                                                type="upstream_malformed") from exc
                        if ttft is None and events:
                            ttft = time.perf_counter() - started
                        for ev in events:
                            yield ev
                        if time.perf_counter() > deadline:
                            raise UpstreamTimeoutError("upstream call exceeded its deadline")
                        chunk = await self._next_chunk(opened.lines)
                except httpx.TimeoutException as exc:
                    raise UpstreamTimeoutError("upstream stalled mid-stream") from exc
                except httpx.HTTPError as exc:
                    raise UpstreamError(
                        f"upstream connection broke mid-stream: {type(exc).__name__}", type="upstream_stream_error"
                    ) from exc
                finally:
                    await opened.response.aclose()
            try:
                result = self._finish(acc, model, started, ttft, attempts)
            except (TypeError, ValueError) as exc:
                raise UpstreamError(f"upstream sent unusable usage figures: {exc}",
                                    type="upstream_malformed") from exc
            outcome = "ok"
            self._account(result, label, route)
            yield Done(result)
        except VGateError as exc:
            self.metrics.upstream_errors.labels(model=label, type=exc.type).inc()
            log.warning("upstream_call_failed", model=model, error_type=exc.type, error=exc.message,
                        latency_ms=round((time.perf_counter() - started) * 1000, 2))
            raise
        except (asyncio.CancelledError, GeneratorExit):
            if outcome != "ok":  # closing after Done (chat() returning) is not a cancellation
                outcome = "cancelled"
            raise
        finally:
            self.metrics.upstream_requests.labels(model=label, outcome=outcome).inc()
            self.metrics.upstream_duration.labels(model=label).observe(time.perf_counter() - started)
            if ttft is not None:
                self.metrics.upstream_ttft.labels(model=label).observe(ttft)

    # ------------------------------------------------------------------ internals

    @asynccontextmanager
    async def _slot(self) -> AsyncIterator[None]:
        """An in-flight slot on the upstream; the wait for one is gateway time, the rest is upstream time."""
        gauge_q = self.metrics.upstream_queued.labels(upstream=self.upstream)
        gauge_f = self.metrics.upstream_in_flight.labels(upstream=self.upstream)
        gauge_q.inc()
        try:
            await self._slots.acquire()
        finally:
            gauge_q.dec()
        timer = upstream_timer_var.get()
        gauge_f.inc()
        if timer is not None:
            timer.enter()
        try:
            yield
        finally:
            if timer is not None:
                timer.exit()
            gauge_f.dec()
            self._slots.release()

    async def _next_chunk(self, lines: AsyncIterator[str]) -> dict[str, Any] | None:
        """The next parsed chunk; None after ``[DONE]``; ``_EOF`` if the connection ended without it."""
        async for line in lines:
            data = _sse_data(line)
            if data is None:
                continue
            if data == "[DONE]":
                return None
            try:
                chunk = json.loads(data)
            except ValueError as exc:
                raise UpstreamError(f"upstream sent a malformed chunk: {data[:200]!r}",
                                    type="upstream_malformed") from exc
            if not isinstance(chunk, dict):
                raise UpstreamError(f"upstream sent a chunk that is not an object: {data[:200]!r}",
                                    type="upstream_malformed")
            return chunk
        return _EOF  # closed without [DONE]

    async def _open_once(
        self, content: bytes, rid: str, extra_headers: dict[str, str] | None, deadline: float
    ) -> _Opened:
        remaining = deadline - time.perf_counter()
        if remaining <= 0:
            raise _AttemptFailed(UpstreamTimeoutError("upstream call exceeded its deadline"),
                                 retry=False, reason="deadline")
        timeout = httpx.Timeout(
            connect=min(self.settings.connect_timeout_s, remaining),
            read=min(self.settings.read_timeout_s, remaining),
            write=min(self.settings.read_timeout_s, remaining),
            pool=remaining,
        )
        headers = {"content-type": "application/json", **(extra_headers or {})}
        if rid:
            headers["x-request-id"] = rid
        try:
            request = self._http.build_request("POST", "/v1/chat/completions", content=content, headers=headers,
                                               timeout=timeout)
            response = await self._http.send(request, stream=True)
        except httpx.HTTPError as exc:
            raise _transport_failure(exc, self.upstream) from exc
        try:
            if response.status_code != 200:
                content = await response.aread()
                raise _status_failure(response.status_code, content,
                                      _parse_retry_after(response.headers.get("retry-after")))
            lines = response.aiter_lines()
            first = await self._next_chunk(lines)
        except _AttemptFailed:
            await response.aclose()
            raise
        except httpx.HTTPError as exc:
            # Nothing reached our caller yet: a timeout or drop before the first chunk is retryable.
            await response.aclose()
            raise _transport_failure(exc, self.upstream) from exc
        except VGateError as exc:  # malformed first chunk or an error chunk
            await response.aclose()
            raise _AttemptFailed(exc, retry=False, reason=exc.type) from exc
        except BaseException:
            await response.aclose()
            raise
        return _Opened(response=response, lines=lines, first=first, attempts=0)

    async def _open_with_retries(
        self, content: bytes, rid: str, headers: dict[str, str] | None, label: str, deadline: float
    ) -> _Opened:
        # Fast path: the first attempt runs bare. Building the retry machinery for every call cost
        # up to ~13 % of the gateway's CPU per request (benchmarks/RESULTS.md, finding B).
        try:
            opened = await self._open_once(content, rid, headers, deadline)
            opened.attempts = 1
            return opened
        except _AttemptFailed as failed:
            if not failed.retry or self.settings.max_retries == 0:
                failed.error.details["attempts"] = 1
                raise failed.error from failed
            first_failure: _AttemptFailed | None = failed
        s = self.settings

        def wait(rs: RetryCallState) -> float:
            # Exponential backoff with full jitter on top: initial * 2^(n-1) + U(0, initial), capped.
            exc = rs.outcome.exception() if rs.outcome else None
            base = s.retry_backoff_initial_s * 2 ** (rs.attempt_number - 1)
            w = min(s.retry_backoff_max_s, base + random.uniform(0, s.retry_backoff_initial_s))
            if isinstance(exc, _AttemptFailed) and exc.retry_after is not None:
                w = max(w, exc.retry_after)
            return w

        def stop(rs: RetryCallState) -> bool:
            exc = rs.outcome.exception() if rs.outcome else None
            if isinstance(exc, _AttemptFailed) and not exc.retry:
                return True
            # Never sleep past the deadline: give up now with the last error instead.
            return rs.attempt_number > s.max_retries or time.perf_counter() + (rs.upcoming_sleep or 0) >= deadline

        def before_sleep(rs: RetryCallState) -> None:
            exc = rs.outcome.exception() if rs.outcome else None
            reason = exc.reason if isinstance(exc, _AttemptFailed) else "unknown"
            self.metrics.upstream_retries.labels(model=label, reason=reason).inc()
            log.info("upstream_retry", attempt=rs.attempt_number, reason=reason,
                     sleep_s=round(rs.upcoming_sleep or 0, 3))

        retrying = AsyncRetrying(
            retry=retry_if_exception_type(_AttemptFailed),
            wait=wait,
            stop=stop,
            before_sleep=before_sleep,
            reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    if first_failure is not None:  # attempt 1 already happened above
                        exc, first_failure = first_failure, None
                        raise exc
                    opened = await self._open_once(content, rid, headers, deadline)
                    opened.attempts = attempt.retry_state.attempt_number
                    return opened
        except _AttemptFailed as failed:
            failed.error.details["attempts"] = retrying.statistics.get("attempt_number", 1)
            raise failed.error from failed
        raise UpstreamError("retry loop ended without a result")  # pragma: no cover

    def _finish(self, acc: _Accumulator, model: str, started: float, ttft: float | None, attempts: int) -> LMResult:
        latency = time.perf_counter() - started
        u = acc.usage or {}
        usage = Usage(
            prompt_tokens=int(u.get("prompt_tokens") or 0),
            # Without a usage chunk (an old server), vLLM's one-token-per-chunk is the best estimate.
            completion_tokens=int(u.get("completion_tokens") or 0) if acc.usage else max(0, acc.chunks - 2),
        )
        if acc.usage is None:
            log.warning("upstream_usage_missing", model=model)
        price = self.settings.price_for(model)
        decode_s = latency - (ttft or 0.0)
        tps = usage.completion_tokens / decode_s if decode_s > 0 and usage.completion_tokens else None
        return LMResult(
            content="".join(acc.content),
            reasoning="".join(acc.reasoning) or None,
            tool_calls=acc.tool_calls(),
            finish_reason=acc.finish_reason,
            usage=usage,
            model=acc.model or model,
            cost_usd=price.cost(usage.prompt_tokens, usage.completion_tokens),
            latency_ms=latency * 1000,
            ttft_ms=ttft * 1000 if ttft is not None else None,
            tokens_per_s=tps,
            attempts=attempts,
            upstream_id=acc.id,
        )

    def _account(self, r: LMResult, label: str, route: str) -> None:
        m = self.metrics
        m.prompt_tokens.labels(model=label, route=route).inc(r.usage.prompt_tokens)
        m.completion_tokens.labels(model=label, route=route).inc(r.usage.completion_tokens)
        m.cost.labels(model=label, route=route).inc(r.cost_usd)
        log.info(
            "upstream_call",
            model=r.model,
            route=route,
            prompt_tokens=r.usage.prompt_tokens,
            completion_tokens=r.usage.completion_tokens,
            cost_usd=round(r.cost_usd, 8),
            latency_ms=round(r.latency_ms, 2),
            ttft_ms=round(r.ttft_ms, 2) if r.ttft_ms is not None else None,
            tokens_per_s=round(r.tokens_per_s, 1) if r.tokens_per_s else None,
            finish_reason=r.finish_reason,
            attempts=r.attempts,
        )
