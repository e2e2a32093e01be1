"""DSPy's modules, run by the gateway: ``Predict``, ``ChainOfThought``, ``Majority`` and ``Program``.

Each is a ``POST /predict``: one example (``qa(question=...)``) or a batch (``qa.batch([...])``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from vgate.client import AsyncClient, Client, async_client, sync_client
from vgate.errors import InvalidRequest
from vgate.results import BatchResult, Prediction


class Predict:
    """``Predict("question -> answer: int")``: a signature in DSPy's string form (or the gateway's
    JSON form, a dict), answered with outputs of the declared types.

    ``instructions``, ``demos`` (few-shot examples: dicts of inputs and outputs), ``model``, ``module``
    (``"predict"``, ``"chain_of_thought"``, ``"majority"``), ``config`` (sampling: ``temperature``,
    ``max_tokens``, ``n``, ``repair``, ...; also as keyword arguments: ``Predict(sig, temperature=0)``),
    ``client`` (default: the one ``vgate.configure`` sets).

    Call it with the inputs as keyword arguments; ``config=`` (a dict) at call time overrides the
    module's for that call (so an input cannot be named ``config``)."""

    module: str = "predict"

    def __init__(self, signature: str | Mapping[str, Any], *, instructions: str | None = None,
                 demos: Sequence[Mapping[str, Any]] | None = None, model: str | None = None,
                 module: str | None = None, config: Mapping[str, Any] | None = None,
                 client: Client | AsyncClient | None = None, **config_kw: Any) -> None:
        self.signature = signature if isinstance(signature, str) else dict(signature)
        self.instructions = instructions
        self.demos = [dict(d) for d in demos] if demos is not None else None
        self.model = model
        if module is not None:
            self.module = module
        self.config = {**(config or {}), **config_kw}
        self.client = client

    # --- the request ------------------------------------------------------------------------
    def _target(self) -> dict[str, Any]:
        body: dict[str, Any] = {"signature": self.signature, "module": self.module}
        if self.instructions is not None:
            body["instructions"] = self.instructions
        return body

    def request_body(self, *, inputs: Mapping[str, Any] | None = None,
                     batch: Sequence[Mapping[str, Any]] | None = None,
                     config: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The ``POST /predict`` body for one example (``inputs``) or a ``batch``."""
        body = self._target()
        if self.demos is not None:
            body["demos"] = self.demos
        if self.model is not None:
            body["model"] = self.model
        merged = {**self.config, **(config or {})}
        if merged:
            body["config"] = merged
        if batch is not None:
            body["batch"] = [dict(item) for item in batch]
        else:
            body["inputs"] = dict(inputs or {})
        return body

    # --- sync ---------------------------------------------------------------------------------
    def __call__(self, *, config: Mapping[str, Any] | None = None, **inputs: Any) -> Prediction:
        return self.forward(config=config, **inputs)

    def forward(self, *, config: Mapping[str, Any] | None = None, **inputs: Any) -> Prediction:
        """Run the signature once on these inputs (POST /predict) and return the typed Prediction."""
        client = sync_client(self.client, type(self).__name__)
        return Prediction(client.post("/predict", self.request_body(inputs=inputs, config=config)))

    def batch(self, examples: Sequence[Mapping[str, Any]], *, return_exceptions: bool = True,
              config: Mapping[str, Any] | None = None) -> BatchResult:
        """Every example in one request (the gateway runs them concurrently), answers in input order.
        A failed item is a ``vgate.PredictionError`` in the list (the others are unaffected); with
        ``return_exceptions=False`` the first failed item's error is raised instead. A list longer than
        the gateway's limit (``VGATE_MAX_BATCH_SIZE``) goes as several batches, one after another."""
        client = sync_client(self.client, type(self).__name__)
        examples = _examples(examples)
        try:
            result = BatchResult(client.post("/predict", self.request_body(batch=examples, config=config)))
        except InvalidRequest as e:
            limit = _batch_limit(e, len(examples))
            if limit is None:
                raise
            result = BatchResult.merge([
                BatchResult(client.post("/predict", self.request_body(batch=examples[i:i + limit], config=config)))
                for i in range(0, len(examples), limit)])
        return _checked(result, return_exceptions)

    # --- async --------------------------------------------------------------------------------
    async def acall(self, *, config: Mapping[str, Any] | None = None, **inputs: Any) -> Prediction:
        """Run the signature once on these inputs, asynchronously, and return the typed Prediction."""
        client = async_client(self.client, type(self).__name__)
        return Prediction(await client.post("/predict", self.request_body(inputs=inputs, config=config)))

    aforward = acall

    async def abatch(self, examples: Sequence[Mapping[str, Any]], *, return_exceptions: bool = True,
                     config: Mapping[str, Any] | None = None) -> BatchResult:
        """Every example in one request, asynchronously; answers in input order, a failed item a PredictionError."""
        client = async_client(self.client, type(self).__name__)
        examples = _examples(examples)
        try:
            result = BatchResult(await client.post("/predict", self.request_body(batch=examples, config=config)))
        except InvalidRequest as e:
            limit = _batch_limit(e, len(examples))
            if limit is None:
                raise
            parts = []
            for i in range(0, len(examples), limit):
                body = self.request_body(batch=examples[i:i + limit], config=config)
                parts.append(BatchResult(await client.post("/predict", body)))
            result = BatchResult.merge(parts)
        return _checked(result, return_exceptions)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.signature!r})"


class ChainOfThought(Predict):
    """``Predict`` that reasons first: the answer's ``reasoning`` holds the chain of thought."""

    module = "chain_of_thought"


class Majority(Predict):
    """Self-consistency: ``n`` samples (default 5) in one upstream request, a majority vote per output
    field; the answer's ``agreement`` says how many samples agreed with each winner."""

    module = "majority"

    def __init__(self, signature: str | Mapping[str, Any], *, n: int = 5, **kw: Any) -> None:
        super().__init__(signature, **kw)
        self.config.setdefault("n", n)


class Program(Predict):
    """A program the gateway serves, by name: ``Program("sentiment")``, ``Program("sentiment@3")`` or
    ``Program("sentiment", version=3)``. ``instructions``, ``demos``, ``model``, ``module`` and
    ``config`` given here override the program's."""

    def __init__(self, name: str, *, version: int | None = None, instructions: str | None = None,
                 demos: Sequence[Mapping[str, Any]] | None = None, model: str | None = None,
                 module: str | None = None, config: Mapping[str, Any] | None = None,
                 client: Client | AsyncClient | None = None, **config_kw: Any) -> None:
        if version is not None:
            name = f"{name.partition('@')[0]}@{version}"
        super().__init__(name, instructions=instructions, demos=demos, model=model, module=module, config=config,
                         client=client, **config_kw)
        self.name = name
        self._module_override = module

    def _target(self) -> dict[str, Any]:
        body: dict[str, Any] = {"program": self.name}
        if self._module_override is not None:
            body["module"] = self._module_override
        if self.instructions is not None:
            body["instructions"] = self.instructions
        return body

    def info(self) -> dict[str, Any]:
        """The program's versions, with their scores and provenance (``GET /predict/programs/{name}``)."""
        client = sync_client(self.client, "Program")
        return client.get(f"/predict/programs/{self.name.partition('@')[0]}")

    async def ainfo(self) -> dict[str, Any]:
        """The program's description from the gateway (GET /predict/programs/{name}), asynchronously."""
        client = async_client(self.client, "Program")
        return await client.get(f"/predict/programs/{self.name.partition('@')[0]}")

    def __repr__(self) -> str:
        return f"Program({self.name!r})"


def _examples(examples: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    if isinstance(examples, (str, bytes, Mapping)):
        raise TypeError("batch() takes a list of examples, each a dict of inputs")
    return list(examples)


def _batch_limit(error: InvalidRequest, size: int) -> int | None:
    """The gateway's batch limit, when ``error`` says the batch is over it."""
    limit = error.error.get("limit")
    if error.type == "batch_too_large" and isinstance(limit, int) and 0 < limit < size:
        return limit
    return None


def _checked(result: BatchResult, return_exceptions: bool) -> BatchResult:
    if not return_exceptions and result.errors:
        raise result.errors[0]
    return result
