"""A dataset of examples, checked before anything runs: every example's inputs against the
program's signature, its expected outputs against the program's outputs and the metric."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from app.errors import InvalidRequestError
from app.services.evaluation.spec import Metric
from app.services.signature import Signature


class Example(BaseModel):
    """One example: the program's inputs and the outputs expected of it."""

    model_config = ConfigDict(extra="forbid")

    inputs: dict[str, Any] = Field(description="the program's input fields")
    outputs: dict[str, Any] = Field(description="the expected output fields (a subset of the program's outputs)")


def _bad(name: str, index: int, message: str, **details: Any) -> InvalidRequestError:
    return InvalidRequestError(f"{name}[{index}]: {message}", type="invalid_example", dataset=name, index=index,
                               **details)


def check_dataset(signature: Signature, examples: list[Example], metric: Metric, *, name: str = "dataset",
                  limit: int) -> None:
    """A 422 for an empty or too large dataset, or for the first example that cannot be scored."""
    if not examples:
        raise InvalidRequestError(f"{name} is empty", type="invalid_example", dataset=name)
    if len(examples) > limit:
        raise InvalidRequestError(f"{name} has {len(examples)} examples; the limit is {limit}",
                                  type="dataset_too_large", dataset=name, limit=limit)
    outputs = signature.output_names
    for i, example in enumerate(examples):
        try:
            signature.validate_inputs(example.inputs)
        except InvalidRequestError as exc:
            details = {k: v for k, v in exc.details.items() if k not in ("dataset", "index")}
            raise _bad(name, i, exc.message, **details) from None
        extra = [k for k in example.outputs if k not in outputs]
        if extra:
            raise _bad(name, i, f"expected output(s) {', '.join(map(repr, extra))} are not outputs of the program; "
                       f"its outputs: {', '.join(outputs)}", unknown=extra, outputs=list(outputs))
        fields = metric.for_example(example.outputs)
        if not fields:
            raise _bad(name, i, "no expected outputs to score: give 'outputs' with at least one of "
                       + ", ".join(outputs))
        missing = [f for f in fields if f not in example.outputs]
        if missing:
            raise _bad(name, i, f"the metric scores {', '.join(map(repr, missing))} but the example's outputs "
                       "do not give it", missing=missing)
        for field, m in fields.items():
            if m.info.expects_list and not isinstance(example.outputs[field], list):
                raise _bad(name, i, f"metric {m.name!r} needs a list of acceptable values as the expected "
                           f"{field!r}", field=field)
