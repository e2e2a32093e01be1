"""The agent service: validated requests become runs (tasks that publish events into a log)."""

from __future__ import annotations

import asyncio
from typing import Any

from app.errors import InvalidRequestError, VGateError
from app.metrics import Metrics
from app.services.agent.loop import RunLoop
from app.services.agent.runs import AgentRun, RunStore, SessionStore
from app.services.agent.task import AgentTask
from app.services.lm import LMClient
from app.settings import Settings
from app.tools.executor import ToolExecutor


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
        loop = RunLoop(run, task, lm=self.lm, tools=self.tools, settings=self.settings, metrics=self.metrics,
                       sessions=self.sessions, react_models=self._react_models)
        run.task = asyncio.create_task(loop.main(), name=run.run_id)
        return run
