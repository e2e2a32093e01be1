"""The agent service: validated requests become runs (tasks that publish events into a log)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import anyio

from app.errors import InvalidRequestError, NotFoundError, VGateError
from app.metrics import Metrics
from app.services.access import current_principal
from app.services.agent.loop import RunLoop, ToolSupport
from app.services.agent.runs import AgentEvent, AgentRun, RunStore, SessionStore
from app.services.agent.task import AgentTask, Mode
from app.services.lm import LMClient
from app.services.programs import PredictConfig
from app.settings import Settings
from app.tools.executor import ToolExecutor


class AgentService:
    def __init__(self, lm: LMClient, tools: ToolExecutor, settings: Settings, metrics: Metrics,
                 redis=None) -> None:
        self.lm = lm
        self.redis = redis  # redis.asyncio.Redis (VGATE_REDIS_URL) or None: runs and sessions in memory
        self.tools = tools
        self.settings = settings
        self.metrics = metrics
        self.runs = RunStore(ttl_s=settings.agent_resume_ttl_s, max_runs=settings.agent_max_retained_runs)
        self.sessions = SessionStore(ttl_s=settings.agent_session_ttl_s, max_sessions=settings.agent_max_sessions,
                                     max_bytes=settings.agent_session_max_bytes)
        self.tool_support = ToolSupport()  # which upstream models recently refused native tool calling

    async def aclose(self) -> None:
        """Stop the runs still live at shutdown (streams had ``shutdown_grace_s`` to see them
        finish) and wait for them to wind down."""
        live = [r for r in self.runs.live() if r.task is not None]
        for run in live:
            self.stop_for_shutdown(run)
        await asyncio.gather(*(r.task for r in live), return_exceptions=True)

    @staticmethod
    def stop_for_shutdown(run: AgentRun) -> None:
        """Cancel a live run because the gateway is stopping: its log ends with a 503 ``shutting_down``."""
        if run.task is not None and not run.finished:
            run.shutting_down = True
            run.task.cancel()

    # ------------------------------------------------------------------ request → task

    def make_task(self, *, input: str | None = None, messages: list[dict[str, Any]] | None = None,
                  instructions: str | None = None, tools: list[str] | None = None, max_steps: int | None = None,
                  model: str | None = None, config: PredictConfig | None = None, tool_choice: Any = None,
                  session_id: str | None = None, mode: Mode = "auto") -> AgentTask:
        """A request (``input`` or OpenAI-style ``messages``, already shape-checked) checked against
        this gateway's limits and tools."""
        limit = self.settings.agent_max_steps_limit
        if max_steps is not None and max_steps > limit:
            raise InvalidRequestError(f"max_steps is at most {limit}")
        if messages is not None:
            messages = [dict(m) for m in messages]
            if instructions is None and messages and messages[0]["role"] == "system":
                instructions = messages.pop(0).get("content")
        else:
            messages = [{"role": "user", "content": input}]
        tool_names = self.check_tools(tools)
        named = tool_choice.get("function", {}).get("name") if isinstance(tool_choice, dict) else None
        if named is not None and named not in tool_names:
            raise InvalidRequestError(f"tool_choice names {named!r}, which is not an enabled tool",
                                      enabled=tool_names)
        return AgentTask(
            messages=messages,
            instructions=instructions,
            tool_names=tool_names,
            max_steps=max_steps or self.settings.agent_max_steps,
            model=model,
            config=config or PredictConfig(),
            tool_choice=tool_choice,
            session_id=session_id,
            mode=mode,
        )

    def check_tools(self, names: list[str] | None) -> list[str]:
        """The enabled tools: the named ones (each must exist and be available) or every available one."""
        registry = self.tools.registry
        principal = current_principal()
        if names is None:  # every available tool the caller's key may use
            available = [t.name for t in registry if t.available]
            return principal.usable_tools(available) if principal is not None else available
        if principal is not None:
            principal.allow_tools(names)
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
        principal = current_principal()
        task.owner = principal.id if principal is not None else None
        if task.session_key is not None:
            got = self.sessions.acquire(task.session_key)
            if got is None:
                raise VGateError("another run is using this session", status_code=409, type="session_busy")
            history = got
        if len(self.runs.live()) >= self.settings.agent_max_concurrent_runs:
            if task.session_key is not None:
                self.sessions.release(task.session_key, None)
            raise VGateError("too many agent runs in progress; retry shortly", status_code=503,
                             type="agent_overloaded", retry_after_s=1.0)
        run = self.runs.create()
        run.session_id = task.session_id
        run.owner = task.owner
        run.model = task.model
        task.messages = history + task.messages
        loop = RunLoop(run, task, lm=self.lm, tools=self.tools, settings=self.settings, metrics=self.metrics,
                       sessions=self.sessions, tool_support=self.tool_support)
        run.task = asyncio.create_task(loop.main(), name=run.run_id)
        # A task cancelled before it first runs never enters main(): close the run's books here.
        run.task.add_done_callback(lambda _: loop.abandon())
        return run

    # ------------------------------------------------------------------ clients of a run

    def get_run(self, run_id: str) -> AgentRun:
        run = self.runs.get(run_id)
        principal = current_principal()
        if run is None or (principal is not None and run.owner != principal.id):  # another key's: not there
            raise NotFoundError(f"unknown or expired run {run_id!r}", type="run_not_found")
        return run

    async def follow(self, run: AgentRun, after_id: int = 0,
                     stopping: anyio.Event | None = None) -> AsyncIterator[AgentEvent]:
        """The run's events after ``after_id``, then live ones, for one streaming client. Once
        ``stopping`` is set (the server is shutting down), the run has ``shutdown_grace_s`` to
        finish; then it is stopped, and the client gets its ``shutting_down`` error event."""
        self._join(run)
        watcher = asyncio.ensure_future(self._stop_at_grace(run, stopping)) if stopping is not None else None
        try:
            async for ev in run.follow(after_id):
                yield ev
        finally:
            if watcher is not None:
                watcher.cancel()
            self._leave(run)

    async def _stop_at_grace(self, run: AgentRun, stopping: anyio.Event) -> None:
        await stopping.wait()
        await asyncio.sleep(self.settings.shutdown_grace_s)
        self.stop_for_shutdown(run)

    def _join(self, run: AgentRun) -> None:
        run.subscribers += 1
        if run.cancel_timer is not None:  # back within the grace period
            run.cancel_timer.cancel()
            run.cancel_timer = None

    def _leave(self, run: AgentRun) -> None:
        """When the last client (streaming or JSON) leaves a live run, it is cancelled after the
        disconnect grace."""
        run.subscribers -= 1
        if run.subscribers == 0 and not run.finished:
            self._cancel_later(run, self.settings.agent_disconnect_grace_s)

    def _cancel_later(self, run: AgentRun, grace_s: float) -> None:
        """Cancel the run unless a client reconnects within the grace period, which starts anew at
        each last disconnect. The timer is kept on the run (a reference held, and cancelled by the
        next subscriber)."""
        if grace_s <= 0:
            _cancel_unfollowed(run)
            return
        if run.cancel_timer is not None:
            run.cancel_timer.cancel()
        run.cancel_timer = asyncio.get_running_loop().call_later(grace_s, _cancel_unfollowed, run)

    async def result(self, run: AgentRun) -> dict[str, Any]:
        """Wait for the run, as one of its clients, and return its ``final`` data with a trace of
        the tool calls, or raise its error. Cancelling the wait (the client went away) leaves the run,
        which is cancelled if nobody else follows it."""
        assert run.task is not None
        self._join(run)
        try:
            await asyncio.wait({run.task})
        finally:
            self._leave(run)
        last = run.events[-1] if run.events else None
        if last is None or last.event != "final":
            err = dict(last.data) if last is not None else {"type": "internal_error",
                                                             "message": "run produced nothing"}
            status = err.pop("status", _ERROR_STATUS.get(err.get("type"), 502))
            raise VGateError(err.pop("message", "agent run failed"), status_code=status,
                             type=err.pop("type", "agent_error"), run_id=run.run_id, **err)
        trace = [{"event": e.event, **e.data} for e in run.events if e.event in ("tool_call", "tool_result")]
        return {**last.data, "trace": trace}


# Statuses of a run's errors that are not a VGateError (those carry their own; a run the gateway
# stopped at shutdown is a 503 shutting_down). "cancelled": the run was cancelled while its JSON
# client waited; a client that left got a 499.
_ERROR_STATUS = {"internal_error": 500, "cancelled": 503}


def _cancel_unfollowed(run: AgentRun) -> None:
    run.cancel_timer = None
    if run.subscribers == 0 and run.task is not None and not run.finished:
        run.task.cancel()
