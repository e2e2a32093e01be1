"""POST /predict, GET /predict/programs and GET /predict/programs/{name}: parse, call the predict
service (or the program runner, for a multi-step program), shape the response."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field, model_validator

from app.errors import InvalidRequestError, VGateError
from app.routers.deps import (
    PredictDep,
    ProgramsDep,
    RequestIdDep,
    RunnerDep,
    SettingsDep,
    cancel_on_disconnect,
    read_routing_hints,
    request_id_of,
    routing_hints,
)
from app.routers.direct import direct
from app.routers.json_body import JSONBodyRoute
from app.routers.schemas import (
    BatchPredictResponse,
    PredictResponse,
    ProgramList,
    ProgramVersions,
    error_responses,
)
from app.services.predict import BatchResult
from app.services.programs import Module, PredictConfig, Program, ProgramRunner
from app.services.programs.run import refuse_step_overrides
from app.services.signature import parse_signature, parse_signature_cached

router = APIRouter(tags=["predict"], route_class=JSONBodyRoute, dependencies=[Depends(routing_hints)])


class PredictRequest(BaseModel):
    """The body of POST /predict: a signature or a program, and one example or a batch."""
    model_config = ConfigDict(extra="forbid")

    signature: str | dict[str, Any] | None = Field(
        None, description='DSPy string form ("question -> answer: int") or the JSON field form'
    )
    program: str | None = Field(None, description="a program (GET /predict/programs): 'sentiment' (the newest "
                                "version) or 'sentiment@3'")
    version: int | None = Field(None, ge=1, description="the program's version (the newest when left out)")
    instructions: str | None = None
    inputs: dict[str, Any] | None = Field(None, description="one example")
    batch: list[dict[str, Any]] | None = Field(None, description="many examples, each answered independently")
    module: Module | None = None
    demos: list[dict[str, Any]] | None = Field(None, description="few-shot examples: inputs and outputs")
    model: str | None = None
    config: PredictConfig | None = None

    @model_validator(mode="after")
    def _one_of_each(self) -> PredictRequest:
        if (self.signature is None) == (self.program is None):
            raise ValueError("give exactly one of 'signature' or 'program'")
        if self.version is not None and self.program is None:
            raise ValueError("'version' goes with 'program'")
        if (self.inputs is None) == (self.batch is None):
            raise ValueError("give exactly one of 'inputs' (one example) or 'batch' (a list of examples)")
        if self.batch is not None and not self.batch:
            raise ValueError("'batch' is empty")
        return self


async def _predict_direct(request: Request, body: PredictRequest) -> dict[str, Any]:
    """POST /predict as its head route runs it (``app.routers.direct``): what the dependencies below would
    give, taken by hand."""
    read_routing_hints(request)
    state = request.app.state
    return await predict(body, request, state.predict, state.programs, state.runner, state.settings,
                         request_id_of(request))


@router.post(
    "/predict",
    response_model=PredictResponse | BatchPredictResponse,
    response_model_exclude_unset=True,  # keys that do not apply are left out (reasoning, program)
    responses=error_responses(
        400, 401, 403, 404, 413, 422, 429, 502, 503, 504,
        _404="unknown program (program_not_found) or model (model_not_found)",
        _502="the upstream failed, or the model's output did not match the signature "
             "(output_validation_error, output_truncated; the raw text is in the error)",
    ),
)
@direct(_predict_direct)
async def predict(
    body: PredictRequest,
    request: Request,
    service: PredictDep,
    programs: ProgramsDep,
    runner: RunnerDep,
    settings: SettingsDep,
    request_id: RequestIdDep,
) -> dict[str, Any]:
    """Run a signature or named program on one example or a batch; outputs are validated into the declared types."""
    module: Module = "predict"
    demos: list[dict[str, Any]] | None = None
    model: str | None = None
    config: PredictConfig | None = None
    program_name = None
    if body.program is not None:
        program = await programs.find(body.program, body.version)  # with versions another replica saved
        if program.steps is not None:
            return await _predict_steps(body, program, request, runner, settings, request_id)
        program_name = program.ref
        signature = program.parsed()
        if body.instructions:
            signature = signature.with_instructions(body.instructions)
        module, demos, model, config = program.module, program.demos or None, program.model, program.config
    elif isinstance(body.signature, str) and body.instructions is None:
        signature = parse_signature_cached(body.signature)
    else:
        signature = parse_signature(body.signature, body.instructions)  # type: ignore[arg-type]

    module = body.module or module
    demos = body.demos if body.demos is not None else demos
    model = body.model or model
    config = config.merged(body.config) if config else body.config
    kw = dict(module=module, demos=demos, model=model, config=config)

    head: dict[str, Any] = {"request_id": request_id, "signature": str(signature), "module": module}
    if program_name:
        head["program"] = program_name

    if body.inputs is not None:
        prediction = await cancel_on_disconnect(request, service.predict(signature, body.inputs, **kw))
        return {**prediction.as_dict(), **head}

    assert body.batch is not None
    _check_batch_size(body.batch, settings.max_batch_size)
    result = await cancel_on_disconnect(request, service.predict_batch(signature, body.batch, **kw))
    return _batch_response(result, head)


async def _predict_steps(body: PredictRequest, program: Program, request: Request, runner: ProgramRunner,
                         settings: Any, request_id: str) -> dict[str, Any]:
    """A multi-step program: one input or a batch (each item runs every step, and fails alone)."""
    refuse_step_overrides(program, module=body.module, demos=body.demos, instructions=body.instructions)
    head = {"request_id": request_id, "signature": str(program.parsed()), "module": program.module_name,
            "program": program.ref}
    if body.inputs is not None:
        result = await cancel_on_disconnect(request, runner.run(program, body.inputs, model=body.model,
                                                                config=body.config))
        return {**result.as_dict(), **head}
    assert body.batch is not None
    _check_batch_size(body.batch, settings.max_batch_size)
    batch = await cancel_on_disconnect(request, runner.run_batch(program, body.batch, model=body.model,
                                                                 config=body.config))
    return _batch_response(batch, head)


def _check_batch_size(batch: list[dict[str, Any]], limit: int) -> None:
    if len(batch) > limit:
        raise InvalidRequestError(f"batch has {len(batch)} items; the limit is {limit}",
                                  type="batch_too_large", limit=limit)


def _batch_response(result: BatchResult, head: dict[str, Any]) -> dict[str, Any]:
    results = []
    for i, item in enumerate(result.items):
        if isinstance(item, VGateError):
            results.append({"index": i, "error": item.body()})
        else:
            results.append({"index": i, **item.as_dict()})
    models = sorted({item.model for item in result.items if not isinstance(item, VGateError)})
    return {
        "results": results,
        "succeeded": len(result.items) - result.failed,
        "failed": result.failed,
        "usage": result.usage.as_dict(),
        "cost_usd": result.cost_usd,
        "latency_ms": round(result.latency_ms, 2),
        "model": models[0] if len(models) == 1 else (models or None),
        **head,
    }


@router.get("/predict/programs", response_model=ProgramList, response_model_exclude_unset=True,
            responses=error_responses())
async def list_programs(programs: ProgramsDep) -> dict[str, Any]:
    """The newest version of each program."""
    await programs.refresh()
    return {"programs": [p.summary() for p in programs.latest()]}


@router.get("/predict/programs/{name}", response_model=ProgramVersions, response_model_exclude_unset=True,
            responses=error_responses(404, 422, _404="unknown program (program_not_found)"))
async def program_versions(name: str, programs: ProgramsDep) -> dict[str, Any]:
    """Every version of a program, oldest first, with the score and provenance of those an
    optimization made."""
    if "@" in name:
        raise InvalidRequestError(f"name a program without a version here, not {name!r}",
                                  type="invalid_program_reference")
    newest = await programs.find(name)  # 422 for a malformed name, 404 program_not_found
    return {"name": newest.name, "latest": newest.version,
            "versions": [p.version_summary() for p in programs.versions(newest.name)]}
