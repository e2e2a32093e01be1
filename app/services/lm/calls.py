"""One upstream call's record, and its books: token and cost counters, ``on_usage``, the metrics
and the ``upstream_call`` log line, kept once per call — a call cut short or refused included."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import structlog

from app.logging import info_enabled
from app.metrics import Metrics
from app.services.lm.stream import Accumulator
from app.services.lm.types import CallUsage, Usage
from app.settings import Settings

log = structlog.get_logger("vgate.lm")

UsageCallback = Callable[[CallUsage], None]
CHARS_PER_TOKEN = 4  # for an estimate of the prompt tokens of a call cut short before its usage chunk


@dataclass(slots=True)
class Call:
    """One upstream call's record, from entering the queue to its log line."""

    model: str
    label: str
    route: str
    messages: list[dict[str, Any]]
    tools: Any
    on_usage: UsageCallback | None
    entered: float = field(default_factory=time.perf_counter)
    started: float = 0.0  # a slot was held (or the call was refused) at this time
    acc: Accumulator = field(default_factory=Accumulator)
    opened: Any = None  # the stream, once its first chunk came
    admitted: bool = False  # it held an in-flight slot (else it was refused or cancelled in the queue)
    taken: bool = False  # the upstream accepted it (a 200): from then on it does work to account for
    upstream_request_id: str | None = None
    attempts: int = 0
    ttft: float | None = None
    tokens_per_s: float | None = None
    outcome: str = "error"  # ok, error, cancelled, shed
    error_type: str | None = None
    priority: str = "interactive"
    in_batch: bool = False  # an item of a batch admitted whole (the arrival check was the batch's)
    affinity: int | None = None  # the prefix key routing keeps on one upstream
    prompt_chars: int | None = None  # for the estimate, when there are no messages (completions, embeddings)
    lease: Any = None  # the slot it holds, while it holds one
    upstream: Any = None  # where the last attempt went
    tried: set[Any] = field(default_factory=set)  # upstreams whose attempt failed: the next goes elsewhere
    timing: bool = False  # the request's upstream timer is running for it
    max_tokens: int | None = None  # what it may generate, for the reservation against a key's limits ...
    outputs: int = 1  # ... per completion it makes (n, prompts in a list)
    principal: Any = None  # the API key it is made for (its limits and usage)
    reservation: tuple[str, int, float] | None = None  # id, tokens and cost held against the key's limits


@dataclass(frozen=True, slots=True)
class _Children:
    prompt_tokens: Any
    completion_tokens: Any
    cost: Any
    requests: Any
    queue_time: Any
    duration: Any
    ttft: Any


class CallBooks:
    """The books of upstream calls: their metrics, log lines, cost, and the key's usage settled through the meter."""
    def __init__(self, metrics: Metrics, settings: Settings, meter=None) -> None:
        self.metrics = metrics
        self.settings = settings
        self.meter = meter  # a key's limits and usage (app.services.limits.Meter)
        self._info = info_enabled(settings.log_level)
        self._cache: dict[tuple[str, str, str, str], _Children] = {}

    def _children(self, label: str, route: str, priority: str, outcome: str) -> _Children:
        """The call's metric children: labels() costs a lock and a dict build per call, so once per
        key (label values are bounded: configured or served models, routes, classes, outcomes)."""
        key = (label, route, priority, outcome)
        c = self._cache.get(key)
        if c is None:
            m = self.metrics
            c = self._cache[key] = _Children(
                m.prompt_tokens.labels(model=label, route=route), m.completion_tokens.labels(model=label, route=route),
                m.cost.labels(model=label, route=route), m.upstream_requests.labels(model=label, outcome=outcome),
                m.queue_time.labels(model=label, priority=priority), m.upstream_duration.labels(model=label),
                m.upstream_ttft.labels(model=label))
        return c

    def cost(self, call: Call, usage: Usage) -> float:
        """The call's cost in USD at its model's price."""
        return self.settings.price_for(call.model).cost(usage.prompt_tokens, usage.completion_tokens)

    @staticmethod
    def usage(call: Call) -> Usage:
        """vLLM's usage chunk, or (a call cut short, an old server) an estimate: completion tokens from
        the chunks streamed, prompt tokens from the prompt's size."""
        if call.acc.usage is not None:
            return Usage(call.acc.usage.prompt_tokens, call.acc.usage.completion_tokens)
        if call.prompt_chars is not None:
            chars = call.prompt_chars
        else:
            chars = sum(len(str(m.get("content") or "")) for m in call.messages)
        if call.tools:
            chars += len(json.dumps(call.tools, default=str))
        return Usage(max(1, chars // CHARS_PER_TOKEN), call.acc.token_chunks)

    def settle(self, call: Call) -> None:
        """The call's books from what it has: vLLM's usage, or (a call cut short) an estimate of the
        work the upstream did once it had taken the call; one refused or failed before that cost
        nothing."""
        if call.taken:
            self.close(call, self.usage(call), estimated=call.acc.usage is None)
        else:
            self.close(call, Usage(), estimated=False)

    def close(self, call: Call, usage: Usage, *, estimated: bool) -> None:
        """The call's books, once: token and cost counters, ``on_usage``, metrics, the log line."""
        m, label = self.metrics, call.label
        cost = self.cost(call, usage)
        now = time.perf_counter()
        if not call.started:  # it ended before it reached the queue
            call.started = now
        c = self._children(label, call.route, call.priority, call.outcome)
        if usage.prompt_tokens or usage.completion_tokens:
            c.prompt_tokens.inc(usage.prompt_tokens)
            c.completion_tokens.inc(usage.completion_tokens)
            c.cost.inc(cost)
        if call.on_usage is not None and call.taken:
            call.on_usage(CallUsage(usage, cost, estimated))
        if call.principal is not None and self.meter is not None and (call.taken or call.reservation is not None):
            self.meter.settle(call, usage.prompt_tokens, usage.completion_tokens, cost)
        c.requests.inc()
        c.queue_time.observe(call.started - call.entered)
        if call.admitted:  # one refused or cancelled in the queue spent no upstream time
            c.duration.observe(now - call.started)
            if call.error_type is not None:
                m.upstream_errors.labels(model=label, type=call.error_type).inc()
        if call.ttft is not None:
            c.ttft.observe(call.ttft)
        if call.outcome in ("ok", "cancelled") and not self._info:
            return  # the line would be dropped: do not build it
        fields: dict[str, Any] = dict(
            outcome=call.outcome,
            model=call.acc.model or call.model,
            route=call.route,
            prompt_tokens=usage.prompt_tokens,
            completion_tokens=usage.completion_tokens,
            cost_usd=round(cost, 8),
            latency_ms=round((now - call.started) * 1000, 2),
            queue_ms=round((call.started - call.entered) * 1000, 2),
            ttft_ms=round(call.ttft * 1000, 2) if call.ttft is not None else None,
            tokens_per_s=round(call.tokens_per_s, 1) if call.tokens_per_s else None,
            finish_reason=call.acc.finish_reason,
            attempts=call.attempts,
            upstream_request_id=call.upstream_request_id,
            upstream=call.upstream.name if call.upstream is not None else None,
            priority=call.priority,
        )
        if estimated:
            fields["estimated"] = True
        if call.error_type is not None:
            fields["error_type"] = call.error_type
        (log.info if call.outcome in ("ok", "cancelled") else log.warning)("upstream_call", **fields)
