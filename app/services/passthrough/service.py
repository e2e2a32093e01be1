"""The OpenAI-compatible passthrough: vLLM's own API through the gateway's routing and books.

Each call goes through the same machinery as /predict and /agent (``LMClient.open_call``): a slot
on the upstream the pool picks (load, prefix affinity, health, priority), retries and failover while
nothing has reached the client, the same token/cost/latency/TTFT metrics and ``upstream_call`` line.

- Non-stream: vLLM answers all at once, so the answer is read whole (a connection that breaks while
  it is read is retried elsewhere) and relayed as the same bytes. A client that leaves cancels the
  upstream request: its connection closes and vLLM aborts the sequence.
- Stream: relayed event by event as it arrives (``relay.StreamReader``). Once bytes have reached the
  client nothing is retried: a stream that breaks ends with an error event and ``[DONE]``.
- Errors: vLLM's 4xx about the request (400, 404, 413, 422) are relayed as vLLM wrote them; anything
  else is the gateway's error in the same ``{"error": {"message", "type", "param", "code"}}`` shape,
  with no upstream text in it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass

import httpx
import structlog

from app.context import request_context
from app.errors import UpstreamTimeoutError, VGateError
from app.metrics import Metrics
from app.services.access import current_principal
from app.services.lm import LMClient
from app.services.lm.calls import Call
from app.services.lm.errors import (
    AttemptFailed,
    dropped,
    malformed,
    parse_retry_after,
    status_failure,
    transport_failure,
    upstream_message,
)
from app.services.passthrough.relay import StreamReader, error_event, event_end, read_usage
from app.services.passthrough.request import RESPONSES, Endpoint, Prepared, cap_completion, read, with_model
from app.services.upstreams import Upstream, prefix_key
from app.services.upstreams.wire import WireResponse
from app.settings import Settings

log = structlog.get_logger("vgate.passthrough")

RELAYED_STATUSES = frozenset({400, 404, 413, 422})  # vLLM's word on the client's own request
MAX_FIRST_EVENT_BYTES = 1 << 20


@dataclass(slots=True)
class Answer:
    """A whole answer (``body``), or a stream to relay (``chunks``)."""

    status: int
    media_type: str
    body: bytes = b""
    chunks: AsyncIterator[bytes] | None = None
    # A stream that is never iterated (the request cancelled first) must still free its slot, close
    # the upstream and keep its books: the relay's own cleanup runs only once it has started.
    abandon: Callable[[], Awaitable[None]] | None = None


@dataclass(slots=True)
class _Opened:
    status: int
    response: WireResponse
    body: bytes = b""  # non-stream, or a relayed error
    first: bytes = b""  # stream: what came before the first complete event, read inside the attempt
    raw: AsyncIterator[bytes] | None = None  # stream: the rest (one iterator: a response streams once)


class PassthroughService:
    """Relays vLLM's OpenAI-compatible API: checks, routing, retries, accounting and stream relay."""
    def __init__(self, lm: LMClient, settings: Settings, metrics: Metrics) -> None:
        self.lm = lm
        self.settings = settings
        self.metrics = metrics

    async def models(self) -> dict:
        """The models the caller may use, in vLLM's /v1/models shape."""
        listed = await self.lm.list_models(refresh=True)
        principal = current_principal()
        if principal is not None and principal.models is not None:  # the ones this key may use
            listed = [m for m in listed if m.id in principal.models]
        return {"object": "list", "data": [m.raw for m in listed]}

    async def call(self, endpoint: Endpoint, raw: bytes, headers: Mapping[str, str] | None = None) -> Answer:
        """``headers``: the client's request headers (those in ``passthrough_forward_headers`` go on)."""
        prep = read(endpoint, raw, translate_guided=self.settings.translate_guided_params)
        if headers is not None:
            prep.headers = {k: v for k in self.settings.passthrough_forward_headers if (v := headers.get(k))}
        model = await self.lm.resolve_model(prep.model)
        with_model(prep, model)
        ctx = request_context.get()
        principal = ctx.principal if ctx is not None else None
        if principal is not None and principal.limits.per_call:
            cap_completion(endpoint, prep, self.settings.limits_default_completion_tokens)
        session = ctx.session if ctx is not None else None
        call = Call(model=model, label=self.lm.model_label(model), route=endpoint.route, messages=prep.messages,
                    tools=prep.tools, on_usage=None, priority=self.lm.dispatch.priority("openai"),
                    affinity=self._affinity(model, prep, session), prompt_chars=prep.prompt_chars,
                    max_tokens=prep.max_tokens, outputs=prep.outputs)
        deadline = call.entered + self.settings.request_timeout_s
        timer = ctx.timer if ctx is not None else None
        request_id = ctx.request_id if ctx is not None else None
        try:
            opened = await self.lm.dispatch.open_call(call, lambda u: self._open(call, u, endpoint, prep, deadline),
                                             deadline, timer)
        except BaseException as exc:
            self._end(call, timer, exc)
            raise
        if opened.status != 200 or not prep.stream:
            if opened.status == 200 and not read_usage(call, opened.body, endpoint is RESPONSES):
                error = malformed("an answer of an unexpected shape")
                self._end(call, timer, error)
                raise error
            self._end(call, timer, None if opened.status == 200 else _relayed(
                opened.status, "model_not_found" if opened.status == 404 else "upstream_bad_request"))
            if opened.status == 200:
                call.outcome = "ok"
                self.lm.books.settle(call)
            return Answer(opened.status, opened.response.content_type, body=opened.body)
        reader = StreamReader(call, keep_usage=prep.client_wants_usage, responses_api=endpoint is RESPONSES,
                              request_id=request_id)
        started: list[bool] = []

        async def abandon() -> None:
            if not started:
                assert opened.raw is not None
                await opened.raw.aclose()
                await opened.response.close()
                self._end(call, timer, asyncio.CancelledError())

        return Answer(200, "text/event-stream", abandon=abandon,
                      chunks=self._relay(call, opened, reader, deadline, timer, request_id, started))

    # ------------------------------------------------------------------ internals

    def _affinity(self, model: str, prep: Prepared, session: str | None) -> int | None:
        if prep.messages or session is not None:
            return prefix_key(model, prep.messages, prep.tools, session)
        lead = prep.body.get("instructions") or prep.body.get("prompt")
        return hash((model, lead[:512])) if isinstance(lead, str) and len(lead) >= 512 else None

    async def _open(self, call: Call, upstream: Upstream, endpoint: Endpoint, prep: Prepared,
                    deadline: float) -> _Opened:
        # A non-stream answer comes whole when vLLM has finished: silence until then is not a stall.
        timeout, headers = self.lm.dispatch.attempt_setup(call, deadline, None, prep.headers,
                                                          answer_whole=not prep.stream)
        try:
            response = await upstream.wire.post(endpoint.path, prep.content, headers, timeout)
        except httpx.HTTPError as exc:
            raise transport_failure(exc, upstream.name) from exc
        keep = False
        raw: AsyncIterator[bytes] | None = None
        try:
            status = response.status
            if status != 200:
                body = await response.read()
                if status == 404:
                    upstream.models.invalidate()
                if status in RELAYED_STATUSES:
                    log.info("upstream_refused_request", upstream_status=status,
                             upstream_message=upstream_message(body)[:500])
                    return _Opened(status, response, body=body)
                raise status_failure(status, body, parse_retry_after(response.retry_after), model=call.model)
            call.taken = True  # vLLM admitted it: from here on it does work to account for
            if not prep.stream:
                return _Opened(200, response, body=await response.read())
            raw = response.chunks()
            first = b""
            while event_end(first)[0] == -1:  # the first event, inside the attempt: a drop before it is retried
                if len(first) > MAX_FIRST_EVENT_BYTES:
                    raise AttemptFailed(malformed("a stream whose first event never ends", first[:200].decode(
                        "utf-8", "replace")), retry=False, reason="upstream_malformed")
                try:
                    first += await anext(raw)
                except StopAsyncIteration:
                    raise AttemptFailed(VGateError("upstream closed the stream before it began",
                                                   status_code=502, type="upstream_stream_error"),
                                        retry=True, reason="disconnect", health=True) from None
            keep = True
            return _Opened(200, response, first=first, raw=raw)
        except httpx.HTTPError as exc:
            raise transport_failure(exc, upstream.name) from exc
        finally:
            if not keep:  # read whole, refused, or failed: the stream (if any) is the relay's to close
                if raw is not None:
                    await raw.aclose()
                await response.close()

    async def _relay(self, call: Call, opened: _Opened, reader: StreamReader, deadline: float, timer,
                     request_id: str | None, started: list[bool]) -> AsyncIterator[bytes]:
        started.append(True)
        response, raw = opened.response, opened.raw
        assert raw is not None
        error: BaseException | None = None
        try:
            out = reader.feed(opened.first)
            if out:
                yield out
            while not reader.done:
                if time.perf_counter() > deadline:
                    raise UpstreamTimeoutError("upstream call exceeded its deadline")
                try:
                    piece = await anext(raw)
                except StopAsyncIteration:
                    if reader.responses_api and not reader.has_partial:
                        break
                    raise httpx.RemoteProtocolError("the stream ended without [DONE]") from None
                out = reader.feed(piece)
                if out:
                    yield out
        except (httpx.HTTPError, UpstreamTimeoutError) as exc:
            # Bytes have reached the client: no retry. End the stream as vLLM ends a failed one.
            timed_out = isinstance(exc, (httpx.TimeoutException, UpstreamTimeoutError)) and not dropped(exc)
            error = exc
            log.warning("upstream_stream_broke", error=f"{type(exc).__name__}: {exc}", upstream=call.upstream.name)
            if not timed_out:
                self.lm.pool.failed(call.upstream, at_once=False)
            yield error_event("upstream timed out mid-stream" if timed_out else "upstream connection broke mid-stream",
                              "upstream_timeout" if timed_out else "upstream_stream_error", 504 if timed_out else 502,
                              request_id)
        except BaseException as exc:  # the client left (cancelled) or the generator was closed
            error = exc
            raise
        finally:
            await raw.aclose()
            await response.close()
            if error is None and reader.failed:
                error = _relayed(502, reader.failed)
            elif isinstance(error, httpx.HTTPError):
                error = _relayed(502, "upstream_stream_error")
            self._end(call, timer, error)
            if error is None:
                call.outcome = "ok"
                self.lm.books.settle(call)

    def _end(self, call: Call, timer, error: BaseException | None) -> None:
        """Free the slot, stop the timer; a call that did not succeed gets its books here."""
        if call.timing and timer is not None:
            timer.exit()
            call.timing = False
        self.lm.dispatch.release(call)
        if error is None:
            return
        if isinstance(error, VGateError):
            call.error_type = error.type
            call.attempts = call.attempts or error.details.get("attempts", 0)
        elif isinstance(error, (asyncio.CancelledError, GeneratorExit)):
            call.outcome = "cancelled"
        self.lm.books.settle(call)


def _relayed(status: int, type: str = "upstream_bad_request") -> VGateError:
    return VGateError("relayed", status_code=status, type=type)
