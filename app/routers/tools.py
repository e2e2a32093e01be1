"""``GET /tools`` lists the tools; ``POST /tools/{name}`` runs one.

Runs go through the same :meth:`ToolExecutor.execute` as the agent; this router only maps a
failed result's error type to an HTTP status.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field

from app.errors import InvalidRequestError, NotFoundError, VGateError
from app.routers.deps import ExecutorDep
from app.routers.json_body import JSONBodyRoute
from app.routers.schemas import error_responses
from app.services.access import current_principal
from app.tools import ToolResult

router = APIRouter(prefix="/tools", tags=["tools"], route_class=JSONBodyRoute)


class ToolInfo(BaseModel):
    """A tool as GET /tools lists it: its schema and whether it can be called."""
    name: str
    description: str
    parameters: dict[str, Any]
    available: bool
    unavailable_reason: str | None = None  # set when available is false


class ToolList(BaseModel):
    """Every tool in the registry."""
    tools: list[ToolInfo]


class ToolCallRequest(BaseModel):
    """The body of POST /tools/{name}: the tool's arguments."""
    model_config = ConfigDict(extra="forbid")

    arguments: dict[str, Any] = Field(default_factory=dict)


class ToolCallResponse(BaseModel):
    """A tool's result and how long it took."""
    name: str
    result: Any
    latency_ms: float


@router.get("", response_model=ToolList, responses=error_responses())
async def list_tools(tools: ExecutorDep) -> ToolList:
    """List every tool with its description, JSON schema and availability."""
    return ToolList(tools=[ToolInfo(**tool.info()) for tool in tools.registry])


@router.post(
    "/{name}",
    response_model=ToolCallResponse,
    responses=error_responses(
        400, 401, 403, 404, 413, 422, 502, 503, 504,
        _400="the body is not JSON (invalid_json)",
        _404="unknown tool (unknown_tool)",
        _422="invalid arguments (invalid_request, with errors), or the tool refused them (tool_error)",
        _502="the tool's service failed (tool_upstream_error), or the tool has a bug (tool_failed)",
        _503="the tool is not available on this gateway (tool_unavailable)",
        _504="the tool did not finish in time (tool_timeout)",
    ),
)
async def call_tool(name: str, tools: ExecutorDep, body: ToolCallRequest | None = None) -> ToolCallResponse:
    """Call a tool directly with JSON arguments; a failure answers its 4xx or 5xx error."""
    principal = current_principal()
    if principal is not None:  # a caller spends a tool's credentials only with the key's permission
        principal.allow_tools([name])
    result = await tools.execute(name, body.arguments if body else {})
    if not result.ok:
        raise _http_error(result)
    return ToolCallResponse(name=result.name, result=result.result, latency_ms=result.latency_ms)


# error type -> HTTP status: the caller's input (4xx), the tool or its service (5xx)
_STATUS = {
    "tool_error": 422,  # the tool refused the input: division by zero, unknown time zone
    "tool_unavailable": 503,
    "tool_timeout": 504,
    "tool_upstream_error": 502,  # a service the tool calls failed
    "tool_failed": 502,  # a bug in the tool (the message is safe: no trace, no values)
}


def _http_error(result: ToolResult) -> VGateError:
    assert result.error is not None
    error = dict(result.error)
    type_, message = error.pop("type"), error.pop("message")
    if type_ == "unknown_tool":
        return NotFoundError(message, type=type_)
    if type_ == "invalid_arguments":
        return InvalidRequestError(message, **error)  # errors=[{"loc", "msg", "type"}]
    return VGateError(message, status_code=_STATUS.get(type_, 502), type=type_, **error)
