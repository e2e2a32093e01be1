"""The job service: background work (an evaluation, an optimization) that clients follow by id.

``submit`` starts the work at once in a task the service owns; the work reports its progress
through a ``Progress`` (coalesced: at most one ``progress`` event every ``PROGRESS_INTERVAL_S``, so a
1000-example job does not log 1000 events) and returns its result. Jobs live in this process
(``MemoryJobs``); with ``VGATE_REDIS_URL`` each is also copied into Redis as it changes
(``RedisJobs``), so that any replica reads and follows any job."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import structlog

from app.errors import VGateError
from app.metrics import Metrics
from app.services.access import current_principal
from app.services.jobs.memory import MemoryJobs
from app.services.jobs.model import (
    CANCELLED,
    JOB_ID,
    SHUTDOWN,
    Job,
    JobEvent,
    JobNotFound,
    JobsOverloaded,
    error_body,
    new_job_id,
)
from app.services.state.connection import Health
from app.settings import Settings

log = structlog.get_logger("vgate.jobs")


class Progress:
    """What a job's work tells of its progress: ``await progress.advance(n, **info)`` adds ``n`` to
    ``done`` and publishes ``{done, total, **info}`` (info kept from earlier calls unless given
    again), at most once per ``interval_s``: a pending update is published within ``interval_s``,
    and at once when ``done`` reaches ``total``."""

    def __init__(self, job: Job, interval_s: float) -> None:
        self.job = job
        self.interval_s = interval_s
        self.done = 0
        self.total = job.total
        self._info: dict[str, Any] = {}
        self._published_at = float("-inf")
        self._pending = False
        self._timer: asyncio.TimerHandle | None = None

    async def advance(self, n: int = 1, **info: Any) -> None:
        """Count ``n`` more items done (with extra progress fields); readers see it at once, Redis soon."""
        self.done += n
        self._info.update(info)
        self.job.progress = {"done": self.done, "total": self.total, **self._info}  # GET sees it at once
        self._pending = True
        wait = self.interval_s - (time.monotonic() - self._published_at)
        if wait <= 0 or self.done >= self.total:
            self.flush()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(wait, self.flush)

    def flush(self) -> None:
        """Publish the pending update now (before the job's last event, so that none is lost)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._pending and not self.job.finished:
            self._pending = False
            self._published_at = time.monotonic()
            self.job.publish("progress", dict(self.job.progress))


Work = Callable[[Progress], Awaitable[dict[str, Any]]]


class JobService:
    """Jobs: submitting them, finding them for their owner, following and cancelling them, and
    stopping them at shutdown."""

    PROGRESS_INTERVAL_S = 0.25
    CANCEL_WAIT_S = 2.0  # DELETE waits this long at most for the work to wind down

    def __init__(self, settings: Settings, metrics: Metrics, redis=None, health: Health | None = None) -> None:
        self.settings = settings
        self.metrics = metrics
        self.local = MemoryJobs(ttl_s=settings.job_ttl_s, max_kept=settings.jobs_max_kept)
        self.shared = None
        if redis is not None:
            from app.services.jobs.redis_store import RedisJobs

            self.shared = RedisJobs(redis, settings, health or Health(metrics))
        self._stopping = False

    # ------------------------------------------------------------------ running jobs

    async def submit(self, kind: str, work: Work, *, total: int, owner: str | None) -> str:
        """Start ``work`` in the background now and return the job's id. A 503 ``jobs_overloaded``
        when this replica runs ``jobs_max_running`` jobs already, and with Redis a 503
        ``store_unavailable`` when the job cannot be recorded there (nobody could read it)."""
        if self._stopping:
            raise VGateError("the gateway is shutting down; submit the job again", status_code=503,
                             type="shutting_down", retry_after_s=1.0)
        if len(self.local.live()) >= self.settings.jobs_max_running:
            raise JobsOverloaded(f"this gateway runs {self.settings.jobs_max_running} jobs already; retry later",
                                 retry_after_s=5.0)
        job = Job(job_id=new_job_id(), kind=kind, owner=owner, total=total)
        if self.shared is not None:
            await self.shared.create(job)  # raises StoreUnavailable: the job is not started
            self.shared.attach(job)
        self.local.add(job)
        progress = Progress(job, self.PROGRESS_INTERVAL_S)
        job.task = asyncio.get_running_loop().create_task(self._run(job, work, progress), name=job.job_id)
        job.task.add_done_callback(lambda _: self._never_ran(job))
        log.info("job_submitted", job_id=job.job_id, kind=kind, total=total)
        return job.job_id

    async def _run(self, job: Job, work: Work, progress: Progress) -> None:
        job.start()
        running = self.metrics.jobs_running.labels(kind=job.kind)
        running.inc()
        started = time.monotonic()
        try:
            result = await work(progress)
            if not isinstance(result, dict):
                raise TypeError(f"a job's work returns a dict, not {type(result).__name__}")
        except asyncio.CancelledError:
            self._end(job, progress, "cancelled", error=SHUTDOWN if self._stopping else CANCELLED)
            raise
        except Exception as exc:
            if not isinstance(exc, VGateError):
                log.exception("job_internal_error", job_id=job.job_id, kind=job.kind)
            self._end(job, progress, "failed", error=error_body(exc))
        else:
            self._end(job, progress, "succeeded", result=result)
        finally:
            running.dec()
            log.info("job_finished", job_id=job.job_id, kind=job.kind, status=job.status,
                     duration_s=round(time.monotonic() - started, 3))

    def _end(self, job: Job, progress: Progress, status: str, **outcome: Any) -> None:
        progress.flush()
        if job.finish(status, **outcome):
            self.metrics.jobs.labels(kind=job.kind, status=status).inc()

    def _never_ran(self, job: Job) -> None:
        """A task cancelled before it first ran never entered ``_run``: end its job here."""
        if not job.finished and job.finish("cancelled", error=SHUTDOWN if self._stopping else CANCELLED):
            self.metrics.jobs.labels(kind=job.kind, status="cancelled").inc()

    async def aclose(self) -> None:
        """Cancel the jobs still running (status cancelled, error ``shutting_down``), wait for them to
        wind down, and with Redis give their last state a moment to reach it."""
        self._stopping = True
        live = [j for j in self.local.live() if j.task is not None]
        for job in live:
            job.task.cancel()  # type: ignore[union-attr]
        if live:
            await asyncio.wait({j.task for j in live}, timeout=self.CANCEL_WAIT_S)  # type: ignore[misc]
        if self.shared is not None:
            await self.shared.aclose()

    # ------------------------------------------------------------------ clients of a job

    async def find(self, job_id: str) -> Job:
        """The job, when the caller may see it: this replica's, or with Redis any replica's. Unknown,
        expired, malformed and another key's ids are all the same 404 ``job_not_found``; a job not
        here while Redis is unreachable is a 503 ``store_unavailable``."""
        if not isinstance(job_id, str) or JOB_ID.fullmatch(job_id) is None:
            raise JobNotFound()
        job = self.local.get(job_id)
        if job is None and self.shared is not None:
            job = await self.shared.find(job_id)
        if job is None or not job.visible_to(current_principal()):
            raise JobNotFound(job_id)
        return job

    async def get(self, job_id: str) -> dict[str, Any]:
        """``GET /jobs/{id}``: the job's status, progress, and result or error."""
        return (await self.find(job_id)).view()

    async def follow(self, job: Job, after_id: int = 0) -> AsyncIterator[JobEvent]:
        """The job's events after ``after_id``, then the live ones until its last event. Another
        replica's job is read from Redis (the stream ends early if Redis fails: the client
        reconnects with Last-Event-ID)."""
        if job.task is not None or self.shared is None:  # this replica's (a local job always has its task)
            async for ev in job.follow(after_id):
                yield ev
            return
        async with contextlib.aclosing(self.shared.follow(job, after_id)) as events:
            async for ev in events:
                yield ev

    async def cancel(self, job_id: str) -> dict[str, Any]:
        """``DELETE /jobs/{id}``: cancel the job if it is still running, and return its view. A job
        of this replica is cancelled at once (its work's task cancelled); one another replica runs
        is asked to stop there (within about a second); a finished one is left as it is."""
        job = await self.find(job_id)
        if job.finished:
            return job.view()
        if job.task is not None:
            job.task.cancel()
            await asyncio.wait({job.task}, timeout=self.CANCEL_WAIT_S)
            return job.view()
        assert self.shared is not None
        await self.shared.request_cancel(job)
        return (await self.find(job_id)).view()
