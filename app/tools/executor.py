"""Runs tools: one code path for the agent loop and ``POST /tools/{name}``.

:meth:`ToolExecutor.execute` never raises for a tool's failure: unknown name, unavailable tool,
invalid arguments (JSON nested too deeply and text that is not valid Unicode included), the tool's
own error, a timeout or a bug (in the tool or in its validator) all come back as a
:class:`ToolResult` with ``ok=False`` and ``error={"type", "message"}``, which the agent hands to
the model and the router maps to an HTTP status. Only cancellation propagates, so cancelling an
agent run cancels its tool call.

A result is always strict JSON in valid Unicode (see :func:`strict_json`): a service's JSON may
spell lone surrogates (``"\\ud800"``) and NaN, which no UTF-8 stream or strict JSON document can
carry, and the result goes to the model, to an SSE stream and into JSON responses.

Sync tools run on a dedicated, bounded thread pool (never on the event loop, never in the
default executor that DNS lookups share). A sync tool that times out cannot be interrupted: its
thread finishes in the background and its result is dropped.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import json
import math
import re
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import pydantic_core
import structlog

from app.metrics import Metrics
from app.settings import Settings
from app.tools.registry import ArgumentsError, Tool, ToolError, ToolRegistry, find_in_arguments

logger = structlog.get_logger(__name__)

MAX_ARGUMENT_BYTES = 256 * 1024
UNKNOWN_TOOL_LABEL = "<unknown>"  # metrics label for names that are not registered (bounded cardinality)

# error type -> status label of vgate_tool_calls
_METRIC_STATUS = {
    "unknown_tool": "unknown_tool",
    "tool_unavailable": "unavailable",
    "invalid_arguments": "invalid_arguments",
    "tool_timeout": "timeout",
}

_OPERATOR_ERRORS = frozenset({"tool_timeout", "tool_upstream_error", "tool_failed"})


@dataclass(frozen=True, slots=True)
class ToolResult:
    """A tool call's outcome: its result or error, and how long it took."""
    name: str
    call_id: str | None
    ok: bool
    result: Any = None  # JSON-serialisable; None when not ok
    error: dict[str, Any] | None = None  # {"type", "message"} (+ "errors" for invalid_arguments)
    latency_ms: float = 0.0

    def content(self) -> str:
        """What the model reads: the result (text as is, anything else as JSON) or ``{"error": ...}``."""
        if not self.ok:
            return json.dumps({"error": self.error}, ensure_ascii=False)
        if isinstance(self.result, str):
            return self.result
        return json.dumps(self.result, ensure_ascii=False)

    def to_message(self) -> dict[str, Any]:
        """The OpenAI ``tool`` message answering the model's tool call."""
        return {"role": "tool", "tool_call_id": self.call_id, "content": self.content()}


class ToolExecutor:
    """Runs tool calls: argument validation, timeouts, a concurrency bound, metrics and logs."""
    def __init__(self, registry: ToolRegistry, settings: Settings, metrics: Metrics) -> None:
        self.registry = registry
        self.default_timeout_s = settings.tool_timeout_s
        self.metrics = metrics
        self._slots = asyncio.Semaphore(settings.max_concurrent_tools)
        self._threads = ThreadPoolExecutor(
            max_workers=settings.max_concurrent_tools, thread_name_prefix="vgate-tool"
        )

    def close(self) -> None:
        """Stop the thread pool (from the app's lifespan). Running sync tools are not waited for."""
        self._threads.shutdown(wait=False, cancel_futures=True)

    async def execute(
        self, name: str, arguments: dict[str, Any] | str | None, *, call_id: str | None = None
    ) -> ToolResult:
        """Validate ``arguments`` (a dict, or JSON text as a model writes it) and run tool ``name``."""
        start = time.perf_counter()
        arg_bytes = _size(arguments)
        log = logger.bind(tool=name[:100], call_id=call_id, argument_bytes=arg_bytes)

        def record(status: str, error_type: str | None = None) -> float:
            latency_ms = round((time.perf_counter() - start) * 1000, 3)
            label = name if name in self.registry else UNKNOWN_TOOL_LABEL
            self.metrics.tool_calls.labels(tool=label, status=status).inc()
            # warn about what operators may need to act on, not about callers' mistakes
            level = log.warning if error_type in _OPERATOR_ERRORS else log.info
            if error_type is None:
                level("tool_call", status=status, duration_ms=latency_ms)
            else:
                level("tool_call", status=status, duration_ms=latency_ms, error_type=error_type)
            return latency_ms

        def failed(type_: str, message: str, **details: Any) -> ToolResult:
            latency_ms = record(_METRIC_STATUS.get(type_, "error"), type_)
            error = {"type": type_, "message": message, **details}
            return ToolResult(name, call_id, False, None, error, latency_ms)

        def bug(exc: BaseException) -> ToolResult:
            # Frames only: an exception's message (and a traceback's locals) may hold argument values.
            frames = "".join(traceback.format_tb(exc.__traceback__))
            log.error("tool_exception", exc_type=type(exc).__name__, traceback=frames)
            return failed("tool_failed", f"tool {name!r} failed unexpectedly ({type(exc).__name__})")

        tool = self.registry.get(name)
        if tool is None:
            available = ", ".join(t.name for t in self.registry if t.available)
            return failed("unknown_tool", f"unknown tool {name!r}; available tools: {available or 'none'}")
        if not tool.available:
            return failed("tool_unavailable", f"tool {name!r} is unavailable: {tool.unavailable_reason}")
        try:
            kwargs = tool.validate(_parse_arguments(arguments, arg_bytes))
        except ArgumentsError as exc:
            return failed("invalid_arguments", exc.message, errors=exc.errors)
        except RecursionError:  # from json.loads, or a validator walking the structure
            return failed("invalid_arguments", "arguments are nested too deeply",
                          errors=[{"loc": [], "msg": "nested too deeply", "type": "too_deep"}])
        except UnicodeError:  # text no URL or JSON body can carry; the message may hold it: not shown
            return failed("invalid_arguments", "arguments hold text that is not valid Unicode (a lone surrogate "
                          "such as \\ud800?)",
                          errors=[{"loc": [], "msg": "not valid Unicode text", "type": "unicode"}])
        except Exception as exc:  # a bug in the tool's validator: execute() still never raises
            return bug(exc)

        timeout_s = tool.timeout_s or self.default_timeout_s
        deadline: asyncio.Timeout | None = None
        try:
            async with self._slots:
                self.metrics.tools_in_flight.inc()
                run_start = time.perf_counter()
                try:
                    # created here (it starts counting when created): queueing for a slot is not
                    # part of a tool's timeout
                    deadline = asyncio.timeout(timeout_s)
                    async with deadline:
                        value = await self._run(tool, kwargs)
                finally:
                    self.metrics.tools_in_flight.dec()
                    self.metrics.tool_duration.labels(tool=name).observe(time.perf_counter() - run_start)
            try:
                result = pydantic_core.to_jsonable_python(value)
            except UnicodeEncodeError:  # pydantic encodes keys: a key holding a lone surrogate
                result = pydantic_core.to_jsonable_python(strict_json(value))
            result = strict_json(result)
        except asyncio.CancelledError:
            record("cancelled")
            raise
        except ToolError as exc:
            return failed(exc.type, exc.message, **exc.details)
        except TimeoutError as exc:
            if deadline is not None and deadline.expired():
                return failed("tool_timeout", f"tool {name!r} did not finish within {timeout_s:g} s")
            return bug(exc)  # a TimeoutError of the tool's own making
        except pydantic_core.PydanticSerializationError:
            return failed("tool_failed", f"tool {name!r} returned a value that is not JSON-serialisable")
        except Exception as exc:
            return bug(exc)
        return ToolResult(name, call_id, True, result, None, record("ok"))

    async def _run(self, tool: Tool, kwargs: dict[str, Any]) -> Any:
        if tool.is_async:
            return await tool.func(**kwargs)
        # copy the context so structlog's contextvars (request id) reach the tool's own logs
        call = functools.partial(contextvars.copy_context().run, tool.func, **kwargs)
        return await asyncio.get_running_loop().run_in_executor(self._threads, call)


_SURROGATE = re.compile("[\ud800-\udfff]")


def strict_json(value: Any) -> Any:
    """``value`` (JSON-able: dicts, lists, str, numbers, None) with every lone surrogate, in
    strings and keys, replaced by U+FFFD and every NaN or Infinity by None: what a UTF-8 stream and
    a strict JSON document can carry. ``value`` itself when nothing needs it (checked first, in C);
    otherwise a repaired copy, walked without recursion (however deep, no stack overflow)."""
    try:
        json.dumps(value, ensure_ascii=False, allow_nan=False).encode("utf-8")
        return value
    except (ValueError, TypeError, RecursionError):  # UnicodeEncodeError and NaN are ValueErrors
        pass
    root = [value]
    stack: list[tuple[Any, Any]] = [(root, 0)]  # (container, key): the item to repair
    while stack:
        parent, key = stack.pop()
        item = parent[key]
        if isinstance(item, str):
            parent[key] = _valid_text(item)
        elif isinstance(item, float) and not math.isfinite(item):
            parent[key] = None
        elif isinstance(item, dict):
            copy = {_valid_text(k) if isinstance(k, str) else k: v for k, v in item.items()}
            parent[key] = copy
            stack.extend((copy, k) for k in copy)
        elif isinstance(item, list | tuple):
            copy_list = list(item)
            parent[key] = copy_list
            stack.extend((copy_list, i) for i in range(len(copy_list)))
    return root[0]


def _valid_text(text: str) -> str:
    """``text`` with each lone surrogate replaced by U+FFFD (a pair written as two surrogates is
    joined into its character)."""
    if not _SURROGATE.search(text):
        return text
    return text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")


def _size(arguments: Any) -> int:
    if arguments is None:
        return 0
    if isinstance(arguments, str):
        return len(arguments.encode("utf-8", "replace"))
    try:
        return len(json.dumps(arguments, ensure_ascii=False, default=str).encode("utf-8", "replace"))
    except (TypeError, ValueError, RecursionError):
        return -1


def _parse_arguments(arguments: dict[str, Any] | str | None, size: int) -> dict[str, Any]:
    if size > MAX_ARGUMENT_BYTES:
        raise ArgumentsError(
            f"arguments too large ({size} bytes, at most {MAX_ARGUMENT_BYTES})",
            [{"loc": [], "msg": "arguments too large", "type": "too_large"}],
        )
    if arguments is None:
        return {}
    if isinstance(arguments, str):
        if not arguments.strip():  # models send "" for a tool without parameters
            return {}
        try:
            arguments = json.loads(arguments, parse_constant=_refuse_constant)
        except json.JSONDecodeError as exc:
            raise ArgumentsError(
                f"arguments are not valid JSON: {exc.msg} at position {exc.pos}",
                [{"loc": [], "msg": f"invalid JSON: {exc.msg}", "type": "json_invalid"}],
            ) from None
    else:
        _refuse_non_finite(arguments)
    if not isinstance(arguments, dict):
        raise ArgumentsError(
            f"arguments must be a JSON object, not {type(arguments).__name__}",
            [{"loc": [], "msg": "expected a JSON object", "type": "dict_type"}],
        )
    return arguments


def _refuse_constant(name: str) -> Any:
    """NaN and Infinity: Python's JSON reader takes them, JSON (and the services tools call) does not."""
    raise ArgumentsError(f"arguments are not valid JSON: {name} is not a JSON number",
                         [{"loc": [], "msg": f"{name} is not a JSON number", "type": "json_invalid"}])


def _refuse_non_finite(arguments: Any) -> None:
    """The same for arguments that arrive parsed (``POST /tools``): no NaN or Infinity anywhere in them."""
    found = find_in_arguments(arguments, lambda v: isinstance(v, float) and not math.isfinite(v))
    if found:
        loc, value = found[0]
        raise ArgumentsError(f"arguments are not valid JSON: {value} is not a JSON number",
                             [{"loc": loc, "msg": f"{value} is not a JSON number", "type": "finite_number"}])
