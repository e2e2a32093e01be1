"""Majority vote per output field over samples that validated (self-consistency).

Each field is voted on its own: the winner is the value most samples gave, two values being the
same when their canonical JSON is (keys sorted, no spaces: ``{"a": 1, "b": 2}`` and
``{"b": 2, "a": 1}`` are one value; numbers by value, as Python and the Literal check compare them:
``1`` and ``1.0`` are one, as are ``0.0`` and ``-0.0``, but ``true`` is not ``1``).
A tie goes to the value that appeared first, in sample order, so the vote is deterministic.

Pure functions, no I/O.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["Vote", "canonical", "majority"]


def canonical(value: Any) -> str:
    """A value's identity for the vote: its canonical JSON (whole-number floats written as ints, by
    the JSON codec itself: an ``Any`` value may be nested as deep as the reply's JSON parser allows)."""
    text = json.dumps(value, ensure_ascii=False, default=str)
    whole = json.loads(text, parse_float=_number)
    return json.dumps(whole, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def _number(text: str) -> int | float:
    """A JSON number with a fraction or exponent: an int when it is a whole one (``1.0``, ``-0.0``)."""
    value = float(text)
    return int(value) if value.is_integer() else value


@dataclass(frozen=True, slots=True)
class Vote:
    """A majority vote's outcome: the winning value per field, its agreement, and where each first appeared."""
    outputs: dict[str, Any]  # the winning value per field
    agreement: dict[str, float]  # per field: the share of samples that gave the winner
    first: dict[str, int]  # per field: the position (in ``samples``) of the first sample that gave it

    def unanimous_with_winners(self, samples: Sequence[Mapping[str, Any]]) -> int | None:
        """The position of the first sample whose every field is the winner, if there is one."""
        wanted = {f: canonical(v) for f, v in self.outputs.items()}
        for i, sample in enumerate(samples):
            if all(canonical(sample.get(f)) == c for f, c in wanted.items()):
                return i
        return None


def majority(samples: Sequence[Mapping[str, Any]], fields: Sequence[str]) -> Vote:
    """The field-wise mode of ``samples`` (each a dict with every field in ``fields``; a missing key
    counts as ``None``). Raises ValueError when there are no samples."""
    if not samples:
        raise ValueError("no samples to vote over")
    outputs: dict[str, Any] = {}
    agreement: dict[str, float] = {}
    first: dict[str, int] = {}
    for name in fields:
        counts: dict[str, int] = {}
        seen_at: dict[str, int] = {}
        for i, sample in enumerate(samples):
            key = canonical(sample.get(name))
            counts[key] = counts.get(key, 0) + 1
            seen_at.setdefault(key, i)
        # the most votes; among equals, the value seen first
        winner = min(counts, key=lambda k: (-counts[k], seen_at[k]))
        outputs[name] = samples[seen_at[winner]].get(name)
        agreement[name] = counts[winner] / len(samples)
        first[name] = seen_at[winner]
    return Vote(outputs, agreement, first)
