"""In-memory state of agent runs: the event log each run keeps for resumable streams, and the
conversations kept for ``session_id``. Both are bounded in size and time.

With ``VGATE_REDIS_URL`` the logs are also copied to Redis and the sessions live there, for several
gateway replicas (``shared_runs``, ``shared_sessions``): the same small interfaces, so the agent
loop does not know which it has.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import structlog

from app.tools.executor import strict_json

log = structlog.get_logger("vgate.agent")

TERMINAL_EVENTS = ("final", "error")  # a run's last event is one of these


@dataclass(slots=True)
class AgentEvent:
    """One event of a run's log: ``id`` is its place in the log (1, 2, 3, ...), the SSE id."""

    id: int
    event: str
    data: dict[str, Any]


def event_json(data: Any) -> str:
    """An event's data as JSON text any client reads: no NaN or Infinity (a browser's JSON.parse
    refuses them: null instead), no lone surrogate (no UTF-8 stream carries one: U+FFFD instead).
    The tools and the loop keep them out of events; this is the backstop, and it never raises (a
    stream that raises ends without its final event). The SSE stream and the shared log in Redis
    both write events with it."""
    try:
        text = json.dumps(data, ensure_ascii=False, allow_nan=False, default=str)
        text.encode("utf-8")
        return text
    except (ValueError, RecursionError):  # UnicodeEncodeError and NaN are ValueErrors
        pass
    try:  # ASCII: also escapes what default=str made of an object
        return json.dumps(strict_json(data), ensure_ascii=True, allow_nan=False, default=str)
    except (ValueError, RecursionError):  # nested past the recursion limit, or circular
        log.error("agent_event_unserialisable", keys=sorted(map(str, data)) if isinstance(data, dict) else None)
        return json.dumps({"type": "internal_error", "message": "this event's data could not be serialised"})


@dataclass
class AgentRun:
    """A run of this process: its event log, its task and its clients."""

    run_id: str
    model: str | None = None
    session_id: str | None = None
    owner: str | None = None  # the API key's id that started it: only it may resume the run
    events: list[AgentEvent] = field(default_factory=list)
    finished_at: float | None = None
    task: asyncio.Task | None = None
    subscribers: int = 0
    cancel_timer: asyncio.TimerHandle | None = None  # pending cancellation: nobody follows the run
    shutting_down: bool = False  # the gateway stopped it (shutdown grace over): its error event says so
    # Told of each change (an event, the end), synchronously: the writer of the shared log in Redis.
    listener: Callable[[], None] | None = None
    _changed: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def finished(self) -> bool:
        """Whether the run has ended."""
        return self.finished_at is not None

    def publish(self, event: str, data: dict[str, Any]) -> AgentEvent:
        """Append an event to the run's log and wake its followers; returns the event."""
        ev = AgentEvent(id=len(self.events) + 1, event=event, data=data)
        self.events.append(ev)
        self._wake()
        return ev

    def finish(self) -> None:
        """Mark the run ended and wake its followers."""
        if self.finished_at is None:
            self.finished_at = time.monotonic()
            self._wake()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()
        if self.listener is not None:
            self.listener()

    async def follow(self, after_id: int = 0) -> AsyncIterator[AgentEvent]:
        """Events with id > ``after_id``, then live ones until the run ends.
        Ids are 1, 2, 3, ... so a resumed stream has no duplicates and no gaps."""
        next_index = max(0, after_id)
        while True:
            while next_index < len(self.events):
                yield self.events[next_index]
                next_index += 1
            if self.finished:
                return
            await self._changed.wait()


class RunStore:
    """Runs by id; finished runs stay ``ttl_s`` for clients that reconnect, at most ``max_runs`` in all.
    ``on_drop`` is told of each run it lets go of (the shared log's writer then lets go of it too)."""

    def __init__(self, ttl_s: float, max_runs: int, on_drop: Callable[[AgentRun], None] | None = None) -> None:
        self.ttl_s = ttl_s
        self.max_runs = max_runs
        self.on_drop = on_drop
        self._runs: OrderedDict[str, AgentRun] = OrderedDict()

    def create(self) -> AgentRun:
        """A new run with a fresh id, kept in the store."""
        self._evict()
        run = AgentRun(run_id="run_" + uuid.uuid4().hex)
        self._runs[run.run_id] = run
        return run

    def get(self, run_id: str) -> AgentRun | None:
        """A run by id, or None if unknown or expired."""
        self._evict()
        return self._runs.get(run_id)

    def live(self) -> list[AgentRun]:
        """The runs still going."""
        return [r for r in self._runs.values() if not r.finished]

    def _evict(self) -> None:
        now = time.monotonic()
        for rid in [r for r, run in self._runs.items() if run.finished_at and now - run.finished_at > self.ttl_s]:
            self._drop(rid)
        while len(self._runs) >= self.max_runs:
            oldest = next((r for r, run in self._runs.items() if run.finished), None)
            if oldest is None:
                break  # every kept run is live (AgentService caps live runs)
            self._drop(oldest)

    def _drop(self, run_id: str) -> None:
        run = self._runs.pop(run_id)
        if self.on_drop is not None:
            self.on_drop(run)

    def __len__(self) -> int:
        return len(self._runs)


@dataclass
class _Session:
    messages: list[dict[str, Any]]
    touched: float
    busy: bool = False


class SessionStore:
    """Conversations by session id: LRU-bounded, expiring ``ttl_s`` after last use, each history
    bounded in messages and bytes (see ``trim_history``)."""

    def __init__(self, ttl_s: float, max_sessions: int, max_messages: int = 200,
                 max_bytes: int = 256 * 1024) -> None:
        self.ttl_s = ttl_s
        self.max_sessions = max_sessions
        self.max_messages = max_messages
        self.max_bytes = max_bytes
        self._sessions: OrderedDict[str, _Session] = OrderedDict()

    def acquire(self, session_id: str) -> list[dict[str, Any]] | None:
        """The history (a copy) and the session marked busy; None if a run already uses it."""
        self._evict()
        s = self._sessions.get(session_id)
        if s is None:
            s = self._sessions[session_id] = _Session(messages=[], touched=time.monotonic())
        if s.busy:
            return None
        s.busy = True
        self._sessions.move_to_end(session_id)
        return list(s.messages)

    def release(self, session_id: str, messages: list[dict[str, Any]] | None) -> bool:
        """The session free again, with ``messages`` as its history (None: the history unchanged).
        Whether it was there to release."""
        s = self._sessions.get(session_id)
        if s is None:
            return False
        if messages is not None:
            s.messages = trim_history(messages, self.max_messages, self.max_bytes)
        s.busy = False
        s.touched = time.monotonic()
        return True

    # The interface the agent service and loop use, which ``SharedSessions`` (Redis) has too.

    async def checkout(self, session_id: str) -> list[dict[str, Any]] | None:
        """``acquire``: the history, the session busy; None if a run already uses it."""
        return self.acquire(session_id)

    async def checkin(self, session_id: str, messages: list[dict[str, Any]] | None) -> bool:
        """``release``: whether the history was kept."""
        return self.release(session_id, messages)

    def checkin_nowait(self, session_id: str, messages: list[dict[str, Any]] | None) -> None:
        """``release``, from code that cannot wait (a task's done callback)."""
        self.release(session_id, messages)

    async def aclose(self) -> None:
        """Nothing to close: the sessions are in memory."""

    def _evict(self) -> None:
        now = time.monotonic()
        for sid in [k for k, s in self._sessions.items() if not s.busy and now - s.touched > self.ttl_s]:
            del self._sessions[sid]
        while len(self._sessions) >= self.max_sessions:
            sid = next((k for k, s in self._sessions.items() if not s.busy), None)
            if sid is None:
                break
            del self._sessions[sid]


def trim_history(messages: list[dict[str, Any]], max_messages: int, max_bytes: int) -> list[dict[str, Any]]:
    """``messages`` if they fit both bounds; else the longest tail that fits and starts a turn (a
    user message), so that it never opens with tool results or a tool call without its results.
    If not even the last turn fits, that turn without its tool steps (its user message and final
    answer), or nothing."""
    sizes = [len(json.dumps(m, ensure_ascii=False, separators=(",", ":")).encode()) for m in messages]
    if len(messages) <= max_messages and sum(sizes) <= max_bytes:
        return list(messages)
    start, total = None, 0
    for i in range(len(messages) - 1, -1, -1):
        total += sizes[i]
        if total > max_bytes or len(messages) - i > max_messages:
            break
        if messages[i].get("role") == "user":
            start = i
    if start is not None:
        return messages[start:]
    last_user = next((i for i in range(len(messages) - 1, -1, -1) if messages[i].get("role") == "user"), None)
    if last_user is None:
        return []
    answers = [i for i in range(last_user + 1, len(messages))
               if messages[i].get("role") == "assistant" and not messages[i].get("tool_calls")][-1:]
    keep = [last_user, *answers]
    if len(keep) > max_messages or sum(sizes[i] for i in keep) > max_bytes:
        return []
    return [messages[i] for i in keep]
