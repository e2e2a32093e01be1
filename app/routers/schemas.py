"""The response models: what the OpenAPI document declares and what the routes answer through.

Routes return plain dicts and declare one of these as ``response_model``: FastAPI validates the
dict into the model once (in pydantic-core) and writes JSON from it, so a response costs a few
microseconds more than an untyped dict (measured: +2–3 µs for /predict, ~1.5 µs a batch item,
against ~1.5 ms of gateway CPU per request). Keys that do not apply are left out, never null:
such fields are ``Omittable`` and the routes set ``response_model_exclude_unset``.

Every error is ``ErrorResponse``, the one shape ``app.main``'s handlers and the middleware write.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field
from pydantic.json_schema import SkipJsonSchema, models_json_schema

from app.services.programs import Module

REF = "#/components/schemas/{model}"

# A key that is absent when it does not apply: not null in the schema, no default shown.
Omittable = SkipJsonSchema[None]


def _omitted(description: str) -> Any:
    return Field(None, description=description, json_schema_extra=lambda s: s.pop("default", None))


def round_cost(usd: float) -> float:
    """Costs are sums of products of floats: 0.0024000000000000002 becomes 0.0024."""
    return round(usd, 10)


Cost = Annotated[float, AfterValidator(round_cost), Field(description="USD, rounded to 10 decimal places")]


class Usage(BaseModel):
    """Token counts: prompt, completion, total."""
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


# --- errors ---------------------------------------------------------------------------------


class ErrorItem(BaseModel):
    """One reason a request (or a tool's arguments) failed validation."""

    loc: list[str | int]
    msg: str
    type: str


class ErrorInfo(BaseModel):
    """An error, as a batch item or a tool result carries it."""

    model_config = ConfigDict(extra="allow")

    type: str = Field(description="what went wrong, e.g. invalid_request, upstream_timeout, tool_error")
    message: str
    retryable: bool | Omittable = _omitted("present (true) when the same request may succeed later")
    retry_after_s: float | Omittable = _omitted("seconds to wait before retrying (also in Retry-After)")
    errors: list[ErrorItem] | Omittable = _omitted("each validation failure (invalid_request, invalid_json)")


class ErrorBody(ErrorInfo):
    """Further keys depend on the type: ``raw`` (the model's text), ``limit``, ``available``, ..."""

    request_id: str = Field(description="the X-Request-Id of this request; it is in every log line")


class ErrorResponse(BaseModel):
    """Every error the gateway answers, whatever the status."""

    error: ErrorBody


class OpenAIErrorBody(BaseModel):
    """vLLM's (and OpenAI's) error, which OpenAI clients parse: as vLLM wrote it when it is vLLM's
    word on the request, else the gateway's own, with the gateway's ``type`` and its ``request_id``."""

    model_config = ConfigDict(extra="allow")

    message: str
    type: str
    param: str | None = None
    code: int | str | None = None


class OpenAIErrorResponse(BaseModel):
    """Every error of the OpenAI-compatible routes."""

    error: OpenAIErrorBody


_ERROR_DESCRIPTIONS = {
    400: "The body is not JSON (invalid_json), or the upstream refused the request (upstream_bad_request)",
    401: "An API key is required and was missing or not valid (unauthorized)",
    403: "The API key may not do this: a scope, model or tool it lacks (scope_missing, model_not_allowed, "
         "tool_not_allowed)",
    404: "Not found",
    409: "Conflict",
    413: "The request body is over the gateway's limit (payload_too_large)",
    422: "The request is invalid (invalid_request and more specific types)",
    429: "The upstreams serving the model are saturated or the gateway's queue is full (upstream_overloaded), "
         "or the API key's limit or budget is reached (rate_limited, budget_exceeded: the limit is named)",
    500: "A bug in the gateway (internal_error); the request id is in the logs",
    502: "The upstream answered with an error or something unusable",
    503: "The upstream (or a tool's service) is unavailable or overloaded",
    504: "The upstream (or a tool) did not answer in time",
}

_RETRY_AFTER = {"Retry-After": {"description": "seconds to wait, when the error is retryable",
                                "schema": {"type": "integer"}}}
COMMON_HEADERS = {
    "X-Request-Id": {"description": "the request's id: the caller's X-Request-Id when it is sane, else a new one; "
                                    "in every log line, and sent upstream as <id>-<n>", "schema": {"type": "string"}},
    "X-Vgate-Overhead-Ms": {"description": "time the request spent outside upstream calls, in ms",
                            "schema": {"type": "number"}},
}
RUN_ID_HEADER = {"X-Vgate-Run-Id": {"description": "the agent run's id (GET /agent/runs/{run_id}/events resumes it)",
                                    "schema": {"type": "string"}}}


def error_responses(*statuses: int, model: type[BaseModel] = ErrorResponse,
                    **described: str) -> dict[int | str, dict[str, Any]]:
    """``responses=`` for a route: each status (and 500, which any route can answer) as an
    ``ErrorResponse`` (or ``model``). ``described`` overrides a description: ``_404="unknown program"``."""
    out: dict[int | str, dict[str, Any]] = {}
    for status in sorted({*statuses, 500}):
        entry: dict[str, Any] = {"model": model,
                                 "description": described.get(f"_{status}", _ERROR_DESCRIPTIONS[status])}
        if status in (429, 502, 503, 504):
            entry["headers"] = _RETRY_AFTER
        out[status] = entry
    return out


# --- /predict -------------------------------------------------------------------------------


# A multi-step program's responses say this module (programs with ``steps``).
ProgramModule = Module | Literal["steps"]


class StepItemTrace(BaseModel):
    """One item of a mapped step: its inputs and its prediction."""

    model_config = ConfigDict(extra="allow")

    index: int
    inputs: dict[str, Any]
    outputs: dict[str, Any]
    usage: Usage
    cost_usd: Cost
    latency_ms: float
    model: str


class StepTrace(BaseModel):
    """One step of a multi-step program, as it ran: a mapped step's outputs are lists, one value per item."""

    model_config = ConfigDict(extra="allow")

    name: str
    program: str | Omittable = _omitted("the program (and version) a program step ran")
    inputs: dict[str, Any] = Field(description="the step's inputs, as its references gave them")
    outputs: dict[str, Any]
    usage: Usage
    cost_usd: Cost
    latency_ms: float
    model: str | None = Field(description="null for a mapped step over no items")
    map: str | Omittable = _omitted("the input field a mapped step ran over, once per item")
    items: list[StepItemTrace] | Omittable = _omitted("each item of a mapped step")
    trace: list[StepTrace] | Omittable = _omitted("the steps of the program a step ran, when it has steps")


class PredictionResult(BaseModel):
    """A prediction: the typed outputs, with reasoning, vote and repair details when they apply, usage, cost and
    latency."""
    outputs: dict[str, Any] = Field(description="the signature's output fields, in their declared types")
    reasoning: str | Omittable = _omitted("the chain of thought (module chain_of_thought)")
    agreement: dict[str, float] | Omittable = _omitted(
        "a vote's (module majority, or config.n > 1): per output field, the share of valid samples that gave "
        "the winning value")
    samples: int | Omittable = _omitted("a vote's: how many samples were drawn (n), in one upstream call")
    valid_samples: int | Omittable = _omitted("a vote's: how many samples matched the signature (those voted)")
    repairs: int | Omittable = _omitted(
        "how many repair calls were made (config.repair) after replies that did not match the signature; "
        "present when any was")
    usage: Usage = Field(description="summed over the steps of a multi-step program (and a prediction's repairs)")
    cost_usd: Cost
    latency_ms: float
    ttft_ms: float | None = Field(description="time to the first token, when the upstream streamed")
    model: str = Field(description="the model that answered (the steps' models, comma-separated, if several)")
    trace: list[StepTrace] | Omittable = _omitted("a multi-step program's steps, in the order declared")


class PredictResponse(PredictionResult):
    """One example's prediction."""

    request_id: str
    signature: str = Field(description="the signature, in its string form")
    module: ProgramModule
    program: str | Omittable = _omitted("the program's name, when one was run")


class BatchItem(PredictionResult):
    """A batch item that succeeded: its prediction and its position in the batch."""
    index: int


class BatchItemError(BaseModel):
    """A batch item that failed: its position and its error."""
    index: int
    error: ErrorInfo


class BatchPredictResponse(BaseModel):
    """A batch: each item succeeded or failed on its own, in the order sent."""

    results: list[BatchItem | BatchItemError]
    succeeded: int
    failed: int
    usage: Usage = Field(description="summed over the items that succeeded")
    cost_usd: Cost
    latency_ms: float
    model: str | list[str] | None = Field(description="the model, the models if several answered, null if none")
    request_id: str
    signature: str
    module: ProgramModule
    program: str | Omittable = _omitted("the program's name, when one was run")


class ProgramSummary(BaseModel):
    """A named program as GET /predict/programs lists it."""
    name: str
    version: int = Field(description="the newest version, the one a request naming the program gets")
    description: str
    signature: str
    instructions: str | None
    module: ProgramModule
    demos: int = Field(description="how many few-shot demos the program carries")
    model: str | None
    config: dict[str, Any] = Field(description="the sampling settings the program sets")
    steps: list[str] | Omittable = _omitted("a multi-step program's steps, by name")


class ProgramList(BaseModel):
    """The named programs the gateway serves."""
    programs: list[ProgramSummary]


class ProgramVersion(ProgramSummary):
    """One saved version of a program, with its score and how it was made."""
    version: int
    score: float | None = Field(description="the validation score the optimization that made it measured")
    provenance: dict[str, Any] | None = Field(
        description="how it was made: strategy, metric, trainset/valset sizes, base version, score_before, "
                    "usage and cost of the optimization")
    created_at: str | None = Field(description="when it was saved (ISO 8601, UTC); null for a file written by hand")


class ProgramVersions(BaseModel):
    """Every version of a program."""
    name: str
    latest: int = Field(description="the newest version, the default")
    versions: list[ProgramVersion] = Field(description="oldest first")


# --- /agent ---------------------------------------------------------------------------------


class AgentRunStarted(BaseModel):
    """The ``run`` event, first of every stream."""

    run_id: str = Field(description="resume with GET /agent/runs/{run_id}/events")
    model: str
    session_id: str | None
    tools: list[str] = Field(description="the tools enabled for this run")


class AgentText(BaseModel):
    """``delta`` (the model's text) and ``reasoning`` (its thinking) events. When the run ends with
    an answer, the deltas of its last step join to ``final.answer``; text that a step streamed
    before its tool calls is no part of it."""

    text: str
    step: int = Field(description="the step (model turn) the text belongs to: 1, 2, ...")


class AgentToolCall(BaseModel):
    """The ``tool_call`` event: a tool the model asked for, with its arguments."""
    id: str
    name: str
    arguments: Any = Field(description="the model's arguments: an object, or the raw text if not JSON")


class AgentToolResult(BaseModel):
    """The ``tool_result`` event: the tool's result, or its error when it failed."""
    id: str
    name: str
    ok: bool
    latency_ms: float
    result: Any = _omitted("the tool's result, when ok")
    error: ErrorInfo | Omittable = _omitted("why the tool failed, when not ok (the run goes on)")


class AgentFinalEvent(BaseModel):
    """The ``final`` event: how the run ended, and what it cost."""

    answer: str | None = Field(description="null when the run stopped at max_steps; cut off at length")
    stop_reason: Literal["answer", "max_steps", "length"] = Field(
        description="answer; max_steps: no answer within max_steps; length: the model hit max_tokens")
    steps: int
    model_calls: int
    usage: Usage
    cost_usd: Cost
    latency_ms: float
    model: str
    run_id: str
    session_id: str | Omittable = _omitted("the session, when the run continued one")
    message: str | Omittable = _omitted("why the run stopped early (max_steps, length)")
    session_saved: bool | Omittable = _omitted(
        "false when the turn could not be added to the session's history (the shared store unreachable, or "
        "the session's lease lost); absent when it was kept")


class AgentErrorEvent(ErrorInfo):
    """The ``error`` event, last of a failed run."""

    status: int | Omittable = _omitted("the HTTP status the same error has as a JSON response")


class TraceToolCall(AgentToolCall):
    """A tool call in an agent run's trace."""
    event: Literal["tool_call"]


class TraceToolResult(AgentToolResult):
    """A tool result in an agent run's trace."""
    event: Literal["tool_result"]


class AgentFinal(AgentFinalEvent):
    """The run's outcome (``Accept: application/json``), with its tool calls and their results."""

    trace: list[Annotated[TraceToolCall | TraceToolResult, Field(discriminator="event")]]


_EVENTS: dict[str, type[BaseModel]] = {
    "run": AgentRunStarted,
    "delta": AgentText,
    "reasoning": AgentText,
    "tool_call": AgentToolCall,
    "tool_result": AgentToolResult,
    "final": AgentFinalEvent,
    "error": AgentErrorEvent,
}

EVENT_STREAM_DESCRIPTION = (
    "Server-sent events, each with an `id` (resume with `Last-Event-ID` at "
    "`GET /agent/runs/{run_id}/events`), an `event` name and JSON `data`: `run` first, then `delta`, "
    "`reasoning`, `tool_call` and `tool_result` as they happen, and `final` or `error` last. "
    "Comment lines keep the connection alive."
)


def sse_components(events: dict[str, type[BaseModel]], stream: str, of: str) -> dict[str, Any]:
    """Component schemas of a ``text/event-stream`` whose events are ``events`` (name: data model), as
    ``<stream>_<name>`` variants of one ``<stream>``: FastAPI only registers the models of JSON responses."""
    _, top = models_json_schema([(m, "serialization") for m in dict.fromkeys(events.values())], ref_template=REF)
    components: dict[str, Any] = dict(top.get("$defs", {}))
    variants = []
    for name, model in events.items():
        title = f"{stream}_{name}"
        components[title] = {
            "title": title,
            "type": "object",
            "required": ["event", "data"],
            "properties": {
                "event": {"const": name},
                "id": {"type": "string", "description": f"the event's number in the {of}: 1, 2, 3, ..."},
                "data": {"type": "string", "contentMediaType": "application/json",
                         "contentSchema": {"$ref": REF.format(model=model.__name__)}},
            },
        }
        variants.append({"$ref": REF.format(model=title)})
    components[stream] = {"title": stream, "oneOf": variants}
    return components


def event_stream_components() -> dict[str, Any]:
    """The agent's event stream."""
    return sse_components(_EVENTS, "AgentEvent", "run")


# itemSchema (OpenAPI 3.2, one event), as FastAPI itself documents an event stream
EVENT_STREAM_RESPONSE: dict[str, Any] = {
    "description": EVENT_STREAM_DESCRIPTION,
    "content": {"text/event-stream": {"itemSchema": {"$ref": REF.format(model="AgentEvent")}}},
}


# --- operations -----------------------------------------------------------------------------


class HealthResponse(BaseModel):
    """The answer of /healthz: the process is alive."""
    status: Literal["ok"]


class ReadyResponse(BaseModel):
    """The answer of /readyz: whether an upstream answers its health check."""
    status: Literal["ready", "unready"]
    upstream: Literal["reachable", "unreachable"]


class UpstreamModelInfo(BaseModel):
    """A model as the upstream lists it (vLLM adds max_model_len, root, permission, ...)."""

    model_config = ConfigDict(extra="allow")

    id: str


class ModelList(BaseModel):
    """The models every upstream serves, joined (OpenAI's list shape)."""
    object: Literal["list"]
    data: list[UpstreamModelInfo]
