"""Self-correcting outputs: one call, and up to ``config.repair`` more when its reply does not match.

A reply fails when it is cut off by ``max_tokens`` (``finish_reason: length``: an
``OutputTruncatedError``) or does not parse or validate against the signature (an
``OutputValidationError``). Then, while repairs are left, the conversation is extended by the bad
reply and a message showing what was wrong (``adapter.repair_messages``) and the model is asked
again. Each repair is a real upstream call: its tokens and cost are added to the prediction's.

Bounded in time as well as in number: every call gets the request's deadline, and a repair does
not start when less time is left than the failed call took (it would likely not finish, and its
cost would be wasted); the error then says ``repair_skipped: "deadline"``. The final failure is the
last reply's error, with ``raw`` (its text), ``errors`` and ``attempts`` (calls made).

Metric: ``vgate_predict_repairs_total{outcome}`` per repair call, ``fixed`` when its reply matched,
``failed`` when it did not (or the call itself failed).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import structlog

from app.errors import OutputTruncatedError, OutputValidationError, VGateError, summarize_errors
from app.metrics import Metrics
from app.services.adapter import repair_messages
from app.services.lm import LMResult, Usage
from app.services.signature import Signature

log = structlog.get_logger("vgate.predict")

Ask = Callable[[list[dict[str, Any]]], Awaitable[LMResult]]
BadReply = OutputValidationError | OutputTruncatedError


@dataclass(slots=True)
class Spent:
    """Tokens and cost summed over a prediction's upstream calls."""

    usage: Usage = field(default_factory=Usage)
    cost_usd: float = 0.0

    def add(self, r: LMResult) -> None:
        """Add a call's usage and cost."""
        self.usage.add(r.usage)
        self.cost_usd += r.cost_usd


@dataclass(slots=True)
class Repaired:
    """Outputs that matched the signature after repairs: the first and the matching call, and what all of them spent."""
    outputs: dict[str, Any]
    first: LMResult  # the first call (its time to first token is the prediction's)
    last: LMResult  # the call whose reply matched
    spent: Spent
    repairs: int


def truncated(raw: str, max_tokens: int) -> OutputTruncatedError:
    """The 502 output_truncated for a reply cut at max_tokens (its raw text kept)."""
    return OutputTruncatedError(
        f"the model hit max_tokens={max_tokens} before finishing its answer; raise config.max_tokens or shorten "
        "the task",
        raw=raw,
        max_tokens=max_tokens,
        errors=[{"loc": [], "msg": f"the reply was cut off at max_tokens={max_tokens}", "type": "truncated"}],
    )


def check_reply(sig: Signature, content: str, finish_reason: str | None, max_tokens: int) -> dict[str, Any]:
    """The reply's typed outputs; raises ``OutputTruncatedError`` for a reply cut off by max_tokens and
    ``OutputValidationError`` for one that does not match ``sig``."""
    if finish_reason == "length":
        raise truncated(content, max_tokens)
    return sig.parse_outputs(content)


async def with_repair(
    ask: Ask,
    sig: Signature,
    messages: list[dict[str, Any]],
    *,
    repair: int,
    deadline: float,
    max_tokens: int,
    metrics: Metrics,
) -> Repaired:
    """See the module's docstring. Upstream failures propagate as they are."""
    spent = Spent()
    first: LMResult | None = None
    repairs = 0
    while True:
        started = time.perf_counter()
        try:
            r = await ask(messages)
        except VGateError:
            if repairs:
                metrics.predict_repairs.labels(outcome="failed").inc()
            raise
        spent.add(r)
        first = first or r
        try:
            outputs = check_reply(sig, r.content, r.finish_reason, max_tokens)
        except (OutputValidationError, OutputTruncatedError) as exc:
            if repairs:
                metrics.predict_repairs.labels(outcome="failed").inc()
            exc.details["attempts"] = repairs + 1
            if repairs >= repair:
                raise
            took = time.perf_counter() - started
            left = deadline - time.perf_counter()
            if left < took:
                exc.details["repair_skipped"] = "deadline"
                log.info("predict_repair_skipped", reason="deadline", left_ms=round(left * 1000, 1),
                         last_call_ms=round(took * 1000, 1), attempts=repairs + 1)
                raise
            repairs += 1
            _log_repair(exc, repairs)
            messages = _next_messages(messages, sig, r.content, exc, max_tokens)
            continue
        if repairs:
            metrics.predict_repairs.labels(outcome="fixed").inc()
        return Repaired(outputs, first, r, spent, repairs)


def _next_messages(messages: list[dict[str, Any]], sig: Signature, reply: str, exc: BadReply,
                   max_tokens: int) -> list[dict[str, Any]]:
    cut = max_tokens if isinstance(exc, OutputTruncatedError) else None
    return repair_messages(messages, sig, reply, exc.details.get("errors") or [], cut_at_tokens=cut)


def _log_repair(exc: BadReply, repair: int) -> None:
    errors = exc.details.get("errors") or []
    log.info("predict_repair", repair=repair, reason=exc.type, errors=len(errors),
             summary=summarize_errors(errors)[:500] if errors else None)
