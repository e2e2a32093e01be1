"""One agent run: model → tool calls (in parallel) → results → model, until an answer.

A run is an asyncio task that publishes events into its ``AgentRun`` log; HTTP streams follow
that log. Cancelling the task closes the upstream stream (vLLM aborts the sequence) and cancels
running tools.

Native tool calling (vLLM ``tools``) is the default; an upstream that refuses it gets the ReAct
text protocol instead (see ``react``).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any

import structlog

from app.errors import UpstreamBadRequestError, VGateError
from app.metrics import Metrics
from app.services.agent import react
from app.services.agent.runs import AgentRun, SessionStore
from app.services.agent.shared_sessions import SharedSessions
from app.services.agent.stream import Coalescer
from app.services.agent.task import AgentTask
from app.services.lm import CallUsage, ContentDelta, Done, LMClient, LMResult, ReasoningDelta, ToolCall, Usage
from app.settings import Settings
from app.tools.executor import ToolExecutor, ToolResult

log = structlog.get_logger("vgate.agent")


@dataclass
class Totals:
    """What an agent run has spent so far: usage, cost, steps and model calls."""
    usage: Usage = field(default_factory=Usage)
    cost_usd: float = 0.0
    steps: int = 0  # loop steps (each ends in an answer or in tool calls)
    model_calls: int = 0  # upstream calls, a discarded one included (it was paid for)
    model: str | None = None
    estimated: bool = False  # a call was cut short (the run cancelled mid-call): its tokens are estimates

    def add_call(self, call: CallUsage) -> None:
        """The LM client's account of one upstream call, a call cut short included."""
        self.usage.add(call.usage)
        self.cost_usd += call.cost_usd
        self.model_calls += 1
        self.estimated |= call.estimated


class RunLoop:
    """The loop of one run, with what it needs of the gateway."""

    def __init__(self, run: AgentRun, task: AgentTask, *, lm: LMClient, tools: ToolExecutor, settings: Settings,
                 metrics: Metrics, sessions: SessionStore | SharedSessions, tool_support: ToolSupport) -> None:
        self.run = run
        self.task = task
        self.lm = lm
        self.tools = tools
        self.settings = settings
        self.metrics = metrics
        self.sessions = sessions
        self.tool_support = tool_support
        self.totals = Totals()
        self.outcome = "error"
        self.truncated = False  # a model turn was cut by max_tokens: the run ends with it
        self._closed = False
        self.conversation = list(task.messages)
        self.started = time.perf_counter()
        self.text = Coalescer(run)  # one per run: text and reasoning events in the model's order
        self.step = 0  # the step under way: its text events name it

    async def main(self) -> None:
        """The run from start to end: model turns and tool calls until an answer or a limit, then the final or error
        event."""
        run, task, totals = self.run, self.task, self.totals
        structlog.contextvars.bind_contextvars(run_id=run.run_id)
        last: tuple[str, dict[str, Any]] = ("error", dict(_INTERNAL_ERROR))  # the run's last event
        try:
            model = await self.lm.resolve_model(task.model)
            run.model = model
            run.publish("run", {"run_id": run.run_id, "model": model, "session_id": task.session_id,
                                "tools": task.tool_names})
            # Per run: the ReAct protocol when asked for, or when this upstream recently refused native
            # tools; a run that finds out (a refusal, an ignored forced call) switches for its own rest.
            react_mode = task.mode == "react" or (
                task.mode == "auto" and bool(task.tool_names) and self.tool_support.refused(model))
            answer, stop_reason = None, "max_steps"
            for step in range(1, task.max_steps + 1):
                totals.steps = self.step = step
                if react_mode:
                    answer = await self._react_step(model, step)
                else:
                    try:
                        answer = await self._native_step(model, step)
                    except (UpstreamBadRequestError, _SwitchToReact) as exc:
                        # vLLM without --enable-auto-tool-choice refuses "auto" with a 400 that names it;
                        # this can come at any step (a forced first call works without that flag).
                        # _SwitchToReact is only raised in mode "auto" (see _native_step).
                        refused = isinstance(exc, UpstreamBadRequestError) and _refuses_auto_tools(exc.message)
                        if task.mode != "auto" or not (refused or isinstance(exc, _SwitchToReact)):
                            raise
                        if refused:
                            log.warning("native_tools_refused_fallback_to_react", model=model, error=exc.message)
                            self.tool_support.mark_refused(model)
                        react_mode = True
                        answer = await self._react_step(model, step)
                if self.truncated:
                    stop_reason = "length"
                    break
                if answer is not None:
                    stop_reason = "answer"
                    break
            self.outcome = {"answer": "ok"}.get(stop_reason, stop_reason)
            final = {
                "answer": answer,
                "stop_reason": stop_reason,
                "steps": totals.steps,
                "model_calls": totals.model_calls,
                "usage": totals.usage.as_dict(),
                "cost_usd": round(totals.cost_usd, 10),  # no float noise (0.0024000000000000002)
                "latency_ms": round((time.perf_counter() - self.started) * 1000, 2),
                "model": totals.model or model,
                "run_id": run.run_id,
            }
            if stop_reason == "max_steps":
                final["message"] = f"stopped after max_steps={task.max_steps} steps without a final answer"
            elif stop_reason == "length":
                final["message"] = (f"the model hit max_tokens={self._params()['max_tokens']} before finishing "
                                    "its turn: the answer is cut off (a cut tool call was not run); "
                                    "raise config.max_tokens")
            if task.session_id:
                final["session_id"] = task.session_id
            last = ("final", final)
        except asyncio.CancelledError:
            self.outcome = "cancelled"
            if run.shutting_down:
                last = ("error", {"status": 503, "type": "shutting_down", "retryable": True,
                                  "message": "the gateway is shutting down and stopped the run before it "
                                             "finished; send it again"})
            else:
                last = ("error", {"type": "cancelled", "message": "the run was cancelled (its clients left)"})
            raise
        except VGateError as exc:
            last = ("error", {"status": exc.status_code, **exc.body()})
        except Exception:
            log.exception("agent_run_crashed")
        finally:
            # The session is free before the last event is out: a client that sees it may start
            # the session's next turn at once, on any replica. A turn whose history could not be
            # kept (Redis unreachable, the lease lost) says so in its final event. The check-in goes
            # on if the run is cancelled meanwhile (SharedSessions.checkin).
            try:
                if task.session_key is not None and not self._closed:
                    saved = await self.sessions.checkin(task.session_key, self._kept())
                    if not saved and last[0] == "final":
                        last[1]["session_saved"] = False
            finally:
                self.finish(*last)

    def abandon(self) -> None:
        """The task is done: if it never ran (cancelled before its first step), end the run now."""
        if not self._closed:
            self.outcome = "cancelled"
            if self.task.session_key is not None:
                self.sessions.checkin_nowait(self.task.session_key, None)
            self.finish("error", {"type": "cancelled", "message": "the run was cancelled before it started"})

    def _kept(self) -> list[dict[str, Any]] | None:
        """What the session keeps of the run: the conversation if it ended well, else nothing new."""
        return self.conversation if self.outcome in ("ok", "max_steps", "length") else None

    def finish(self, event: str, data: dict[str, Any]) -> None:
        """Close the run's books, once: its last event, its log, its metrics (its session is
        checked in first, by the caller)."""
        if self._closed:
            return
        self._closed = True
        run, totals = self.run, self.totals
        run.publish(event, data)
        run.finish()
        self.metrics.agent_runs.labels(outcome=self.outcome).inc()
        self.metrics.agent_steps.observe(totals.steps)
        log.info("agent_run", outcome=self.outcome, steps=totals.steps, model_calls=totals.model_calls,
                 cost_usd=round(totals.cost_usd, 8), prompt_tokens=totals.usage.prompt_tokens,
                 completion_tokens=totals.usage.completion_tokens,
                 latency_ms=round((time.perf_counter() - self.started) * 1000, 2),
                 **({"estimated": True} if totals.estimated else {}))

    def _params(self) -> dict[str, Any]:
        params = self.task.config.upstream_params()
        params.setdefault("max_tokens", self.settings.agent_default_max_tokens)
        return params

    async def _native_step(self, model: str, step: int) -> str | None:
        """One model call with native tools. Returns the answer, or None after running tool calls."""
        task, conversation = self.task, self.conversation
        messages = ([{"role": "system", "content": task.instructions}] if task.instructions else []) + conversation
        tools = self.tools.registry.openai_tools(task.tool_names) if task.tool_names else None
        params = self._params()
        forced = task.forced_tool(step)
        if tools:
            params["tools"] = tools
            if step == 1 and task.tool_choice is not None:
                params["tool_choice"] = task.tool_choice
        # A forced step must not stream text: if the upstream ignores tool_choice, that text is discarded.
        result = await self._call(model, messages, params, on_text=None if forced else self._answer_text)
        self.totals.model = result.model
        log.info("agent_step", step=step, tool_calls=len(result.tool_calls), finish_reason=result.finish_reason)
        if forced and tools and not result.tool_calls:
            # The upstream ignored tools/tool_choice (e.g. a chat template without tool support).
            if task.mode != "auto":
                # Mode "native" asked for no fallback: the run ends with the upstream's failure.
                log.warning("tool_choice_ignored", model=model)
                raise VGateError(
                    "the upstream ignored the forced tool call (tool_choice) and answered in text; "
                    'mode "auto" falls back to the gateway\'s ReAct protocol in that case',
                    status_code=502, type="tool_choice_ignored")
            # Mode "auto": redo the step, and go on, with the gateway's own protocol. This run only:
            # another may not force a call, and a model that ignored tool_choice once may honour tools later.
            log.warning("tool_choice_ignored_fallback_to_react", model=model)
            raise _SwitchToReact()
        if result.finish_reason == "length":
            # The text it streamed is the (cut) answer; None when it wrote only a cut tool call.
            return self._cut(result.content, result.content if result.content or not result.tool_calls else None)
        if not result.tool_calls:
            conversation.append({"role": "assistant", "content": result.content})
            return result.content
        # Calls beyond the per-turn limit are not run: the first excess one stands for them all (one
        # error result), and the others are dropped from the turn, so that the conversation needs no
        # tool message for them (each tool_call id of an assistant message needs one).
        calls = result.tool_calls[:self.settings.agent_max_tool_calls_per_turn + 1]
        conversation.append({"role": "assistant", "content": result.content or None,
                             "tool_calls": [tc.as_openai() for tc in calls]})
        results = await self._run_tools(calls, asked=len(result.tool_calls))
        conversation.extend(r.to_message() for r in results)
        return None

    async def _react_step(self, model: str, step: int) -> str | None:
        task, conversation = self.task, self.conversation
        tools = self.tools.registry.openai_tools(task.tool_names) if task.tool_names else []
        messages = [{"role": "system", "content": react.system_prompt(task.instructions, tools)}] + [
            react.as_text_message(m) for m in conversation
        ]
        params = self._params()
        forced = task.forced_tool(step)
        if forced and tools:
            # Force the tool call with structured outputs: the reply must be a JSON action.
            params["response_format"] = react.action_response_format(tools, None if forced is True else forced)
        else:
            params["stop"] = list(dict.fromkeys((params.get("stop") or []) + react.STOP))
        # A forced turn is JSON (not shown); otherwise the thought and the final answer stream as
        # they come, and what the splitter held back follows once the whole reply is parsed.
        splitter = None if forced and tools else react.StreamSplitter()
        on_text = None if splitter is None else (lambda piece: self._publish(splitter.feed(piece)))
        result = await self._call(model, messages, params, on_text=on_text)
        self.totals.model = result.model
        parsed = react.parse_action_json(result.content) if splitter is None else react.parse(result.content)
        log.info("agent_step", step=step, mode="react", action=parsed.action)
        if splitter is not None:
            self._publish(splitter.finish(parsed))
        else:  # a forced turn, not shown while it came: its thought, and its answer if it made no call
            self._publish([("reasoning", parsed.thought or ""),
                           ("delta", (parsed.final or "") if parsed.action is None else "")])
        self.text.flush()
        if result.finish_reason == "length":
            return self._cut(result.content, parsed.final if parsed.action is None else None)
        if parsed.action is None:
            conversation.append({"role": "assistant", "content": result.content})
            return parsed.final or ""
        call = ToolCall(id=f"react-{step}", name=parsed.action,
                        arguments=json.dumps(parsed.arguments) if parsed.arguments is not None
                        else (parsed.invalid_arguments or ""))
        # Keep the turn in the text protocol (a forced turn came back as JSON): the model
        # continues in the form it sees, and the next turn should end with "Final Answer:".
        conversation.append({"role": "assistant", "content": react.render_action(parsed) if forced
                             else result.content})
        [tool_result] = await self._run_tools([call])
        conversation.append({"role": "user", "content": f"Observation: {tool_result.content()}"})
        return None

    def _cut(self, content: str, answer: str | None) -> str | None:
        """A turn cut by max_tokens ends the run: its text is kept, a cut tool call (partial
        arguments) is not run."""
        self.truncated = True
        self.conversation.append({"role": "assistant", "content": content})
        return answer

    def _answer_text(self, piece: str) -> None:
        self.text.add("delta", piece, self.step)

    def _publish(self, pieces: list[tuple[str, str]]) -> None:
        for kind, text in pieces:
            self.text.add(kind, text, self.step)

    async def _call(self, model: str, messages: list[dict[str, Any]], params: dict[str, Any],
                    *, on_text: Callable[[str], None] | None) -> LMResult:
        """One streamed model call: reasoning is published as it comes, answer text goes to
        ``on_text`` (None: not shown)."""
        stream = self.lm.stream_chat(messages, model=model, route="agent", on_usage=self.totals.add_call, **params)
        try:
            async with aclosing(stream):
                async for ev in stream:
                    if isinstance(ev, ContentDelta):
                        if on_text is not None:
                            on_text(ev.text)
                    elif isinstance(ev, ReasoningDelta):
                        self.text.add("reasoning", ev.text, self.step)
                    elif isinstance(ev, Done):
                        if self.settings.log_prompts:  # off by default: prompts may hold personal data
                            log.info("agent_io", messages=messages, completion=ev.result.content,
                                     reasoning=ev.result.reasoning,
                                     tool_calls=[tc.as_openai() for tc in ev.result.tool_calls])
                        return ev.result
        finally:
            self.text.flush()  # before the step's tool calls or the run's end; no timer outlives the call
        raise VGateError("upstream stream ended without a result", status_code=502, type="upstream_error")

    async def _run_tools(self, calls: list[ToolCall], *, asked: int | None = None) -> list[ToolResult]:
        """Run the calls concurrently; publish each result as it lands; return them in call order.
        ``asked``: how many calls the turn made, when ``calls`` keeps only the first limit + 1 of them
        (the calls past the limit are not run: the first of them gets an error saying so, for all)."""
        run = self.run
        enabled = set(self.task.tool_names)
        limit = self.settings.agent_max_tool_calls_per_turn
        asked = len(calls) if asked is None else asked
        if asked > limit:
            log.warning("too_many_tool_calls", asked=asked, limit=limit)
        for tc in calls[:limit + 1]:
            run.publish("tool_call", {"id": tc.id, "name": tc.name, "arguments": _loads_or_raw(tc.arguments)})

        async def one(i: int, tc: ToolCall) -> ToolResult:
            if i >= limit:
                dropped = "this call" + (f" and the {asked - limit - 1} after it were" if asked > limit + 1
                                         else " was")
                r = ToolResult(name=tc.name, call_id=tc.id, ok=False, error={
                    "type": "too_many_tool_calls", "not_run": asked - limit,
                    "message": f"not run: the turn asked for {asked} tool calls and at most {limit} are run "
                               f"per turn, so {dropped} dropped; make them again if needed"})
            elif tc.name not in enabled:
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

        return list(await asyncio.gather(*(one(i, tc) for i, tc in enumerate(calls[:limit + 1]))))


class ToolSupport:
    """Upstream models that recently refused native tool calling (vLLM started without
    --enable-auto-tool-choice), so that each run need not be refused again. Remembered for
    ``ttl_s`` only: the upstream may be restarted with the flag."""

    def __init__(self, ttl_s: float = 300.0) -> None:
        self.ttl_s = ttl_s
        self._until: dict[str, float] = {}

    def refused(self, model: str) -> bool:
        """Whether the model refused native tool calling recently (the run then uses ReAct)."""
        return time.monotonic() < self._until.get(model, 0.0)

    def mark_refused(self, model: str) -> None:
        """Remember for ttl_s that the model refuses native tool calling."""
        now = time.monotonic()
        self._until = {m: t for m, t in self._until.items() if t > now}
        self._until[model] = now + self.ttl_s


def _refuses_auto_tools(message: str) -> bool:
    """vLLM's 400 for a server started without --enable-auto-tool-choice. Only that refusal is
    remembered per model; any other 400 (a bad tool name, say) is the request's own problem."""
    m = message.lower()
    return "enable-auto-tool-choice" in m or '"auto" tool choice' in m


_INTERNAL_ERROR = {"type": "internal_error", "message": "internal error; the run id is in the logs"}


class _SwitchToReact(Exception):
    """The upstream ignored a forced tool call: redo the step with the ReAct protocol."""


def _loads_or_raw(text: str) -> Any:
    """A tool call's arguments for its event: parsed, or the model's text when it is not JSON or when
    parsed it would hold what no UTF-8 stream or strict JSON document can carry: a lone surrogate
    ("\ud800"), or NaN and Infinity (Python's json reads them; a browser's JSON.parse does not)."""
    try:
        value = json.loads(text)
        json.dumps(value, ensure_ascii=False, allow_nan=False).encode()
    except (ValueError, RecursionError):  # UnicodeEncodeError and a NaN are ValueErrors
        return text
    return value
