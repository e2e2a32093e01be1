"""A request's ``metric``, read into what scores each output field.

Three forms::

    "exact_match"                                   # every output field an example gives
    {"name": "numeric", "tolerance": 0.01}          # the same, with options
    {"answer": "exact_match", "confidence": {"name": "numeric", "tolerance": 0.1}}   # per field

In the per-field form only the named fields are scored. A dict with a string ``name`` is the
second form: to score only a field called ``name``, write ``{"name": {"name": "exact_match"}}``.
An unknown metric or option is a 422 listing the valid ones; a field the program does not output
is a 422 naming its outputs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from app.errors import InvalidRequestError
from app.services.evaluation.metrics import METRICS, MetricInfo

DEFAULT_METRIC = "exact_match"


def _invalid(message: str, **details: Any) -> InvalidRequestError:
    return InvalidRequestError(message, type="invalid_metric", **details)


@dataclass(frozen=True)
class FieldMetric:
    """One output field's metric with its options."""
    name: str
    options: dict[str, Any]
    info: MetricInfo

    def score(self, prediction: Any, expected: Any) -> float:
        """The metric's value for one field, clamped to [0, 1]."""
        value = float(self.info.fn(prediction, expected, **self.options))
        return min(1.0, max(0.0, value))

    def describe(self) -> str | dict[str, Any]:
        """The metric as the API names it: its name, or an object with its options."""
        return {"name": self.name, **self.options} if self.options else self.name


@dataclass(frozen=True)
class Metric:
    """``default`` scores every field an example's expected outputs give; else ``fields`` only."""

    default: FieldMetric | None = None
    fields: dict[str, FieldMetric] = field(default_factory=dict)

    def for_example(self, expected: Mapping[str, Any]) -> dict[str, FieldMetric]:
        """The fields to score for an example with these expected outputs, and their metric."""
        if self.default is not None:
            return {name: self.default for name in expected}
        return dict(self.fields)

    def describe(self) -> str | dict[str, Any]:
        """The metric as the API names it: the default one, or one per field."""
        if self.default is not None:
            return self.default.describe()
        return {name: m.describe() for name, m in self.fields.items()}


def _one(spec: Any, where: str) -> FieldMetric:
    if isinstance(spec, str):
        name, options = spec, {}
    elif isinstance(spec, Mapping) and isinstance(spec.get("name"), str):
        name, options = spec["name"], {k: v for k, v in spec.items() if k != "name"}
    else:
        raise _invalid(f"{where}: a metric is a name or an object with a 'name' and its options",
                       metrics=sorted(METRICS))
    info = METRICS.get(name)
    if info is None:
        raise _invalid(f"{where}: unknown metric {name!r}; valid: {', '.join(sorted(METRICS))}",
                       metrics=sorted(METRICS))
    for key, value in options.items():
        check = info.options.get(key)
        if check is None:
            valid = ", ".join(sorted(info.options)) or "none"
            raise _invalid(f"{where}: metric {name!r} has no option {key!r}; its options: {valid}",
                           metric=name, options=sorted(info.options))
        if not check(value):
            raise _invalid(f"{where}: option {key!r} of metric {name!r} must be a number >= 0, got {value!r}",
                           metric=name, option=key)
    return FieldMetric(name, dict(options), info)


def compile_metric(spec: Any, outputs: Sequence[str]) -> Metric:
    """The ``metric`` of a request, for a program with these output fields."""
    if spec is None:
        spec = DEFAULT_METRIC
    if isinstance(spec, str) or (isinstance(spec, Mapping) and isinstance(spec.get("name"), str)):
        return Metric(default=_one(spec, "metric"))
    if not isinstance(spec, Mapping) or not spec:
        raise _invalid("metric must be a metric name, {'name': ..., options}, or an object of fields to metrics",
                       metrics=sorted(METRICS))
    unknown = [str(k) for k in spec if k not in outputs]
    if unknown:
        raise _invalid(f"metric names field(s) the program does not output: {', '.join(map(repr, unknown))}; "
                       f"its outputs: {', '.join(outputs)}", unknown=unknown, outputs=list(outputs))
    return Metric(fields={name: _one(value, f"metric.{name}") for name, value in spec.items()})
