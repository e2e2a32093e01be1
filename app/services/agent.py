"""The tool-using agent: model → tool calls (in parallel) → results → model, until an answer.

A run is an asyncio task that publishes events into its ``AgentRun`` log; HTTP streams follow
that log (so a client can resume with ``Last-Event-ID``). Cancelling the task — the last client
went away — closes the upstream stream (vLLM aborts the sequence) and cancels running tools.

Native tool calling (vLLM ``tools``) is the default; an upstream that refuses it gets the ReAct
text protocol instead (see ``app.services.react``), remembered per model.
"""

from __future__ import annotations

import asyncio
import json
import time
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any, Literal

import structlog

from app.errors import InvalidRequestError, UpstreamBadRequestError, VGateError
from app.metrics import Metrics
from app.services import react
from app.services.agent_runs import AgentRun, RunStore, SessionStore
from app.services.lm import (
    ContentDelta,
    Done,
    LMClient,
    LMResult,
    ReasoningDelta,
    ToolCall,
    Usage,
)
from app.services.programs import PredictConfig
from app.settings import Settings
from app.tools.executor import ToolExecutor, ToolResult

log = structlog.get_logger("vgate.agent")

Mode = Literal["auto", "native", "react"]


@dataclass
class AgentTask:
    """A validated agent request, ready to run."""

    messages: list[dict[str, Any]]  # the conversation so far, system message excluded
    instructions: str | None
    tool_names: list[str]
    max_steps: int
    model: str | None
    config: PredictConfig
    tool_choice: Any = None  # first step only
    session_id: str | None = None
    mode: Mode = "auto"


@dataclass
class _Totals:
    usage: Usage = field(default_factory=Usage)
    cost_usd: float = 0.0
    steps: int = 0  # loop steps (each ends in an answer or in tool calls)
    model_calls: int = 0  # upstream calls, a discarded one included (it was paid for)
    model: str | None = None

    def add(self, r: LMResult) -> None:
        self.usage.add(r.usage)
        self.cost_usd += r.cost_usd
        self.model_calls += 1
        self.model = r.model


class AgentService:
    def __init__(self, lm: LMClient, tools: ToolExecutor, settings: Settings, metrics: Metrics) -> None:
        self.lm = lm
        self.tools = tools
        self.settings = settings
        self.metrics = metrics
        self.runs = RunStore(ttl_s=settings.agent_resume_ttl_s, max_runs=settings.agent_max_retained_runs)
        self.sessions = SessionStore(ttl_s=settings.agent_session_ttl_s, max_sessions=settings.agent_max_sessions)
        self._react_models: set[str] = set()  # upstream models that refused native tool calling

    async def aclose(self) -> None:
        """Cancel live runs (at shutdown) and wait for them to wind down."""
        live = [r.task for r in self.runs.live() if r.task is not None]
        for t in live:
            t.cancel()
        await asyncio.gather(*live, return_exceptions=True)

    # ------------------------------------------------------------------ request → task

    def check_tools(self, names: list[str] | None) -> list[str]:
        """The enabled tools: the named ones (each must exist and be available) or every available one."""
        registry = self.tools.registry
        if names is None:
            return [t.name for t in registry if t.available]
        unknown = [n for n in names if registry.get(n) is None]
        if unknown:
            raise InvalidRequestError(f"unknown tools: {', '.join(unknown)}", type="unknown_tool",
                                      available=registry.names())
        unavailable = [n for n in names if not registry.get(n).available]  # type: ignore[union-attr]
        if unavailable:
            raise InvalidRequestError(f"tools not available on this gateway: {', '.join(unavailable)}",
                                      type="tool_unavailable")
        return list(dict.fromkeys(names))

    def start(self, task: AgentTask) -> AgentRun:
        """Create the run and start its task. Raises 409 if the session is busy."""
        history: list[dict[str, Any]] = []
        if task.session_id is not None:
            got = self.sessions.acquire(task.session_id)
            if got is None:
                raise VGateError("another run is using this session", status_code=409, type="session_busy")
            history = got
        if len(self.runs.live()) >= self.settings.agent_max_concurrent_runs:
            if task.session_id is not None:
                self.sessions.release(task.session_id, None)
            raise VGateError("too many agent runs in progress; retry shortly", status_code=503,
                             type="agent_overloaded", retry_after_s=1.0)
        run = self.runs.create()
        run.session_id = task.session_id
        run.model = task.model
        task.messages = history + task.messages
        run.task = asyncio.create_task(self._run(run, task), name=run.run_id)
        return run

    # ------------------------------------------------------------------ the loop

    async def _run(self, run: AgentRun, task: AgentTask) -> None:
        structlog.contextvars.bind_contextvars(run_id=run.run_id)
        started = time.perf_counter()
        totals = _Totals()
        outcome = "error"
        conversation = list(task.messages)
        try:
            model = await self.lm.resolve_model(task.model)
            run.model = model
            run.publish("run", {"run_id": run.run_id, "model": model, "session_id": task.session_id,
                                "tools": task.tool_names})
            react_mode = task.mode == "react" or (task.mode == "auto" and model in self._react_models)
            answer, stop_reason = None, "max_steps"
            for step in range(1, task.max_steps + 1):
                totals.steps = step
                if react_mode:
                    answer = await self._react_step(run, task, model, conversation, totals, step)
                else:
                    try:
                        answer = await self._native_step(run, task, model, conversation, totals, step)
                    except (UpstreamBadRequestError, _SwitchToReact) as exc:
                        # vLLM without --enable-auto-tool-choice refuses "auto" with a 400 that names it;
                        # this can come at any step (a forced first call works without that flag).
                        refused = isinstance(exc, UpstreamBadRequestError) and _refuses_auto_tools(exc.message)
                        if task.mode != "auto" or not (refused or isinstance(exc, _SwitchToReact)):
                            raise
                        if refused:
                            log.warning("native_tools_refused_fallback_to_react", model=model, error=exc.message)
                            self._react_models.add(model)
                        react_mode = True
                        answer = await self._react_step(run, task, model, conversation, totals, step)
                if answer is not None:
                    stop_reason = "answer"
                    break
            outcome = "ok" if stop_reason == "answer" else "max_steps"
            final = {
                "answer": answer,
                "stop_reason": stop_reason,
                "steps": totals.steps,
                "model_calls": totals.model_calls,
                "usage": totals.usage.as_dict(),
                "cost_usd": totals.cost_usd,
                "latency_ms": round((time.perf_counter() - started) * 1000, 2),
                "model": totals.model or model,
                "run_id": run.run_id,
            }
            if stop_reason == "max_steps":
                final["message"] = f"stopped after max_steps={task.max_steps} steps without a final answer"
            if task.session_id:
                final["session_id"] = task.session_id
            run.publish("final", final)
        except asyncio.CancelledError:
            outcome = "cancelled"
            run.publish("error", {"type": "cancelled", "message": "the run was cancelled (client disconnected)"})
            raise
        except VGateError as exc:
            run.publish("error", {"status": exc.status_code, **exc.body()})
        except Exception:
            log.exception("agent_run_crashed")
            run.publish("error", {"type": "internal_error", "message": "internal error; the run id is in the logs"})
        finally:
            run.finish()
            if task.session_id is not None:
                self.sessions.release(task.session_id, conversation if outcome in ("ok", "max_steps") else None)
            self.metrics.agent_runs.labels(outcome=outcome).inc()
            self.metrics.agent_steps.observe(totals.steps)
            log.info("agent_run", outcome=outcome, steps=totals.steps, cost_usd=round(totals.cost_usd, 8),
                     prompt_tokens=totals.usage.prompt_tokens, completion_tokens=totals.usage.completion_tokens,
                     latency_ms=round((time.perf_counter() - started) * 1000, 2))

    def _params(self, task: AgentTask) -> dict[str, Any]:
        params = task.config.upstream_params()
        params.setdefault("max_tokens", self.settings.agent_default_max_tokens)
        return params

    async def _native_step(self, run: AgentRun, task: AgentTask, model: str, conversation: list[dict[str, Any]],
                           totals: _Totals, step: int) -> str | None:
        """One model call with native tools. Returns the answer, or None after running tool calls."""
        messages = ([{"role": "system", "content": task.instructions}] if task.instructions else []) + conversation
        tools = self.tools.registry.openai_tools(task.tool_names) if task.tool_names else None
        params = self._params(task)
        forced = _forced_tool(task, step)
        if tools:
            params["tools"] = tools
            if step == 1 and task.tool_choice is not None:
                params["tool_choice"] = task.tool_choice
        # A forced step must not stream text: if the upstream ignores tool_choice, that text is discarded.
        result = await self._call(run, model, messages, params, stream_text=not forced)
        totals.add(result)
        log.info("agent_step", step=step, tool_calls=len(result.tool_calls), finish_reason=result.finish_reason)
        if forced and tools and not result.tool_calls:
            # The upstream ignored tools/tool_choice (e.g. a chat template without tool support):
            # use the gateway's own protocol for this model from now on.
            log.warning("tool_choice_ignored_fallback_to_react", model=model)
            self._react_models.add(model)
            raise _SwitchToReact()
        if not result.tool_calls:
            conversation.append({"role": "assistant", "content": result.content})
            return result.content
        conversation.append({"role": "assistant", "content": result.content or None,
                             "tool_calls": [tc.as_openai() for tc in result.tool_calls]})
        results = await self._execute(run, task, result.tool_calls)
        conversation.extend(r.to_message() for r in results)
        return None

    async def _react_step(self, run: AgentRun, task: AgentTask, model: str, conversation: list[dict[str, Any]],
                          totals: _Totals, step: int) -> str | None:
        tools = self.tools.registry.openai_tools(task.tool_names) if task.tool_names else []
        messages = [{"role": "system", "content": react.system_prompt(task.instructions, tools)}] + [
            _as_text_message(m) for m in conversation
        ]
        params = self._params(task)
        forced = _forced_tool(task, step)
        if forced and tools:
            # Force the tool call with structured outputs: the reply must be a JSON action.
            params["response_format"] = react.action_response_format(tools, None if forced is True else forced)
        else:
            params["stop"] = list(dict.fromkeys((params.get("stop") or []) + react.STOP))
        result = await self._call(run, model, messages, params, stream_text=False)
        totals.add(result)
        parsed = react.parse_action_json(result.content) if forced and tools else react.parse(result.content)
        log.info("agent_step", step=step, mode="react", action=parsed.action)
        if parsed.thought:
            run.publish("reasoning", {"text": parsed.thought})
        if parsed.action is None:
            conversation.append({"role": "assistant", "content": result.content})
            run.publish("delta", {"text": parsed.final or ""})
            return parsed.final or ""
        call = ToolCall(id=f"react-{step}", name=parsed.action,
                        arguments=json.dumps(parsed.arguments) if parsed.arguments is not None
                        else (parsed.invalid_arguments or ""))
        # Keep the turn in the text protocol (a forced turn came back as JSON): the model
        # continues in the form it sees, and the next turn should end with "Final Answer:".
        conversation.append({"role": "assistant", "content": react.render_action(parsed) if forced
                             else result.content})
        [tool_result] = await self._execute(run, task, [call])
        conversation.append({"role": "user", "content": f"Observation: {tool_result.content()}"})
        return None

    async def _call(self, run: AgentRun, model: str, messages: list[dict[str, Any]], params: dict[str, Any],
                    *, stream_text: bool) -> LMResult:
        stream = self.lm.stream_chat(messages, model=model, route="agent", **params)
        text = _Coalescer(run, "delta")
        thought = _Coalescer(run, "reasoning")
        async with aclosing(stream):
            async for ev in stream:
                if isinstance(ev, ContentDelta):
                    if stream_text:
                        text.add(ev.text)
                elif isinstance(ev, ReasoningDelta):
                    thought.add(ev.text)
                elif isinstance(ev, Done):
                    thought.flush()
                    text.flush()
                    return ev.result
        raise VGateError("upstream stream ended without a result", status_code=502, type="upstream_error")

    async def _execute(self, run: AgentRun, task: AgentTask, calls: list[ToolCall]) -> list[ToolResult]:
        """Run the calls concurrently; publish each result as it lands; return them in call order."""
        enabled = set(task.tool_names)
        for tc in calls:
            run.publish("tool_call", {"id": tc.id, "name": tc.name, "arguments": _loads_or_raw(tc.arguments)})

        async def one(tc: ToolCall) -> ToolResult:
            if tc.name not in enabled:
                r = ToolResult(name=tc.name, call_id=tc.id, ok=False,
                               error={"type": "unknown_tool", "message": f"tool {tc.name!r} is not enabled"})
            else:
                r = await self.tools.execute(tc.name, tc.arguments, call_id=tc.id)
            payload: dict[str, Any] = {"id": tc.id, "name": tc.name, "ok": r.ok, "latency_ms": round(r.latency_ms, 2)}
            if r.ok:
                payload["result"] = r.result
            else:
                payload["error"] = r.error
            run.publish("tool_result", payload)
            return r

        return list(await asyncio.gather(*(one(tc) for tc in calls)))


class _Coalescer:
    """Joins token deltas into events of up to ~64 characters or 50 ms: each event is kept for
    resumable streams, so one event per token would make a long run's log needlessly large."""

    MAX_CHARS = 64
    MAX_AGE_S = 0.05

    def __init__(self, run: AgentRun, event: str) -> None:
        self.run = run
        self.event = event
        self.parts: list[str] = []
        self.size = 0
        self.since = 0.0

    def add(self, piece: str) -> None:
        if not self.parts:
            self.since = time.perf_counter()
        self.parts.append(piece)
        self.size += len(piece)
        if self.size >= self.MAX_CHARS or time.perf_counter() - self.since >= self.MAX_AGE_S:
            self.flush()

    def flush(self) -> None:
        if self.parts:
            self.run.publish(self.event, {"text": "".join(self.parts)})
            self.parts.clear()
            self.size = 0


def _refuses_auto_tools(message: str) -> bool:
    """vLLM's 400 for a server started without --enable-auto-tool-choice. Only that refusal is
    remembered per model; any other 400 (a bad tool name, say) is the request's own problem."""
    m = message.lower()
    return "enable-auto-tool-choice" in m or '"auto" tool choice' in m


class _SwitchToReact(Exception):
    """The upstream ignored a forced tool call: redo the step with the ReAct protocol."""


def _forced_tool(task: AgentTask, step: int) -> str | bool:
    """The tool name the first step must call, True for any tool, False when not forced."""
    if step != 1 or task.tool_choice is None:
        return False
    if task.tool_choice == "required":
        return True
    if isinstance(task.tool_choice, dict):
        return (task.tool_choice.get("function") or {}).get("name") or True
    return False


def _loads_or_raw(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def _as_text_message(m: dict[str, Any]) -> dict[str, Any]:
    """Conversation messages for an upstream without tool support: tool turns become plain text."""
    if m.get("role") == "tool":
        return {"role": "user", "content": f"Observation: {m.get('content')}"}
    if m.get("tool_calls"):
        calls = "; ".join(f"{c['function']['name']}({c['function']['arguments']})" for c in m["tool_calls"])
        return {"role": "assistant", "content": (m.get("content") or "") + f"\n[called {calls}]"}
    return {"role": m["role"], "content": m.get("content") or ""}
