"""This process's jobs: those it runs, and those it ran, kept ``job_ttl_s`` after they finish and
at most ``jobs_max_kept`` in all (the oldest finished dropped first). Without Redis this is all the
gateway knows of jobs; with Redis the jobs run here are also copied there (``redis_store``)."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable

from app.services.jobs.model import Job


class MemoryJobs:
    """Jobs kept in this process's memory: finished ones expire after ttl_s, at most max_kept."""
    def __init__(self, ttl_s: float, max_kept: int, on_drop: Callable[[Job], None] | None = None) -> None:
        self.ttl_s = ttl_s
        self.max_kept = max_kept
        self.on_drop = on_drop
        self._jobs: OrderedDict[str, Job] = OrderedDict()  # oldest first

    def add(self, job: Job) -> None:
        """Keep a new job, dropping expired or the oldest finished ones to make room."""
        self._evict(room=1)
        self._jobs[job.job_id] = job

    def get(self, job_id: str) -> Job | None:
        """A job by id, or None if unknown or expired."""
        self._evict()
        return self._jobs.get(job_id)

    def live(self) -> list[Job]:
        """The jobs not finished yet."""
        return [j for j in self._jobs.values() if not j.finished]

    def _evict(self, room: int = 0) -> None:
        now = time.monotonic()
        expired = [j for j, job in self._jobs.items() if job.done_mono is not None and now - job.done_mono > self.ttl_s]
        for job_id in expired:
            self._drop(job_id)
        while len(self._jobs) + room > self.max_kept:
            oldest = next((j for j, job in self._jobs.items() if job.finished), None)
            if oldest is None:
                break  # every kept job is running (JobService caps those)
            self._drop(oldest)

    def _drop(self, job_id: str) -> None:
        job = self._jobs.pop(job_id)
        if self.on_drop is not None:
            self.on_drop(job)

    def __len__(self) -> int:
        return len(self._jobs)
