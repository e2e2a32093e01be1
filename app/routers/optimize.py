"""POST /optimize: parse, plan (checked and admitted), then optimize now (200) or as a job (202)."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field

from app.routers.deps import (
    JobsDep,
    LMDep,
    ProgramsDep,
    RunnerDep,
    SettingsDep,
    cancel_on_disconnect,
    routing_hints,
)
from app.routers.evaluate import JOB_ACCEPTED, METRIC_DESCRIPTION, MetricSpec, start_job
from app.routers.json_body import JSONBodyRoute
from app.routers.schemas import Cost, Omittable, Usage, _omitted, error_responses
from app.services.evaluation import Example
from app.services.evaluation.service import job_wanted
from app.services.optimize import Options, Strategy, optimize, plan
from app.services.programs import PredictConfig

router = APIRouter(tags=["optimize"], route_class=JSONBodyRoute, dependencies=[Depends(routing_hints)])


class OptimizeRequest(BaseModel):
    """The body of POST /optimize: the program, the strategy, the trainset and valset, the metric and budgets."""
    model_config = ConfigDict(extra="forbid")

    program: str = Field(description='the program to improve: "sentiment" (the newest) or "sentiment@3"')
    version: int | None = Field(None, ge=1)
    strategy: Strategy = "bootstrap_few_shot"
    trainset: list[Example] = Field(description="examples to bootstrap demos from")
    valset: list[Example] | None = Field(None, description="examples to score the program on, before and after "
                                                           "(default: the trainset)")
    metric: MetricSpec | None = Field(None, description=METRIC_DESCRIPTION)
    k: int = Field(4, ge=1, le=32, description="demos at most")
    threshold: float = Field(1.0, ge=0, le=1, description="an example passes (becomes a demo) at this score")
    teacher_model: str | None = Field(None, description="the model that bootstraps the demos (default: the "
                                                        "program's)")
    candidates: int = Field(4, ge=1, le=64, description="bootstrap_random_search: demo sets tried (besides the "
                                                        "zero-shot program and the base's own demos)")
    seed: int = Field(0, description="bootstrap_random_search: the seed of its random samples")
    max_calls: int | None = Field(None, ge=1, description="budget: program runs at most")
    max_cost_usd: float | None = Field(None, gt=0, description="budget: USD (checked between steps)")
    model: str | None = Field(None, description="the model every run uses (default: the program's); kept in the "
                                                "new version")
    config: PredictConfig | None = Field(None, description="sampling overrides for every run; kept in the new "
                                                           "version")
    job: bool = Field(False, description="run as a job (202 + job_id); also when trainset + valset have more "
                                         "than evaluate_job_threshold examples")


class Candidate(BaseModel):
    """One candidate set of demos the optimizer scored."""
    kind: Literal["bootstrapped", "zero_shot", "base"]
    demos: list[dict[str, Any]]
    score: float


class OptimizeResponse(BaseModel):
    """An optimization's result: the new version saved, its demos, the scores before and after, its cost."""
    program: str = Field(description="the new version, as name@version (/predict serves it)")
    version: int
    base: str = Field(description="the version it was made from")
    strategy: Strategy
    demos: list[dict[str, Any]] = Field(description="the demos chosen: inputs and the teacher's outputs")
    score_before: float = Field(description="the base program's score on the valset")
    score_after: float = Field(description="the new version's score on the valset")
    usage: Usage
    cost_usd: Cost
    calls: int = Field(description="program runs made")
    budget_exhausted: bool = Field(description="the budget stopped it early (the result is the best so far)")
    bootstrapped: int = Field(description="train examples that passed the metric")
    trainset_run: int = Field(description="train examples run")
    metric: str | dict[str, Any]
    model: str
    teacher_model: str | None
    latency_ms: float
    candidates: list[Candidate] | Omittable = _omitted("bootstrap_random_search: each demo set scored")


@router.post(
    "/optimize",
    response_model=OptimizeResponse,
    response_model_exclude_unset=True,
    responses={
        **JOB_ACCEPTED,
        **error_responses(400, 401, 403, 404, 413, 422, 429, 503,
                          _404="unknown program (program_not_found) or model (model_not_found)",
                          _422="invalid request: metric (invalid_metric), example (invalid_example), dataset size "
                               "(dataset_too_large), a budget too small to score the valset twice "
                               "(budget_too_small), a multi-step program (unsupported_program)"),
    },
)
async def optimize_program(body: OptimizeRequest, request: Request, programs: ProgramsDep, runner: RunnerDep,
                           lm: LMDep, jobs: JobsDep, settings: SettingsDep) -> Any:
    """Improve a program with few-shot demos and save a new version; a large run goes as a job (202 with its id)."""
    options = Options(strategy=body.strategy, k=body.k, threshold=body.threshold, candidates=body.candidates,
                      seed=body.seed, teacher_model=body.teacher_model, max_calls=body.max_calls,
                      max_cost_usd=body.max_cost_usd, model=body.model, config=body.config)
    valset = body.valset if body.valset is not None else body.trainset
    p = await plan(runner, lm, programs, settings, program=body.program, version=body.version,
                   trainset=body.trainset, valset=valset, metric=body.metric, options=options)
    if job_wanted(body.job, len(body.trainset) + len(valset), settings):
        async def work(progress: Any) -> dict[str, Any]:
            return await optimize(runner, programs, p, progress.advance)

        return await start_job(jobs, "optimize", work, total=p.total_calls)
    return await cancel_on_disconnect(request, optimize(runner, programs, p))
