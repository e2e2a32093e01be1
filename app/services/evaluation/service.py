"""/evaluate's work: what to run (a named program or an inline one), checked up front, admitted,
then run now or as a job."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from pydantic import ValidationError

from app.errors import InvalidRequestError, clean_errors, summarize_errors
from app.services.adapter import demo_messages
from app.services.evaluation.dataset import Example, check_dataset
from app.services.evaluation.evaluate import ExampleResult, Report, Run, evaluate
from app.services.evaluation.spec import Metric, compile_metric
from app.services.lm import LMClient
from app.services.programs import Module, PredictConfig, Program, ProgramRegistry, ProgramRunner
from app.services.programs.run import refuse_step_overrides
from app.settings import Settings

INLINE = "inline"


def program_ref(program: Program) -> str:
    """The program as name@version."""
    return f"{program.name}@{program.version}"


def build_run(
    programs: ProgramRegistry,
    *,
    program: str | None,
    version: int | None,
    signature: str | dict[str, Any] | None,
    instructions: str | None,
    module: Module | None,
    demos: list[dict[str, Any]] | None,
    model: str | None,
    config: PredictConfig | None,
    priority_route: str,
) -> Run:
    """A named program (with the request's overrides) or an ad-hoc ``Program(name="inline")``."""
    if program is not None:
        base = programs.resolve(program, version)
        refuse_step_overrides(base, module=module, demos=demos, instructions=instructions)  # a 422 once
        return Run(base, model=model, config=config, module=module, demos=demos, instructions=instructions,
                   priority_route=priority_route)
    try:
        inline = Program(name=INLINE, signature=signature, instructions=instructions, module=module or "predict",
                         demos=demos or [], config=config or PredictConfig())
    except ValidationError as exc:
        raise InvalidRequestError(f"invalid inline program: {summarize_errors(clean_errors(exc.errors()))}",
                                  errors=clean_errors(exc.errors())) from None
    inline.parsed()  # a bad signature is a 422 now
    return Run(inline, model=model, priority_route=priority_route, named=False)


def check_run(run: Run) -> None:
    """The demos that will be shown: malformed ones fail the request once, not every example."""
    signature = run.program.parsed()
    if (run.module or run.program.module) == "chain_of_thought":
        signature = signature.with_reasoning()
    demo_messages(signature, run.effective_demos)


def outputs_of(program: Program) -> tuple[str, ...]:
    """The program's output field names."""
    return program.parsed().output_names


def prepare(run: Run, dataset: list[Example], metric_spec: Any, settings: Settings, *, name: str = "dataset"
            ) -> Metric:
    """Check a run, its dataset and its metric spec before anything is sent; returns the compiled metric."""
    check_run(run)
    metric = compile_metric(metric_spec, outputs_of(run.program))
    check_dataset(run.program.parsed(), dataset, metric, name=name, limit=settings.evaluate_max_examples)
    return metric


async def admit(lm: LMClient, run: Run, size: int) -> Run:
    """The model resolved (a 404 for an unknown one) and ``size`` calls admitted at the route's
    priority (a 429 for the whole evaluation when the upstreams cannot take it now)."""
    model = await lm.admit_batch(run.model or run.program.model, size, run.priority_route)
    run.model = model
    return run


Advance = Callable[..., Awaitable[None]]


async def run_evaluation(runner: ProgramRunner, run: Run, dataset: list[Example], metric: Metric,
                         advance: Advance | None = None) -> dict[str, Any]:
    """The evaluation's response body; ``advance`` (a job's ``Progress.advance``) hears of each example."""
    report: Report = await evaluate(runner, run, dataset, metric, on_result=_mean(advance) if advance else None)
    body = report.as_dict()
    body["metric"] = metric.describe()
    if run.named:
        body["program"] = program_ref(run.program)
    body["model"] = run.model
    return body


def _mean(advance: Advance) -> Callable[[ExampleResult], Awaitable[None]]:
    """Progress events that carry ``score_so_far``: the mean score of the examples done so far."""
    done = 0
    total = 0.0

    async def on_result(result: ExampleResult) -> None:
        nonlocal done, total
        done += 1
        total += result.score
        await advance(1, score_so_far=round(total / done, 6))

    return on_result


def job_wanted(asked: bool, size: int, settings: Settings) -> bool:
    """Whether the work runs as a job: asked for, or larger than evaluate_job_threshold."""
    return asked or size > settings.evaluate_job_threshold
