"""A job: work the gateway runs in the background (an evaluation, an optimization), its state and
its event log (``progress`` events, then ``result`` or ``error``), as every backend keeps it."""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from app.errors import NotFoundError, VGateError

Status = Literal["queued", "running", "succeeded", "failed", "cancelled"]
TERMINAL: tuple[str, ...] = ("succeeded", "failed", "cancelled")  # a finished job's status is one of these
FINAL_EVENTS = ("result", "error")  # a job's last event is one of these
JOB_ID = re.compile(r"job_[0-9a-f]{32}")


def new_job_id() -> str:
    """A fresh job id: job_ followed by 32 hex digits."""
    return "job_" + uuid.uuid4().hex


class JobNotFound(NotFoundError):
    """Unknown, expired, or another key's job (never told apart: a job's existence is not revealed)."""

    type = "job_not_found"

    def __init__(self, job_id: str | None = None) -> None:
        shown = job_id if job_id is not None and JOB_ID.fullmatch(job_id) else None
        super().__init__(f"unknown or expired job {shown!r}" if shown else "unknown or expired job")


class JobsOverloaded(VGateError):
    """Too many jobs running on this replica (503, retryable)."""
    status_code = 503
    type = "jobs_overloaded"
    retryable = True


def error_body(exc: BaseException) -> dict[str, Any]:
    """What a failed job says: a ``VGateError``'s body (and its HTTP status); anything else a
    generic internal error, its details only in the log."""
    if isinstance(exc, VGateError):
        return {**exc.body(), "status": exc.status_code}
    return {"type": "internal_error", "status": 500,
            "message": "the job failed on an internal error; the gateway's log has the details"}


CANCELLED = {"type": "job_cancelled", "status": 409, "message": "the job was cancelled (DELETE /jobs/{id})"}
SHUTDOWN = {"type": "shutting_down", "status": 503, "retryable": True,
            "message": "the gateway replica running the job stopped before it finished; submit it again"}
LOST = {"type": "job_lost", "status": 503, "retryable": True,
        "message": "the gateway replica running the job stopped (or lost the shared store) before it finished; "
                   "submit it again"}


@dataclass(slots=True)
class JobEvent:
    """One event of a job's log: ``id`` is its place in the log (1, 2, 3, ...), the SSE id."""

    id: int
    event: str
    data: dict[str, Any]


@dataclass
class Job:
    """A job as this process has it: its own (running here, or finished here) or, with Redis,
    read from the store."""

    job_id: str
    kind: str
    owner: str | None
    total: int
    status: str = "queued"
    progress: dict[str, Any] = field(default_factory=dict)
    result: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    created_at: float = field(default_factory=lambda: round(time.time(), 3))
    finished_at: float | None = None
    events: list[JobEvent] = field(default_factory=list)
    task: asyncio.Task | None = None
    done_mono: float | None = None  # time.monotonic() when it finished: its TTL counts from here
    replica: str | None = None  # with Redis, the replica running it (read from the store)
    # Told of each change (an event, a status), synchronously: the writer of its copy in Redis.
    listener: Callable[[], None] | None = None
    _changed: asyncio.Event = field(default_factory=asyncio.Event, repr=False)

    def __post_init__(self) -> None:
        if not self.progress:
            self.progress = {"done": 0, "total": self.total}

    @property
    def finished(self) -> bool:
        """Whether the job has ended (succeeded, failed or cancelled)."""
        return self.status in TERMINAL

    def view(self) -> dict[str, Any]:
        """``GET /jobs/{id}``'s body (keys that do not apply left out)."""
        out: dict[str, Any] = {"job_id": self.job_id, "kind": self.kind, "status": self.status,
                               "progress": self.progress, "created_at": self.created_at}
        if self.result is not None:
            out["result"] = self.result
        if self.error is not None:
            out["error"] = self.error
        if self.finished_at is not None:
            out["finished_at"] = self.finished_at
        return out

    def visible_to(self, principal) -> bool:
        """Its owner's (the API key that submitted it) or an admin key's; everyone's on an open gateway."""
        if principal is None:
            return self.owner is None
        return principal.id == self.owner or "admin" in principal.scopes

    # ---------------------------------------------------------------- changes (this process's jobs)

    def publish(self, event: str, data: dict[str, Any]) -> JobEvent:
        """Append an event to the job's log and wake its followers; returns the event."""
        ev = JobEvent(id=len(self.events) + 1, event=event, data=data)
        self.events.append(ev)
        self._wake()
        return ev

    def start(self) -> None:
        """Mark a queued job running."""
        if self.status == "queued":
            self.status = "running"
            self._wake()

    def finish(self, status: str, *, result: dict[str, Any] | None = None,
               error: dict[str, Any] | None = None) -> bool:
        """End the job once (later calls do nothing): its status, and its last event. Whether it ended now."""
        if self.finished:
            return False
        self.status, self.result, self.error = status, result, error
        self.finished_at = round(time.time(), 3)
        self.done_mono = time.monotonic()
        if result is not None:
            self.publish("result", result)
        else:
            self.publish("error", error or {})
        return True

    def _wake(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()
        if self.listener is not None:
            self.listener()

    async def follow(self, after_id: int = 0) -> AsyncIterator[JobEvent]:
        """Events with id > ``after_id``, then live ones until the last: no gap, no duplicate."""
        next_index = max(0, after_id)
        while True:
            while next_index < len(self.events):
                yield self.events[next_index]
                next_index += 1
            if self.finished:
                return
            await self._changed.wait()
