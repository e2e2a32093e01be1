"""Self-consistency: n samples from ONE upstream call (vLLM's ``n``: the prompt is prefilled once and
its KV cache shared by the samples), each checked against the signature, reduced by a majority vote
per output field (``vote.majority``).

Samples that are cut off or do not match the signature are dropped; the vote is over the valid
ones, and ``agreement`` is the share of *valid* samples that gave each winner. Under chain of thought
the vote is on the outputs, never on the reasoning; the reasoning returned is that of the first
sample whose outputs are all the winners, else that of the first sample that gave the first
field's winner.

There is no repair here: when no sample is valid, the prediction fails with a 502
``output_validation_error`` (``output_truncated`` when every sample was cut off) whose ``errors``
are every sample's, each ``loc`` starting with ``["sample", index]``, and whose ``raw`` is the first
sample's text. Metric: ``vgate_predict_samples_total{outcome=valid|invalid}``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from app.errors import OutputTruncatedError, OutputValidationError, VGateError, summarize_errors
from app.metrics import Metrics
from app.services.lm import LMResult
from app.services.predict.repair import check_reply
from app.services.predict.vote import Vote, majority
from app.services.signature import REASONING_FIELD, Signature

MAX_SAMPLE_ERRORS = 20  # errors carried by the failure when no sample is valid

SampleAsk = Callable[[list[dict[str, Any]], int], Awaitable[LMResult]]


@dataclass(slots=True)
class Voted:
    """A vote done in one upstream call of n samples: the call, the vote, and the winner's reasoning."""
    result: LMResult  # the one call
    vote: Vote
    reasoning: str | None
    samples: int
    valid: int


async def voted(
    ask: SampleAsk,
    sig: Signature,
    messages: list[dict[str, Any]],
    *,
    n: int,
    fields: Sequence[str],
    reasoning: bool,
    max_tokens: int,
    metrics: Metrics,
) -> Voted:
    """See the module's docstring. ``fields``: the output fields to vote on (not ``reasoning``)."""
    r = await ask(messages, n)
    choices = r.choices[:n] if r.choices else []
    valid: list[dict[str, Any]] = []
    failures: list[tuple[int, str, VGateError]] = []
    for choice in choices:
        try:
            valid.append(check_reply(sig, choice.content, choice.finish_reason, max_tokens))
        except (OutputValidationError, OutputTruncatedError) as exc:
            failures.append((choice.index, choice.content, exc))
    metrics.predict_samples.labels(outcome="valid").inc(len(valid))
    metrics.predict_samples.labels(outcome="invalid").inc(len(failures))
    if not valid:
        raise _no_valid_sample(failures, len(choices))
    vote = majority(valid, fields)
    thought = None
    if reasoning:
        at = vote.unanimous_with_winners(valid)
        thought = valid[at if at is not None else vote.first[fields[0]]].get(REASONING_FIELD)
    return Voted(r, vote, thought, len(choices), len(valid))


def _no_valid_sample(failures: list[tuple[int, str, VGateError]], n: int) -> VGateError:
    errors: list[dict[str, Any]] = []
    for index, _, exc in failures:
        for e in exc.details.get("errors") or [{"loc": [], "msg": exc.message, "type": exc.type}]:
            if len(errors) < MAX_SAMPLE_ERRORS:
                errors.append({**e, "loc": ["sample", index, *e.get("loc", [])]})
    raw = failures[0][1] if failures else None
    if failures and all(isinstance(exc, OutputTruncatedError) for _, _, exc in failures):
        first = failures[0][2]
        return OutputTruncatedError(f"every one of the {n} samples was cut off: {first.message}", raw=raw,
                                    errors=errors, samples=n, attempts=1,
                                    max_tokens=first.details.get("max_tokens"))
    return OutputValidationError(
        f"none of the {n} samples matched the signature: " + (summarize_errors(errors) if errors else "no samples"),
        raw=raw, errors=errors, samples=n, attempts=1,
    )
