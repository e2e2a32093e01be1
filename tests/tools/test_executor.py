from __future__ import annotations

import asyncio
import datetime as dt
import json
import threading
import time
from typing import Any

import pydantic
import pytest
import structlog
from structlog.testing import capture_logs

from app.metrics import Metrics
from app.tools.executor import UNKNOWN_TOOL_LABEL, ToolExecutor, ToolResult
from app.tools.registry import Tool, ToolError, ToolRegistry
from tests.tools.conftest import make_settings, tool_calls


def executor(registry: ToolRegistry, metrics: Metrics, **settings: Any) -> ToolExecutor:
    return ToolExecutor(registry, make_settings(**settings), metrics)


def in_flight(metrics: Metrics) -> float:
    return metrics.registry.get_sample_value("vgate_tools_in_flight")  # type: ignore[return-value]


async def test_runs_sync_and_async_tools(metrics: Metrics) -> None:
    registry = ToolRegistry()

    @registry.tool()
    def add(a: int, b: int) -> int:
        """Add two integers."""
        return a + b

    @registry.tool()
    async def when(year: int) -> dt.date:
        """A date (not JSON by itself: the executor makes it JSON)."""
        return dt.date(year, 1, 2)

    tools = executor(registry, metrics)
    result = await tools.execute("add", {"a": 1, "b": "2"}, call_id="call_1")
    assert result == ToolResult("add", "call_1", True, 3, None, result.latency_ms)
    assert result.latency_ms >= 0
    assert (await tools.execute("when", '{"year": 2024}')).result == "2024-01-02"
    assert tool_calls(metrics, "add", "ok") == 1
    assert metrics.registry.get_sample_value("vgate_tool_duration_seconds_count", {"tool": "add"}) == 1
    assert in_flight(metrics) == 0


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ('{"a": 1', "not valid JSON"),
        ("[1, 2]", "must be a JSON object"),
        ("42", "must be a JSON object"),
        ({"a": "one"}, "'a': Input should be a valid integer"),
        ({}, "'a': Field required"),
        ({"a": 1, "z": 2}, "'z': Extra inputs are not permitted"),
        ('{"a": "' + "x" * 300_000 + '"}', "arguments too large"),
    ],
)
async def test_invalid_arguments_become_error_results(metrics: Metrics, arguments: Any, message: str) -> None:
    registry = ToolRegistry()
    ran = []

    @registry.tool()
    def f(a: int) -> None:
        """F."""
        ran.append(a)

    result = await executor(registry, metrics).execute("f", arguments)
    assert not result.ok and result.result is None
    assert result.error is not None and result.error["type"] == "invalid_arguments"
    assert message in result.error["message"]
    assert result.error["errors"] and all({"loc", "msg", "type"} <= e.keys() for e in result.error["errors"])
    assert ran == []
    assert tool_calls(metrics, "f", "invalid_arguments") == 1


DEEP = "[" * 50_000


@pytest.mark.parametrize("arguments", [DEEP, '{"a": ' + DEEP, '{"a": ' + DEEP + "]" * 50_000 + "}"])
async def test_arguments_nested_too_deeply_are_invalid_arguments(metrics: Metrics, arguments: str) -> None:
    registry = ToolRegistry()
    registry.register(lambda a: "ran", name="f", description="F.")
    result = await executor(registry, metrics).execute("f", arguments)  # a RecursionError inside json.loads
    assert result.error is not None and result.error["type"] == "invalid_arguments", result.error
    assert "nested too deeply" in result.error["message"]
    assert [e["type"] for e in result.error["errors"]] == ["too_deep"]
    assert tool_calls(metrics, "f", "invalid_arguments") == 1


async def test_a_deeply_nested_argument_object_does_not_break_the_size_estimate(metrics: Metrics) -> None:
    deep: list[Any] = []
    for _ in range(50_000):
        deep = [deep]
    registry = ToolRegistry()
    registry.register(lambda a: "ran", name="f", description="F.")
    result = await executor(registry, metrics).execute("f", {"a": deep})
    assert result.result == "ran", result.error


@pytest.mark.parametrize(("exc", "type_", "message"), [
    (UnicodeEncodeError("utf-8", "\ud800", 0, 1, "surrogates not allowed"), "invalid_arguments", "not valid Unicode"),
    (RecursionError("maximum recursion depth exceeded"), "invalid_arguments", "nested too deeply"),
    (RuntimeError("db password is hunter2"), "tool_failed", "tool 'v' failed unexpectedly (RuntimeError)"),
])
async def test_a_validator_that_raises_never_makes_execute_raise(
    metrics: Metrics, exc: Exception, type_: str, message: str
) -> None:
    ran = []

    def validate(arguments: dict[str, Any]) -> dict[str, Any]:
        raise exc

    registry = ToolRegistry()
    registry.add(Tool(name="v", description="V.", parameters={"type": "object"}, func=lambda: ran.append(1),
                      is_async=False, validate=validate))
    with capture_logs() as logs:
        result = await executor(registry, metrics).execute("v", {"x": "hunter2"})
    assert result.error is not None and result.error["type"] == type_, result.error
    assert message in result.error["message"]
    assert ran == []
    assert "hunter2" not in json.dumps(logs, default=str) + result.content()
    if type_ == "tool_failed":  # a bug in the tool: logged with its frames, like one in the tool's function
        bug = next(e for e in logs if e["event"] == "tool_exception")
        assert bug["exc_type"] == "RuntimeError" and "raise exc" in bug["traceback"]
        assert tool_calls(metrics, "v", "error") == 1
    else:
        assert tool_calls(metrics, "v", "invalid_arguments") == 1


async def test_empty_argument_text_means_no_arguments(metrics: Metrics) -> None:
    registry = ToolRegistry()
    registry.register(lambda: "pong", name="ping", description="Ping.")
    tools = executor(registry, metrics)
    for arguments in ("", "  ", None, "{}", {}):
        assert (await tools.execute("ping", arguments)).result == "pong"


async def test_unknown_and_unavailable_tools(metrics: Metrics) -> None:
    registry = ToolRegistry()
    registry.register(lambda: 1, name="one", description="One.")
    registry.register(lambda: 1, name="search", description="S.", available=False, unavailable_reason="no backend")
    tools = executor(registry, metrics)

    unknown = await tools.execute("nope", {}, call_id="c")
    assert unknown.error == {"type": "unknown_tool", "message": "unknown tool 'nope'; available tools: one"}
    assert tool_calls(metrics, UNKNOWN_TOOL_LABEL, "unknown_tool") == 1  # not a label per made-up name

    unavailable = await tools.execute("search", {})
    assert unavailable.error == {"type": "tool_unavailable",
                                 "message": "tool 'search' is unavailable: no backend"}
    assert tool_calls(metrics, "search", "unavailable") == 1


async def test_timeout_becomes_an_error_result(metrics: Metrics) -> None:
    registry = ToolRegistry()
    cancelled = asyncio.Event()

    @registry.tool(timeout_s=0.05)
    async def hang() -> None:
        """Never returns."""
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    result = await executor(registry, metrics).execute("hang", {})
    assert result.error == {"type": "tool_timeout", "message": "tool 'hang' did not finish within 0.05 s"}
    assert cancelled.is_set()
    assert tool_calls(metrics, "hang", "timeout") == 1
    assert in_flight(metrics) == 0


async def test_default_timeout_comes_from_settings(metrics: Metrics) -> None:
    registry = ToolRegistry()
    registry.register(lambda: time.sleep(0.3), name="slow_sync", description="Slow.")
    result = await executor(registry, metrics, tool_timeout_s=0.05).execute("slow_sync", {})
    assert result.error is not None and result.error["type"] == "tool_timeout"


async def test_waiting_for_a_slot_does_not_count_against_the_timeout(metrics: Metrics) -> None:
    registry = ToolRegistry()

    @registry.tool(timeout_s=0.5)
    async def nap() -> str:
        """Sleeps 0.15 s."""
        await asyncio.sleep(0.15)
        return "ok"

    tools = executor(registry, metrics, max_concurrent_tools=1)
    results = await asyncio.gather(*(tools.execute("nap", {}) for _ in range(4)))  # 0.6 s in all
    assert [r.result for r in results] == ["ok"] * 4


async def test_tool_errors_and_bugs_become_error_results(metrics: Metrics) -> None:
    registry = ToolRegistry()

    @registry.tool()
    def refuse(secret: str) -> None:
        """Refuses."""
        raise ToolError("no such city", type="tool_error", hint="try another")

    @registry.tool()
    async def crash(secret: str) -> None:
        """Has a bug."""
        raise KeyError(secret)

    @registry.tool()
    def own_timeout(secret: str) -> None:
        """A TimeoutError that is not the executor's deadline."""
        raise TimeoutError(secret)

    @registry.tool()
    def unserialisable(secret: str) -> object:
        """Returns something that is not JSON."""
        return object()

    tools = executor(registry, metrics)
    with capture_logs() as logs:
        refused = await tools.execute("refuse", {"secret": "hunter2"})
        crashed = await tools.execute("crash", {"secret": "hunter2"})
        timed = await tools.execute("own_timeout", {"secret": "hunter2"})
        unser = await tools.execute("unserialisable", {"secret": "hunter2"})

    assert refused.error == {"type": "tool_error", "message": "no such city", "hint": "try another"}
    assert crashed.error == {"type": "tool_failed", "message": "tool 'crash' failed unexpectedly (KeyError)"}
    assert timed.error == {"type": "tool_failed", "message": "tool 'own_timeout' failed unexpectedly (TimeoutError)"}
    assert unser.error == {"type": "tool_failed",
                           "message": "tool 'unserialisable' returned a value that is not JSON-serialisable"}
    assert tool_calls(metrics, "refuse", "error") == 1
    assert tool_calls(metrics, "crash", "error") == 1
    assert in_flight(metrics) == 0
    # the bug is logged with its frames, but no argument value reaches any log line
    bug = next(e for e in logs if e["event"] == "tool_exception" and e["tool"] == "crash")
    assert bug["exc_type"] == "KeyError" and "raise KeyError(secret)" in bug["traceback"]
    assert "hunter2" not in json.dumps(logs, default=str)


async def test_every_call_is_logged_with_size_status_and_duration(metrics: Metrics) -> None:
    registry = ToolRegistry()
    registry.register(lambda text: len(text), name="length", description="Length.")
    with capture_logs() as logs:
        await executor(registry, metrics).execute("length", '{"text": "confidential"}', call_id="c9")
    (line,) = [e for e in logs if e["event"] == "tool_call"]
    assert line["tool"] == "length" and line["call_id"] == "c9" and line["status"] == "ok"
    assert line["argument_bytes"] == len('{"text": "confidential"}')
    assert line["duration_ms"] >= 0
    assert "confidential" not in json.dumps(logs)


async def test_concurrency_is_capped(metrics: Metrics) -> None:
    registry = ToolRegistry()
    running = peak = 0
    lock = threading.Lock()

    def enter() -> None:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)

    def leave() -> None:
        nonlocal running
        with lock:
            running -= 1

    @registry.tool()
    async def async_work() -> None:
        """Async work."""
        enter()
        await asyncio.sleep(0.02)
        leave()

    @registry.tool()
    def sync_work() -> None:
        """Sync work."""
        enter()
        time.sleep(0.02)
        leave()

    tools = executor(registry, metrics, max_concurrent_tools=3)
    results = await asyncio.gather(*(tools.execute(n, {}) for n in ["async_work", "sync_work"] * 10))
    assert all(r.ok for r in results)
    assert peak == 3
    assert in_flight(metrics) == 0


async def test_cancellation_propagates_cancels_the_tool_and_is_counted(metrics: Metrics) -> None:
    registry = ToolRegistry()
    started, tool_cancelled = asyncio.Event(), asyncio.Event()

    @registry.tool()
    async def wait_forever() -> None:
        """Waits."""
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            tool_cancelled.set()
            raise

    task = asyncio.create_task(executor(registry, metrics).execute("wait_forever", {}))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert tool_cancelled.is_set()
    assert tool_calls(metrics, "wait_forever", "cancelled") == 1
    assert in_flight(metrics) == 0


async def test_sync_tools_run_off_the_event_loop(metrics: Metrics) -> None:
    registry = ToolRegistry()
    loop_thread = threading.get_ident()
    tool_thread: list[int] = []

    @registry.tool()
    def blocking() -> str:
        """Blocks its thread for 0.2 s."""
        tool_thread.append(threading.get_ident())
        time.sleep(0.2)
        return "done"

    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    ticking = asyncio.create_task(ticker())
    result = await executor(registry, metrics).execute("blocking", {})
    ticking.cancel()
    assert result.result == "done"
    assert tool_thread and tool_thread[0] != loop_thread
    assert ticks >= 5  # ~20 when the loop runs free; 0 or 1 if the sleep had blocked it


async def test_sync_tools_see_the_callers_context_vars(metrics: Metrics) -> None:
    registry = ToolRegistry()
    registry.register(lambda: structlog.contextvars.get_contextvars().get("request_id"),
                      name="whoami", description="Request id.")
    structlog.contextvars.bind_contextvars(request_id="req-1")
    try:
        assert (await executor(registry, metrics).execute("whoami", {})).result == "req-1"
    finally:
        structlog.contextvars.clear_contextvars()


async def test_result_serialises_pydantic_models(metrics: Metrics) -> None:
    class Point(pydantic.BaseModel):
        x: int
        y: int

    registry = ToolRegistry()
    registry.register(lambda: Point(x=1, y=2), name="point", description="A point.")
    assert (await executor(registry, metrics).execute("point", {})).result == {"x": 1, "y": 2}


def test_tool_message_for_the_model() -> None:
    ok = ToolResult("calc", "call_1", True, {"result": 4}, None, 1.0)
    text = ToolResult("fetch", "call_2", True, "plain text", None, 1.0)
    err = ToolResult("calc", "call_3", False, None, {"type": "tool_error", "message": "division by zero"}, 1.0)
    assert ok.to_message() == {"role": "tool", "tool_call_id": "call_1", "content": '{"result": 4}'}
    assert text.content() == "plain text"
    assert json.loads(err.content()) == {"error": {"type": "tool_error", "message": "division by zero"}}


async def test_a_result_holding_what_json_cannot_carry_is_repaired(metrics: Metrics) -> None:
    """A tool's result (a service's JSON, say) can hold lone surrogates ("\\ud800" is a legal JSON
    escape) and NaN or Infinity: no UTF-8 stream or strict JSON document carries them. Every tool's
    result comes back with U+FFFD for each lone surrogate (keys included) and null for NaN/Infinity."""
    registry = ToolRegistry()
    registry.register(lambda: {"v": "x\ud800y", "k\udfff": ["\ud83d\ude00", float("nan"), {"t": ("\udc00",)}],
                               "n": float("inf"), "ok": 1.5}, name="odd", description="Odd text.")
    registry.register(lambda: "plain \ud800", name="odd_text", description="Odd text.")
    tools = executor(registry, metrics)
    result = await tools.execute("odd", {})
    assert result.ok and result.result == {"v": "x\ufffdy", "k\ufffd": ["\U0001f600", None, {"t": ["\ufffd"]}],
                                           "n": None, "ok": 1.5}
    json.loads(json.dumps(result.result, allow_nan=False).encode("utf-8"))  # strict JSON, valid UTF-8
    result.content().encode("utf-8")  # what the model reads is valid text
    assert (await tools.execute("odd_text", {})).result == "plain \ufffd"


def test_the_repair_walks_deep_results_without_recursion() -> None:
    from app.tools.executor import strict_json

    deep: list[Any] = []
    inner = deep
    for _ in range(50_000):  # far past the recursion limit
        inner.append([])
        inner = inner[0]
    inner.append("\ud800")
    repaired = strict_json(deep)
    for _ in range(50_000):
        repaired = repaired[0]
    assert repaired == ["\ufffd"]
    clean = {"a": ["b", 1, None]}
    assert strict_json(clean) is clean  # nothing to repair: the value itself, not a copy
