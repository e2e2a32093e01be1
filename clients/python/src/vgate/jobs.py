"""``Job`` and ``AsyncJob``: a long evaluation or optimization running on the gateway (``/jobs/{id}``).

``wait()`` polls ``GET /jobs/{id}`` (every replica answers it when the gateway shares state in
Redis) until the job ends, and returns its result as the typed object of its kind; ``events()``
follows ``GET /jobs/{id}/events`` (progress, then result or error).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

from vgate.client import AsyncClient, Client
from vgate.errors import ConnectionError, JobFailed
from vgate.sse import Resumption, aiter_sse, iter_sse

FINISHED = ("succeeded", "failed", "cancelled")
# kind -> the result's type; evaluation.py registers evaluate and optimize
RESULT_TYPES: dict[str, Callable[[dict[str, Any]], Any]] = {}


def _result(kind: str, data: dict[str, Any]) -> Any:
    parse = RESULT_TYPES.get(kind)
    return parse(data) if parse is not None else data


class _JobBase:
    def __init__(self, job_id: str, kind: str | None = None, data: dict[str, Any] | None = None) -> None:
        self.id = job_id
        self.kind = kind or (data or {}).get("kind") or ""
        self.data: dict[str, Any] = dict(data or {"job_id": job_id})

    @property
    def status(self) -> str:
        """The status when last read: queued, running, succeeded, failed or cancelled."""
        return str(self.data.get("status", "queued"))

    @property
    def progress(self) -> dict[str, Any]:
        return dict(self.data.get("progress") or {})

    @property
    def done(self) -> bool:
        return self.status in FINISHED

    def _outcome(self) -> Any:
        if self.status == "succeeded":
            return _result(self.kind, self.data.get("result") or {})
        raise JobFailed(self.id, self.status, self.data.get("error"))

    def _update(self, data: dict[str, Any]) -> None:
        self.data = data
        self.kind = self.kind or data.get("kind") or ""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.id!r}, kind={self.kind!r}, status={self.status!r})"


def _poll_interval(attempt: int, ceiling: float) -> float:
    return min(0.1 * 1.5**attempt, ceiling)


class Job(_JobBase):
    """A job, read with a sync client. ``wait()`` returns its result (an ``EvaluationResult`` or
    ``OptimizationResult``) or raises ``vgate.JobFailed``."""

    def __init__(self, client: Client, job_id: str, kind: str | None = None,
                 data: dict[str, Any] | None = None) -> None:
        super().__init__(job_id, kind, data)
        self.client = client

    def refresh(self) -> Job:
        """Fetch the job's current state from the gateway; returns self."""
        self._update(self.client.get(f"/jobs/{self.id}"))
        return self

    def wait(self, timeout: float | None = None, *, poll_interval: float = 2.0,
             on_progress: Callable[[dict[str, Any]], None] | None = None) -> Any:
        """Block until the job ends (at most ``timeout`` seconds: then ``TimeoutError``)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        for attempt in itertools.count():
            self.refresh()
            if on_progress is not None:
                on_progress(self.progress)
            if self.done:
                return self._outcome()
            pause = _poll_interval(attempt, poll_interval)
            if deadline is not None and time.monotonic() + pause > deadline:
                raise TimeoutError(f"job {self.id} is still {self.status} after {timeout} s")
            time.sleep(pause)

    def cancel(self) -> Job:
        """Ask the gateway to cancel the job, then return its refreshed state."""
        self.client.request("DELETE", f"/jobs/{self.id}")
        return self.refresh()

    def events(self) -> Iterator[dict[str, Any]]:
        """The job's events from the start, as ``{"event", "id", **data}``: ``progress`` ones, then
        ``result`` or ``error``. A dropped stream resumes after the last id seen."""
        resume = _resumption()
        while True:
            try:
                with self.client.stream("GET", f"/jobs/{self.id}/events", headers=_resume_headers(resume)) as response:
                    for sse in iter_sse(response.iter_lines()):
                        event = _job_event(sse.event, sse.data, sse.id)
                        if resume.is_new(event["id"]):
                            yield event
                            if event["event"] in ("result", "error"):
                                return
                reason: ConnectionError = _ended_early(self.id)
            except ConnectionError as e:
                reason = e
            time.sleep(resume.pause(reason))


class AsyncJob(_JobBase):
    """A job, read with an async client: ``await job.wait()``."""

    def __init__(self, client: AsyncClient, job_id: str, kind: str | None = None,
                 data: dict[str, Any] | None = None) -> None:
        super().__init__(job_id, kind, data)
        self.client = client

    async def refresh(self) -> AsyncJob:
        """Fetch the job's current state from the gateway; returns self."""
        self._update(await self.client.get(f"/jobs/{self.id}"))
        return self

    async def wait(self, timeout: float | None = None, *, poll_interval: float = 2.0,
                   on_progress: Callable[[dict[str, Any]], None] | None = None) -> Any:
        """Wait until the job ends (at most ``timeout`` seconds: then TimeoutError) and return its result or raise
        its error."""
        deadline = None if timeout is None else time.monotonic() + timeout
        for attempt in itertools.count():
            await self.refresh()
            if on_progress is not None:
                on_progress(self.progress)
            if self.done:
                return self._outcome()
            pause = _poll_interval(attempt, poll_interval)
            if deadline is not None and time.monotonic() + pause > deadline:
                raise TimeoutError(f"job {self.id} is still {self.status} after {timeout} s")
            await asyncio.sleep(pause)

    async def cancel(self) -> AsyncJob:
        """Ask the gateway to cancel the job, then return its refreshed state."""
        await self.client.request("DELETE", f"/jobs/{self.id}")
        return await self.refresh()

    async def events(self) -> AsyncIterator[dict[str, Any]]:
        """The job's events from the start (progress, then result or error); a dropped stream resumes after the last
        id."""
        resume = _resumption()
        while True:
            try:
                async with self.client.stream("GET", f"/jobs/{self.id}/events",
                                              headers=_resume_headers(resume)) as response:
                    async for sse in aiter_sse(response.aiter_lines()):
                        event = _job_event(sse.event, sse.data, sse.id)
                        if resume.is_new(event["id"]):
                            yield event
                            if event["event"] in ("result", "error"):
                                return
                reason: ConnectionError = _ended_early(self.id)
            except ConnectionError as e:
                reason = e
            await asyncio.sleep(resume.pause(reason))


def _resumption() -> Resumption:
    """A job's event stream is resumed three times in a row at most, waiting 0.2 s longer each time."""
    return Resumption(max_failures=3, delay=lambda failures: 0.2 * failures)


def _resume_headers(resume: Resumption) -> dict[str, str] | None:
    return {"last-event-id": str(resume.seen)} if resume.seen else None


def _ended_early(job_id: str) -> ConnectionError:
    """A stream that ended before the job's last event (the gateway ends it so when its store fails):
    resumed from the last id seen, as a dropped connection is."""
    return ConnectionError(f"the event stream of job {job_id} ended before its last event", type="stream_ended")


def _job_event(name: str, data: str, event_id: str | None) -> dict[str, Any]:
    try:
        payload = json.loads(data)
    except ValueError:
        payload = data
    body = payload if isinstance(payload, dict) else {"data": payload}
    return {**body, "event": name, "id": int(event_id) if event_id and event_id.isdigit() else None}
