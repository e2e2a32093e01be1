"""The agent service: validated requests become runs (tasks that publish events into a log).

With Redis (``VGATE_REDIS_URL``) each run's log is copied there and sessions live there, so that
any replica resumes any run and continues any session (``shared_runs``, ``shared_sessions``);
without it, both are this process's alone."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any

import anyio

from app.errors import InvalidRequestError, NotFoundError, VGateError
from app.metrics import Metrics
from app.services.access import current_principal
from app.services.agent.loop import RunLoop, ToolSupport
from app.services.agent.runs import AgentEvent, AgentRun, RunStore, SessionStore
from app.services.agent.shared_runs import RemoteRun, RunLike, SharedRuns
from app.services.agent.shared_sessions import SharedSessions
from app.services.agent.task import AgentTask, Mode
from app.services.lm import LMClient
from app.services.programs import PredictConfig
from app.services.state.connection import Health
from app.settings import Settings
from app.tools.executor import ToolExecutor


class AgentService:
    """Agent runs: starting them (the run cap, sessions), their clients (streams, JSON results,
    disconnects) and their shutdown."""

    FOLLOWED_ELSEWHERE_RECHECK_S = 1.0  # a run followed only through other replicas: look again this often

    def __init__(self, lm: LMClient, tools: ToolExecutor, settings: Settings, metrics: Metrics,
                 redis=None, health: Health | None = None) -> None:
        self.lm = lm
        self.redis = redis  # redis.asyncio.Redis (VGATE_REDIS_URL) or None: runs and sessions in memory
        self.tools = tools
        self.settings = settings
        self.metrics = metrics
        self.runs = RunStore(ttl_s=settings.agent_resume_ttl_s, max_runs=settings.agent_max_retained_runs)
        self.shared: SharedRuns | None = None
        self.sessions: SessionStore | SharedSessions
        if redis is None:
            self.sessions = SessionStore(ttl_s=settings.agent_session_ttl_s,
                                         max_sessions=settings.agent_max_sessions,
                                         max_bytes=settings.agent_session_max_bytes)
        else:
            health = health or Health(metrics)  # Redis failures: counted, logged once per outage
            self.shared = SharedRuns(redis, settings, health)
            self.runs.on_drop = self.shared.dropped
            self.sessions = SharedSessions(redis, settings, health)
        self.tool_support = ToolSupport()  # which upstream models recently refused native tool calling
        self._checks: set[asyncio.Task] = set()  # runs' "followed elsewhere?" checks under way

    async def aclose(self) -> None:
        """Stop the runs still live at shutdown (streams had ``shutdown_grace_s`` to see them
        finish), wait for them to wind down, and for their last events to reach Redis."""
        live = [r for r in self.runs.live() if r.task is not None]
        for run in live:
            self.stop_for_shutdown(run)
        await asyncio.gather(*(r.task for r in live), return_exceptions=True)
        checks = list(self._checks)
        for check in checks:
            check.cancel()
        await asyncio.gather(*checks, return_exceptions=True)
        await self.sessions.aclose()
        if self.shared is not None:
            await self.shared.aclose()

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

    async def start(self, task: AgentTask) -> AgentRun:
        """Create the run and start its task. Raises 409 if the session is busy, 503 if too many runs
        are live, and 503 ``store_unavailable`` for a session kept in Redis while Redis is unreachable."""
        history: list[dict[str, Any]] = []
        principal = current_principal()
        task.owner = principal.id if principal is not None else None
        if task.session_key is not None:
            got = await self.sessions.checkout(task.session_key)
            if got is None:
                raise VGateError("another run is using this session", status_code=409, type="session_busy")
            history = got
        if len(self.runs.live()) >= self.settings.agent_max_concurrent_runs:
            if task.session_key is not None:
                await self.sessions.checkin(task.session_key, None)
            raise VGateError("too many agent runs in progress; retry shortly", status_code=503,
                             type="agent_overloaded", retry_after_s=1.0)
        run = self.runs.create()
        run.session_id = task.session_id
        run.owner = task.owner
        run.model = task.model
        if self.shared is not None:
            self.shared.attach(run)
        task.messages = history + task.messages
        loop = RunLoop(run, task, lm=self.lm, tools=self.tools, settings=self.settings, metrics=self.metrics,
                       sessions=self.sessions, tool_support=self.tool_support)
        run.task = asyncio.create_task(loop.main(), name=run.run_id)
        # A task cancelled before it first runs never enters main(): close the run's books here.
        run.task.add_done_callback(lambda _: loop.abandon())
        return run

    # ------------------------------------------------------------------ clients of a run

    async def find_run(self, run_id: str, after_id: int = 0) -> RunLike:
        """The run, to follow after event ``after_id``: this replica's, or with Redis one that another
        replica runs (or ran). A run of another API key is not there (404 ``run_not_found``, as an
        unknown one); a run not here while Redis is unreachable is a 503 ``store_unavailable``; an
        ``after_id`` past the last event of a finished run is a 422 (the same from every replica)."""
        run: RunLike | None = self.runs.get(run_id)
        if run is None and self.shared is not None:
            run = await self.shared.find(run_id)
        principal = current_principal()
        if run is None or (principal is not None and run.owner != principal.id):  # another key's: not there
            raise NotFoundError(f"unknown or expired run {run_id!r}", type="run_not_found")
        last = run.last_id if isinstance(run, RemoteRun) else len(run.events)
        if run.finished and after_id > last:
            raise InvalidRequestError(f"the Last-Event-ID header names event {after_id}, past this finished "
                                      f"run's last event ({last})", param="Last-Event-ID", last_event_id=last)
        return run

    async def follow(self, run: RunLike, after_id: int = 0,
                     stopping: anyio.Event | None = None) -> AsyncIterator[AgentEvent]:
        """The run's events after ``after_id``, then live ones, for one streaming client. Once
        ``stopping`` is set (the server is shutting down), a run of this replica has
        ``shutdown_grace_s`` to finish; then it is stopped, and the client gets its ``shutting_down``
        error event. Another replica's run is followed in Redis (``RemoteRun.follow``)."""
        if isinstance(run, RemoteRun):
            async with aclosing(run.follow(after_id, stopping)) as events:
                async for ev in events:
                    yield ev
            return
        self._join(run)
        watcher = asyncio.ensure_future(self._stop_at_grace(run, stopping)) if stopping is not None else None
        try:
            async for ev in run.follow(after_id):
                yield ev
            if self.shared is not None:
                await self.shared.settled(run.run_id)
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
        if run.cancel_timer is not None:
            run.cancel_timer.cancel()
            run.cancel_timer = None
        if grace_s <= 0:
            self._grace_over(run)
            return
        run.cancel_timer = asyncio.get_running_loop().call_later(grace_s, self._grace_over, run)

    def _grace_over(self, run: AgentRun) -> None:
        """Nobody here has followed the run for the grace period: cancel it, unless (with Redis) a
        client follows it through another replica; then look again a little later."""
        run.cancel_timer = None
        if run.subscribers or run.task is None or run.finished:
            return
        if self.shared is None:
            run.task.cancel()
            return
        check = asyncio.get_running_loop().create_task(self._cancel_unless_followed_elsewhere(run))
        self._checks.add(check)
        check.add_done_callback(self._checks.discard)

    async def _cancel_unless_followed_elsewhere(self, run: AgentRun) -> None:
        assert self.shared is not None
        elsewhere = await self.shared.followed_elsewhere(run.run_id)
        if run.subscribers or run.finished or run.cancel_timer is not None or run.task is None:
            return  # a client came back meanwhile
        if elsewhere:
            run.cancel_timer = asyncio.get_running_loop().call_later(
                self.FOLLOWED_ELSEWHERE_RECHECK_S, self._grace_over, run)
        else:
            run.task.cancel()

    async def result(self, run: AgentRun) -> dict[str, Any]:
        """Wait for the run, as one of its clients, and return its ``final`` data with a trace of
        the tool calls, or raise its error. Cancelling the wait (the client went away) leaves the run,
        which is cancelled if nobody else follows it."""
        assert run.task is not None
        self._join(run)
        try:
            await asyncio.wait({run.task})
            if self.shared is not None:
                await self.shared.settled(run.run_id)
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
