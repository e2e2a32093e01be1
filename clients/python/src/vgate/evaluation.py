"""``evaluate`` and ``optimize``: measure a program on a dataset, improve it with few-shot demos.

Both run on the gateway (``POST /evaluate``, ``POST /optimize``), and metrics are the gateway's
(by name: exact_match, normalized_match, contains, numeric, token_f1, json_equal, one_of; or
``{"name": "numeric", "tolerance": 0.01}``; or one per output field). A long run is a job: the
gateway answers 202 with its id, and these wait for it (``wait=False``: a ``Job`` at once).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import httpx
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr

from vgate.client import AsyncClient, Client, async_client, sync_client
from vgate.jobs import RESULT_TYPES, AsyncJob, Job
from vgate.modules import Predict, Program
from vgate.results import Usage

Example = Mapping[str, Any]  # {"inputs": {...}, "outputs": {...}}
Metric = str | Mapping[str, Any]


class _Result(BaseModel):
    model_config = ConfigDict(extra="allow")
    _raw: dict[str, Any] = PrivateAttr(default_factory=dict)

    @classmethod
    def parse(cls, raw: dict[str, Any]) -> Any:
        result = cls.model_validate(raw)
        result._raw = raw
        return result

    @property
    def raw(self) -> dict[str, Any]:
        """The result as the gateway sent it."""
        return self._raw


class ExampleResult(_Result):
    """One example of an evaluation: what the program answered (``prediction``), what was
    ``expected``, its ``score`` (0 to 1) and per-field ``scores``, or the ``error`` it failed with."""

    index: int
    inputs: dict[str, Any] | None = None
    prediction: Any = None
    expected: Any = None
    score: float | None = None
    scores: dict[str, float] | None = None
    error: dict[str, Any] | None = None


class EvaluationResult(_Result):
    """``score`` (0 to 1, over every example; a failed one scores 0), ``scores`` per output field,
    ``results`` per example, ``count``, ``failed``, ``usage``, ``cost_usd``, ``latency_ms``."""

    score: float
    scores: dict[str, float] = Field(default_factory=dict)
    results: list[ExampleResult] = Field(default_factory=list)
    count: int = 0
    failed: int = 0
    usage: Usage = Field(default_factory=Usage)
    cost_usd: float = 0.0
    latency_ms: float | None = None
    program: str | None = None


class OptimizationResult(_Result):
    """The new version of the program (``program`` as ``name@version``), the ``demos`` chosen, the
    validation score before and after, and what it cost (``usage``, ``cost_usd``, ``calls``)."""

    program: str
    version: int | None = None
    demos: list[dict[str, Any]] = Field(default_factory=list)
    score_before: float | None = None
    score_after: float | None = None
    usage: Usage = Field(default_factory=Usage)
    cost_usd: float = 0.0
    calls: int | None = None

    def as_program(self, *, client: Client | AsyncClient | None = None) -> Program:
        """The optimized version, ready to call: ``result.as_program()(text=...)``."""
        return Program(self.program, client=client)


RESULT_TYPES["evaluate"] = EvaluationResult.parse
RESULT_TYPES["evaluation"] = EvaluationResult.parse
RESULT_TYPES["optimize"] = OptimizationResult.parse
RESULT_TYPES["optimization"] = OptimizationResult.parse


def _program_fields(program: str | Mapping[str, Any] | Predict) -> dict[str, Any]:
    """What to run: a ``Program`` or program name (``"sentiment"``, ``"sentiment@3"``), or a signature
    (a ``Predict``/``ChainOfThought``, a string with ``->``, or the JSON form)."""
    if isinstance(program, Predict):
        body = program.request_body(inputs={})
        body.pop("inputs")
        return body
    if isinstance(program, Mapping):
        return {"signature": dict(program)}
    if isinstance(program, str):
        return {"signature": program} if "->" in program else {"program": program}
    raise TypeError(f"program: a vgate.Program or Predict, a program name or a signature, not {type(program)!r}")


def _metric(metric: Any) -> Any:
    if callable(metric):
        raise TypeError("metrics run on the gateway: give a metric's name ('exact_match', 'numeric', ...), "
                        "a dict such as {'name': 'numeric', 'tolerance': 0.01}, or one per output field")
    return dict(metric) if isinstance(metric, Mapping) else metric


def _dataset(name: str, examples: Sequence[Example]) -> list[dict[str, Any]]:
    if isinstance(examples, (str, bytes, Mapping)):
        raise TypeError(f"{name}: a list of examples, each {{'inputs': {{...}}, 'outputs': {{...}}}}")
    return [dict(e) for e in examples]


def evaluation_body(program: Any, dataset: Sequence[Example], metric: Metric, *, version: int | None = None,
                    model: str | None = None, config: Mapping[str, Any] | None = None, job: bool | None = None,
                    **extra: Any) -> dict[str, Any]:
    """The JSON body of POST /evaluate for a program, dataset and metric."""
    body = _program_fields(program)
    if version is not None:
        body["version"] = version
    if model is not None:
        body["model"] = model
    if config is not None:
        body["config"] = {**body.get("config", {}), **config}
    body.update(dataset=_dataset("dataset", dataset), metric=_metric(metric), **extra)
    if job is not None:
        body["job"] = job
    return body


def optimization_body(program: str | Program, strategy: str, trainset: Sequence[Example],
                      valset: Sequence[Example] | None, metric: Metric, k: int | None, *,
                      job: bool | None = None, **extra: Any) -> dict[str, Any]:
    """The JSON body of POST /optimize; only a named program can be optimized (else a TypeError)."""
    if isinstance(program, Program):
        fields = _program_fields(program)
    elif isinstance(program, str) and "->" not in program:
        fields = {"program": program}
    else:
        raise TypeError("optimize() improves a named program: give vgate.Program(...) or its name")
    body: dict[str, Any] = {**fields, "strategy": strategy, "trainset": _dataset("trainset", trainset),
                            "metric": _metric(metric)}
    if valset is not None:
        body["valset"] = _dataset("valset", valset)
    if k is not None:
        body["k"] = k
    body.update({key: value for key, value in extra.items() if value is not None})
    if job is not None:
        body["job"] = job
    return body


def _started(client: Client | AsyncClient, response: httpx.Response, kind: str,
             job_type: type[Job] | type[AsyncJob]) -> Any:
    """The result the gateway answered with, or the job it made of the run (a 202: {job_id, status, ...},
    Location: /jobs/{id})."""
    data = response.json()
    if response.status_code == 202:
        return job_type(client, data["job_id"], kind, data)
    return RESULT_TYPES[kind](data)


def _sync_run(client: Client, path: str, kind: str, body: dict[str, Any], wait: bool, timeout: float | None,
              on_progress: Callable[[dict[str, Any]], None] | None) -> Any:
    response = client.request("POST", path, json=body if wait else {**body, "job": True})
    answer = _started(client, response, kind, Job)
    return answer.wait(timeout, on_progress=on_progress) if wait and isinstance(answer, Job) else answer


async def _async_run(client: AsyncClient, path: str, kind: str, body: dict[str, Any], wait: bool,
                     timeout: float | None, on_progress: Callable[[dict[str, Any]], None] | None) -> Any:
    response = await client.request("POST", path, json=body if wait else {**body, "job": True})
    answer = _started(client, response, kind, AsyncJob)
    return await answer.wait(timeout, on_progress=on_progress) if wait and isinstance(answer, AsyncJob) else answer


def evaluate(program: Any, dataset: Sequence[Example], metric: Metric = "exact_match", *,
             version: int | None = None, model: str | None = None, config: Mapping[str, Any] | None = None,
             job: bool | None = None, wait: bool = True, timeout: float | None = None,
             on_progress: Callable[[dict[str, Any]], None] | None = None,
             client: Client | AsyncClient | None = None, **extra: Any) -> Any:
    """Run ``program`` on every example of ``dataset`` and score its outputs against the expected
    ones with ``metric``: an ``EvaluationResult``. ``program``: a ``vgate.Program`` or a program's
    name, or a ``Predict``/``ChainOfThought`` or a signature. ``job=True`` asks for a job; the gateway
    makes a large dataset one anyway; either way this waits for it (``timeout`` seconds at most;
    ``on_progress`` gets ``{"done", "total", ...}`` as it goes) unless ``wait=False``: then a ``Job``."""
    body = evaluation_body(program, dataset, metric, version=version, model=model, config=config, job=job, **extra)
    return _sync_run(sync_client(client or _client_of(program), "evaluate"), "/evaluate", "evaluate", body,
                     wait, timeout, on_progress)


async def aevaluate(program: Any, dataset: Sequence[Example], metric: Metric = "exact_match", *,
                    version: int | None = None, model: str | None = None, config: Mapping[str, Any] | None = None,
                    job: bool | None = None, wait: bool = True, timeout: float | None = None,
                    on_progress: Callable[[dict[str, Any]], None] | None = None,
                    client: Client | AsyncClient | None = None, **extra: Any) -> Any:
    """``evaluate``, with an async client; ``wait=False`` gives an ``AsyncJob``."""
    body = evaluation_body(program, dataset, metric, version=version, model=model, config=config, job=job, **extra)
    return await _async_run(async_client(client or _client_of(program), "aevaluate"), "/evaluate", "evaluate",
                            body, wait, timeout, on_progress)


def optimize(program: str | Program, strategy: str = "bootstrap_few_shot", trainset: Sequence[Example] = (),
             valset: Sequence[Example] | None = None, metric: Metric = "exact_match", k: int | None = None, *,
             teacher_model: str | None = None, candidates: int | None = None, max_calls: int | None = None,
             max_cost_usd: float | None = None, job: bool | None = None, wait: bool = True,
             timeout: float | None = None, on_progress: Callable[[dict[str, Any]], None] | None = None,
             client: Client | AsyncClient | None = None, **extra: Any) -> Any:
    """Improve a named program with bootstrapped few-shot demos (``strategy``: ``bootstrap_few_shot``
    or ``bootstrap_random_search``), at most ``k`` of them, within a budget (``max_calls``,
    ``max_cost_usd``): an ``OptimizationResult`` naming the new version (``result.as_program()``)."""
    body = optimization_body(program, strategy, trainset, valset, metric, k, job=job, teacher_model=teacher_model,
                             candidates=candidates, max_calls=max_calls, max_cost_usd=max_cost_usd, **extra)
    return _sync_run(sync_client(client or _client_of(program), "optimize"), "/optimize", "optimize", body,
                     wait, timeout, on_progress)


async def aoptimize(program: str | Program, strategy: str = "bootstrap_few_shot", trainset: Sequence[Example] = (),
                    valset: Sequence[Example] | None = None, metric: Metric = "exact_match", k: int | None = None, *,
                    teacher_model: str | None = None, candidates: int | None = None, max_calls: int | None = None,
                    max_cost_usd: float | None = None, job: bool | None = None, wait: bool = True,
                    timeout: float | None = None, on_progress: Callable[[dict[str, Any]], None] | None = None,
                    client: Client | AsyncClient | None = None, **extra: Any) -> Any:
    """``optimize``, with an async client; ``wait=False`` gives an ``AsyncJob``."""
    body = optimization_body(program, strategy, trainset, valset, metric, k, job=job, teacher_model=teacher_model,
                             candidates=candidates, max_calls=max_calls, max_cost_usd=max_cost_usd, **extra)
    return await _async_run(async_client(client or _client_of(program), "aoptimize"), "/optimize", "optimize",
                            body, wait, timeout, on_progress)


def _client_of(program: Any) -> Client | AsyncClient | None:
    return program.client if isinstance(program, Predict) else None


def get_job(job_id: str, *, client: Client | None = None) -> Job:
    """A job by its id (``GET /jobs/{id}``), e.g. one a ``wait=False`` call started earlier."""
    return Job(sync_client(client, "get_job"), job_id).refresh()


async def aget_job(job_id: str, *, client: AsyncClient | None = None) -> AsyncJob:
    """Fetch a job by id (GET /jobs/{id}) as an AsyncJob with its current state."""
    return await AsyncJob(async_client(client, "aget_job"), job_id).refresh()
