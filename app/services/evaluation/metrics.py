"""Metrics: pure functions ``(prediction, expected, **options) -> float`` in [0, 1].

Values are JSON values (what a program outputs and what a dataset holds). The text metrics compare
text *normalised as SQuAD's evaluation script does* (:func:`normalize_text`): lower-cased,
punctuation removed, the articles ``a``, ``an`` and ``the`` removed, whitespace collapsed. A value
that is not a string is compared as its canonical JSON text (``5`` as ``"5"``, ``[1, 2]`` as
``"[1, 2]"``).

* ``exact_match``       equal after JSON canonicalisation: ``1 == 1.0``, key order ignored, but
                        ``True != 1`` and ``"5" != 5`` (a JSON boolean is never a number).
* ``normalized_match``  equal after :func:`normalize_text`.
* ``contains``          the normalised expected text occurs in the normalised prediction, on word
                        boundaries (``"paris"`` is in ``"it is paris"``, not in ``"parisian"``);
                        an empty expected text is in every prediction.
* ``numeric``           ``|p - e| <= max(tolerance, relative * |e|)`` (defaults 0: equal numbers);
                        numbers may be given as strings (``"5"``, ``" 5.0 "``, ``"1,000"``); a
                        value that is no number (or a boolean, NaN, infinity) scores 0.
* ``token_f1``          SQuAD's token F1 of the normalised texts (1 when both are empty).
* ``json_equal``        deep equality of JSON values, key order ignored; a string holding JSON is
                        parsed first (``'{"a": 1}'`` equals ``{"a": 1}``).
* ``one_of``            ``expected`` is a list of acceptable answers; 1 when the prediction
                        ``normalized_match``-es any of them.
"""

from __future__ import annotations

import json
import math
import re
import string
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

MetricFn = Callable[..., float]

_PUNCT = str.maketrans("", "", string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def canonical(value: Any) -> Any:
    """A JSON value in one spelling: integral floats as ints, tuples as lists, keys as strings."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return int(value) if math.isfinite(value) and value.is_integer() else value
    if isinstance(value, dict):
        return {str(k): canonical(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [canonical(v) for v in value]
    return str(value)


def canonical_json(value: Any) -> str:
    """JSON text of a value with keys sorted and numbers canonical, for comparisons."""
    return json.dumps(canonical(value), sort_keys=True, ensure_ascii=False, separators=(", ", ": "))


def as_text(value: Any) -> str:
    """A string as is; anything else as canonical JSON."""
    return value if isinstance(value, str) else canonical_json(value)


def normalize_text(value: Any) -> str:
    """SQuAD's ``normalize_answer``: lower case, no punctuation, no articles, single spaces."""
    text = as_text(value).lower().translate(_PUNCT)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(prediction: Any, expected: Any) -> float:
    """1.0 when prediction and expected are the same value (canonical JSON), else 0.0."""
    return float(canonical_json(prediction) == canonical_json(expected))


def normalized_match(prediction: Any, expected: Any) -> float:
    """1.0 when both are equal after normalization (case, punctuation, articles, spaces), else 0.0."""
    return float(normalize_text(prediction) == normalize_text(expected))


def contains(prediction: Any, expected: Any) -> float:
    """1.0 when the normalized expected text occurs in the normalized prediction as whole words, else 0.0."""
    want = normalize_text(expected)
    return float(not want or f" {want} " in f" {normalize_text(prediction)} ")


def parse_number(value: Any) -> float | None:
    """A finite number from a number or a numeric string; None for anything else (booleans too)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        try:
            number = float(value)
        except OverflowError:  # an int of hundreds of digits: no finite float
            return None
    elif isinstance(value, str):
        try:
            number = float(value.strip().replace(",", "").replace("_", ""))
        except ValueError:
            return None
    else:
        return None
    return number if math.isfinite(number) else None


def numeric(prediction: Any, expected: Any, *, tolerance: float = 0.0, relative: float = 0.0) -> float:
    """1.0 when both parse as numbers within the absolute or relative tolerance, else 0.0."""
    p, e = parse_number(prediction), parse_number(expected)
    if p is None or e is None:
        return 0.0
    return float(abs(p - e) <= max(tolerance, relative * abs(e)))


def token_f1(prediction: Any, expected: Any) -> float:
    """SQuAD's token-level F1 between the normalized prediction and expected text."""
    pred, gold = normalize_text(prediction).split(), normalize_text(expected).split()
    if not pred or not gold:
        return float(pred == gold)
    common = sum((Counter(pred) & Counter(gold)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(gold)
    return 2 * precision * recall / (precision + recall)


def _json_value(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return json.loads(value)
        except (ValueError, RecursionError):  # not JSON, or nested deeper than Python parses
            return value
    return value


def json_equal(prediction: Any, expected: Any) -> float:
    """1.0 when both are the same JSON value (a string holding JSON is parsed first), else 0.0."""
    return float(canonical_json(_json_value(prediction)) == canonical_json(_json_value(expected)))


def one_of(prediction: Any, expected: Any) -> float:
    """1.0 when the prediction matches any of the expected list's values after normalization, else 0.0."""
    if not isinstance(expected, (list, tuple)):
        return 0.0
    return float(any(normalized_match(prediction, e) for e in expected))


@dataclass(frozen=True)
class MetricInfo:
    """A metric's function, the options it takes (with their checks), and whether it expects a list."""
    fn: MetricFn
    options: dict[str, Callable[[Any], bool]]  # option name -> check of its value
    expects_list: bool = False  # the expected value must be a list (one_of)


def _non_negative(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v >= 0


METRICS: dict[str, MetricInfo] = {
    "exact_match": MetricInfo(exact_match, {}),
    "normalized_match": MetricInfo(normalized_match, {}),
    "contains": MetricInfo(contains, {}),
    "numeric": MetricInfo(numeric, {"tolerance": _non_negative, "relative": _non_negative}),
    "token_f1": MetricInfo(token_f1, {}),
    "json_equal": MetricInfo(json_equal, {}),
    "one_of": MetricInfo(one_of, {}, expects_list=True),
}
