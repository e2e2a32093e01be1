"""POST /evaluate: parse, check and admit, then score now (200) or as a job (202 + Location)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Literal

from fastapi import APIRouter, Depends, Request
from fastapi.encoders import jsonable_encoder
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, model_validator

from app.routers.deps import (
    JobsDep,
    LMDep,
    ProgramsDep,
    RunnerDep,
    SettingsDep,
    cancel_on_disconnect,
    routing_hints,
)
from app.routers.json_body import JSONBodyRoute
from app.routers.schemas import Cost, ErrorInfo, Omittable, Usage, _omitted, error_responses
from app.services.access import current_principal
from app.services.evaluation import Example
from app.services.evaluation.service import admit, build_run, job_wanted, prepare, run_evaluation
from app.services.jobs import JobService
from app.services.programs import Module, PredictConfig

router = APIRouter(tags=["evaluate"], route_class=JSONBodyRoute, dependencies=[Depends(routing_hints)])

MetricSpec = str | dict[str, Any]
METRIC_DESCRIPTION = (
    'a metric for every output field ("exact_match"), one with options ({"name": "numeric", "tolerance": 0.01}), '
    'or one per field ({"answer": "normalized_match", "confidence": {"name": "numeric", "tolerance": 0.1}}; '
    "fields not named are not scored). Metrics: exact_match, normalized_match, contains, numeric (tolerance, "
    "relative), token_f1, json_equal, one_of. Default: exact_match"
)


class EvaluateRequest(BaseModel):
    """The body of POST /evaluate: a program (or inline signature), a dataset and a metric."""
    model_config = ConfigDict(extra="forbid")

    program: str | None = Field(None, description='a program by name: "sentiment" (the newest) or "sentiment@3"')
    version: int | None = Field(None, ge=1, description="the program's version (or name@version)")
    signature: str | dict[str, Any] | None = Field(None, description="an inline signature instead of a program")
    instructions: str | None = None
    module: Module | None = None
    demos: list[dict[str, Any]] | None = Field(None, description="few-shot demos (replace the program's)")
    model: str | None = None
    config: PredictConfig | None = None
    dataset: list[Example] = Field(description="the examples: inputs and the outputs expected")
    metric: MetricSpec | None = Field(None, description=METRIC_DESCRIPTION)
    job: bool = Field(False, description="run as a job (202 + job_id); also when the dataset has more than "
                                         "evaluate_job_threshold examples")

    @model_validator(mode="after")
    def _program_or_signature(self) -> EvaluateRequest:
        if (self.signature is None) == (self.program is None):
            raise ValueError("give exactly one of 'program' or 'signature'")
        if self.version is not None and self.program is None:
            raise ValueError("'version' goes with 'program'")
        return self


class ExampleScore(BaseModel):
    """One example's outcome: its prediction, the expected outputs and the scores."""
    index: int
    inputs: dict[str, Any]
    prediction: dict[str, Any] | None = Field(description="the program's outputs; null when the call failed")
    expected: dict[str, Any]
    score: float = Field(description="the mean of the example's field scores (0 when it failed)")
    scores: dict[str, float] = Field(description="each scored field's metric value, in [0, 1]")
    error: ErrorInfo | Omittable = _omitted("why the example failed (with its HTTP status); it scores 0")


class EvaluateResponse(BaseModel):
    """An evaluation's result: the mean score, per-field scores, each example's result, usage and cost."""
    score: float = Field(description="the mean over examples of each example's score, in [0, 1]")
    scores: dict[str, float] = Field(description="per field: the mean over the examples that score it")
    results: list[ExampleScore]
    count: int
    failed: int
    usage: Usage
    cost_usd: Cost
    latency_ms: float = Field(description="the evaluation's wall-clock time")
    metric: str | dict[str, Any]
    model: str | None
    program: str | Omittable = _omitted("the program as name@version, when a named one was run")


class JobAccepted(BaseModel):
    """A job started: follow it at GET /jobs/{job_id} (its ``result`` is the 200 answer's body) or
    GET /jobs/{job_id}/events (progress over SSE)."""

    job_id: str
    kind: Literal["evaluate", "optimize"]
    status: str = Field(description="queued or running (or already finished)")
    progress: dict[str, Any] = Field(description="{done, total}: examples (evaluate) or calls (optimize)")
    created_at: float = Field(description="unix time")
    location: str = Field(description="/jobs/{job_id}, also in the Location header")


# The 202 of a route that may run as a job (OpenAPI).
JOB_ACCEPTED: dict[int | str, dict[str, Any]] = {
    202: {"model": JobAccepted, "description": "run as a job: GET /jobs/{job_id} gives its status and result",
          "headers": {"Location": {"description": "/jobs/{job_id}", "schema": {"type": "string"}}}}}


async def start_job(jobs: JobService, kind: str, work: Callable[[Any], Awaitable[dict[str, Any]]],
                    total: int) -> JSONResponse:
    """Submit ``work`` to the gateway's job service (owned by the caller's key); a 202 pointing at it."""
    principal = current_principal()
    job_id = await jobs.submit(kind, work, total=total, owner=principal.id if principal is not None else None)
    location = f"/jobs/{job_id}"
    body = {**(await jobs.get(job_id)), "location": location}
    return JSONResponse(jsonable_encoder(body), status_code=202, headers={"Location": location})


@router.post(
    "/evaluate",
    response_model=EvaluateResponse,
    response_model_exclude_unset=True,
    responses={
        **JOB_ACCEPTED,
        **error_responses(400, 401, 403, 404, 413, 422, 429, 503,
                          _404="unknown program (program_not_found) or model (model_not_found)",
                          _422="invalid request: unknown metric or option (invalid_metric), a bad example "
                               "(invalid_example), a dataset over evaluate_max_examples (dataset_too_large)"),
    },
)
async def evaluate(body: EvaluateRequest, request: Request, programs: ProgramsDep, runner: RunnerDep, lm: LMDep,
                   jobs: JobsDep, settings: SettingsDep) -> Any:
    """Score a program on a dataset; a large one (or ``job: true``) runs as a job and answers 202 with its id."""
    if body.program is not None:
        await programs.find(body.program, body.version)  # with versions another replica saved (build_run resolves)
    run = build_run(programs, program=body.program, version=body.version, signature=body.signature,
                    instructions=body.instructions, module=body.module, demos=body.demos, model=body.model,
                    config=body.config, priority_route="evaluate")
    metric = prepare(run, body.dataset, body.metric, settings)
    await admit(lm, run, len(body.dataset))
    if job_wanted(body.job, len(body.dataset), settings):
        async def work(progress: Any) -> dict[str, Any]:
            return await run_evaluation(runner, run, body.dataset, metric, progress.advance)

        return await start_job(jobs, "evaluate", work, total=len(body.dataset))
    return await cancel_on_disconnect(request, run_evaluation(runner, run, body.dataset, metric))
