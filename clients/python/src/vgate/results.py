"""What a prediction returns: ``Prediction`` (outputs as attributes, as DSPy's), ``BatchResult`` (a list).

The outputs are the JSON the gateway returned, which it has already validated against the
signature: an ``int`` field is an ``int``, a ``list[str]`` a list of strings (tuples come as lists).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from pydantic import BaseModel, ConfigDict

from vgate.errors import PredictionError


class Usage(BaseModel):
    """Token counts of an answer (prompt, completion, total), as the gateway reported them."""
    model_config = ConfigDict(extra="allow", frozen=True)

    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0


class _Accounted:
    """What an answer, or a whole batch, cost and where it came from, read from its ``raw`` response."""

    raw: dict[str, Any]

    @property
    def usage(self) -> Usage:
        value = self.raw.get("usage")
        return Usage.model_validate(value) if isinstance(value, dict) else Usage()

    @property
    def cost_usd(self) -> float:
        return float(self.raw.get("cost_usd") or 0.0)

    @property
    def latency_ms(self) -> float | None:
        return self.raw.get("latency_ms")

    @property
    def request_id(self) -> str | None:
        return self.raw.get("request_id")


class Prediction(_Accounted):
    """One answer. Output fields are attributes (``pred.answer``) and items (``pred["answer"]``);
    an output named like one of the attributes below (``model``, ``usage``, ...) is read as an item.

    ``outputs`` (dict), ``reasoning`` (chain of thought, else None), ``usage``, ``cost_usd``,
    ``latency_ms``, ``ttft_ms``, ``model``, ``request_id``, ``program``, ``trace`` (the steps of a
    multi-step program, else None), ``agreement``/``samples``/``valid_samples`` (majority votes), ``repairs``, and
    ``raw``: the response as the gateway sent it.
    """

    def __init__(self, raw: dict[str, Any]) -> None:
        self.raw = raw
        outputs = raw.get("outputs")
        self.outputs: dict[str, Any] = dict(outputs) if isinstance(outputs, dict) else {}

    # --- outputs ------------------------------------------------------------------------------
    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name in ("raw", "outputs"):
            raise AttributeError(name)
        try:
            return self.outputs[name]
        except KeyError:
            raise AttributeError(f"{type(self).__name__} has no output {name!r} "
                                 f"(outputs: {', '.join(self.outputs) or 'none'})") from None

    def __getitem__(self, key: str) -> Any:
        if key == "reasoning" and key not in self.outputs and self.reasoning is not None:
            return self.reasoning
        return self.outputs[key]

    def __contains__(self, key: object) -> bool:
        return key in self.outputs

    def __iter__(self) -> Iterator[str]:
        return iter(self.outputs)

    def keys(self):  # noqa: ANN201 - dict's views
        """The output field names."""
        return self.outputs.keys()

    def values(self):  # noqa: ANN201
        """The output values."""
        return self.outputs.values()

    def items(self):  # noqa: ANN201
        """The (name, value) pairs of the outputs."""
        return self.outputs.items()

    def get(self, key: str, default: Any = None) -> Any:
        """One output's value, or ``default`` when the prediction has no such field."""
        return self.outputs.get(key, default)

    def to_dict(self) -> dict[str, Any]:
        """The outputs, with ``reasoning`` first when there is one (as DSPy's ``toDict``)."""
        head = {"reasoning": self.reasoning} if self.reasoning is not None else {}
        return {**head, **self.outputs}

    toDict = to_dict  # noqa: N815 - DSPy's name

    # --- what it cost, and where it came from ---------------------------------------------------
    @property
    def reasoning(self) -> str | None:
        """The chain-of-thought reasoning, or None for modules without one."""
        return self.raw.get("reasoning")

    @property
    def ttft_ms(self) -> float | None:
        """Milliseconds to the upstream's first token, when measured."""
        return self.raw.get("ttft_ms")

    @property
    def model(self) -> str | None:
        """The model that answered."""
        return self.raw.get("model")

    @property
    def program(self) -> str | None:
        """The named program (with its version) that ran, if any."""
        return self.raw.get("program")

    @property
    def agreement(self) -> dict[str, float] | None:
        """Per output field, the share of valid samples that voted for the answer (majority votes only)."""
        return self.raw.get("agreement")

    @property
    def samples(self) -> int | None:
        """Samples drawn for a majority vote, if one ran."""
        return self.raw.get("samples")

    @property
    def valid_samples(self) -> int | None:
        """Samples that passed validation and took part in the vote."""
        return self.raw.get("valid_samples")

    @property
    def repairs(self) -> int:
        """Repair calls made before the output matched the signature (0: none)."""
        return int(self.raw.get("repairs") or 0)

    @property
    def trace(self) -> list[TraceStep] | None:
        """A multi-step program's steps, in order, or None for a single prediction."""
        steps = self.raw.get("trace")
        if not isinstance(steps, list):
            return None
        return [TraceStep(s) if isinstance(s, dict) else s for s in steps]

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Prediction):
            return self.to_dict() == other.to_dict()
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in self.to_dict().items())
        return f"{type(self).__name__}({fields})"


class TraceStep(Prediction):
    """One step of a multi-step program's trace: its ``name``, ``inputs``, ``outputs``, ``usage``,
    ``latency_ms``, ``mapped``: a mapped step's runs (and whatever else the gateway records, in ``raw``)."""

    @property
    def name(self) -> str | None:
        """The step's name in the program."""
        return self.raw.get("name") or self.raw.get("step")

    @property
    def inputs(self) -> Any:
        """The inputs the step was given, when the gateway reported them."""
        return self.raw.get("inputs")

    @property
    def mapped(self) -> list[TraceStep] | None:
        """A mapped step's runs, one per item of the list it maps over (``raw["map"]`` names the input)."""
        items = self.raw.get("items")
        return [TraceStep(i) for i in items if isinstance(i, dict)] if isinstance(items, list) else None

    def __repr__(self) -> str:
        return f"TraceStep({self.name!r}, outputs={self.raw.get('outputs')!r})"


class BatchResult(_Accounted, list):
    """A batch's answers, in input order: each a ``Prediction``, or a ``PredictionError`` for an item
    that failed (the others are unaffected). Also ``usage``, ``cost_usd`` and ``latency_ms`` of the
    whole batch, ``succeeded``, ``failed``, ``errors`` and ``raw``. A list longer than the gateway's
    batch limit (``VGATE_MAX_BATCH_SIZE``) is sent as several batches, one after another, and merged."""

    def __init__(self, raw: dict[str, Any]) -> None:
        items: list[Prediction | PredictionError] = []
        for i, item in enumerate(raw.get("results") or []):
            index = item.get("index", i)
            request_id = item.get("request_id") or raw.get("request_id")
            if isinstance(item.get("error"), dict):
                items.append(PredictionError(index, item["error"], request_id=request_id))
            else:
                items.append(Prediction({**item, "request_id": request_id}))
        super().__init__(items)
        self.raw = raw

    @classmethod
    def merge(cls, parts: list[BatchResult]) -> BatchResult:
        """One result of batches sent one after another (a list longer than the gateway's batch limit)."""
        results: list[dict[str, Any]] = []
        for part in parts:
            for item in part.raw.get("results") or []:
                results.append({**item, "index": len(results), "request_id": part.raw.get("request_id")})
        usage = {k: sum(getattr(p.usage, k) for p in parts) for k in ("prompt_tokens", "completion_tokens",
                                                                      "total_tokens")}
        return cls({"results": results, "usage": usage, "cost_usd": sum(p.cost_usd for p in parts),
                    "latency_ms": sum(p.latency_ms or 0.0 for p in parts),
                    "request_ids": [p.raw.get("request_id") for p in parts]})

    @property
    def succeeded(self) -> int:
        """How many items were answered."""
        return sum(1 for item in self if isinstance(item, Prediction))

    @property
    def failed(self) -> int:
        """How many items failed."""
        return len(self) - self.succeeded

    @property
    def errors(self) -> list[PredictionError]:
        """The failed items' errors, in input order."""
        return [item for item in self if isinstance(item, PredictionError)]

