"""POST /predict and GET /predict/programs: parse, call the predict service, shape the response."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field, model_validator

from app.errors import InvalidRequestError
from app.routers.deps import (
    PredictDep,
    ProgramsDep,
    RequestIdDep,
    SettingsDep,
    cancel_on_disconnect,
    routing_hints,
)
from app.routers.json_body import JSONBodyRoute
from app.routers.schemas import BatchPredictResponse, PredictResponse, ProgramList, error_responses
from app.services.predict import Prediction
from app.services.programs import Module, PredictConfig
from app.services.signature import parse_signature, parse_signature_cached

router = APIRouter(tags=["predict"], route_class=JSONBodyRoute, dependencies=[Depends(routing_hints)])


class PredictRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    signature: str | dict[str, Any] | None = Field(
        None, description='DSPy string form ("question -> answer: int") or the JSON field form'
    )
    program: str | None = Field(None, description="name of a program loaded at start (GET /predict/programs)")
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
        if (self.inputs is None) == (self.batch is None):
            raise ValueError("give exactly one of 'inputs' (one example) or 'batch' (a list of examples)")
        if self.batch is not None and not self.batch:
            raise ValueError("'batch' is empty")
        return self


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
async def predict(
    body: PredictRequest,
    request: Request,
    service: PredictDep,
    programs: ProgramsDep,
    settings: SettingsDep,
    request_id: RequestIdDep,
) -> dict[str, Any]:
    module: Module = "predict"
    demos: list[dict[str, Any]] | None = None
    model: str | None = None
    config: PredictConfig | None = None
    program_name = None
    if body.program is not None:
        program = programs.resolve(body.program)
        program_name = program.name if program.version == 1 else f"{program.name}@{program.version}"
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
        prediction: Prediction = await cancel_on_disconnect(request, service.predict(signature, body.inputs, **kw))
        return {**prediction.as_dict(), **head}

    assert body.batch is not None
    if len(body.batch) > settings.max_batch_size:
        raise InvalidRequestError(
            f"batch has {len(body.batch)} items; the limit is {settings.max_batch_size}",
            type="batch_too_large", limit=settings.max_batch_size,
        )
    result = await cancel_on_disconnect(request, service.predict_batch(signature, body.batch, **kw))
    results = []
    for i, item in enumerate(result.items):
        if isinstance(item, Prediction):
            results.append({"index": i, **item.as_dict()})
        else:
            results.append({"index": i, "error": item.body()})
    models = sorted({item.model for item in result.items if isinstance(item, Prediction)})
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


@router.get("/predict/programs", response_model=ProgramList, responses=error_responses())
async def list_programs(programs: ProgramsDep) -> dict[str, Any]:
    return {"programs": [p.summary() for p in programs.latest()]}
