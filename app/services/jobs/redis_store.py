"""Jobs shared through Redis: every job this replica runs is copied there as it changes, so that
``GET /jobs/{id}`` and its events work through any replica.

Layout (``{<job_id>}`` is a hash tag: a job's keys share one cluster slot):

- ``vg:job:{<job_id>}``: a hash: ``kind``, ``owner`` (empty on an open gateway), ``total``,
  ``status``, ``progress``/``result``/``error`` (JSON), ``created_at``, ``finished_at`` (Unix
  seconds), ``replica`` (the one running it), ``alive_at`` (Redis's clock, ms: the job's liveness,
  renewed every second by the replica running it), ``cancel`` (``1``: DELETE through another replica);
- ``vg:job:{<job_id>}:events``: a stream, entry ``0-<event id>`` per event, fields ``event`` and
  ``data`` (JSON);
Both keys of a job live ``LIVE_TTL_S`` past the last write while it runs (renewed every second by
its replica too), ``job_ttl_s`` once it has finished. Once a job's status is final nothing more is
written to it: a reader that finds a running job not renewed for ``ALIVE_TTL_S`` (its replica died)
ends it (``failed``, ``job_lost``), and the replica, if it was only slow, stops writing it (and
cancels its work). The liveness is in the job's hash, not a key of its own, so that Redis losing
the job's keys (a restart, an eviction) makes it missing until its replica writes it again (within
a second), never lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import structlog
from redis.asyncio import Redis

from app.services.agent.runs import event_json
from app.services.agent.shared_keys import entry_seq, stream_entries
from app.services.jobs.model import FINAL_EVENTS, LOST, TERMINAL, Job, JobEvent
from app.services.state.connection import Health, StoreUnavailable, guarded
from app.settings import Settings

log = structlog.get_logger("vgate.jobs")

BATCH = 256  # stream entries per write and per read
_NOW_MS = "local t = redis.call('TIME') local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n"
_FINISHED = _NOW_MS + "local st = redis.call('HGET', KEYS[1], 'status')\n" \
            "local done = st == 'succeeded' or st == 'failed' or st == 'cancelled'\n"

# KEYS: hash, events. ARGV: the stream's last event id as the writer expects it, TTL (ms), n, then n
# hash field/value arguments, then (event id, event, data) per event. Refused once the job is
# finished: {-1, 0}; {0, the stream's last id} when it does not end where the writer left it (it
# writes again from there); {1, last id} written.
_WRITE = _FINISHED + """
if done then return {-1, 0} end
local top = redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', 1)
local seq = 0
if #top > 0 then seq = tonumber(string.match(top[1][1], '-(%d+)$')) end
if seq ~= tonumber(ARGV[1]) then return {0, seq} end
local n = tonumber(ARGV[3])
for i = 4 + n, #ARGV, 3 do
  redis.call('XADD', KEYS[2], '0-' .. ARGV[i], 'event', ARGV[i + 1], 'data', ARGV[i + 2])
  seq = tonumber(ARGV[i])
end
redis.call('HSET', KEYS[1], 'alive_at', now, unpack(ARGV, 4, 3 + n))
redis.call('PEXPIRE', KEYS[1], ARGV[2])
if seq > 0 then redis.call('PEXPIRE', KEYS[2], ARGV[2]) end
return {1, seq}
"""
# KEYS: hash, events. ARGV: the error's JSON, TTL (ms), silence (ms). Ends a job not renewed for
# ``silence``: status failed, the error appended as its last event. 1 if it did.
_SEAL = _FINISHED + """
if done or not st then return 0 end
if now - tonumber(redis.call('HGET', KEYS[1], 'alive_at') or '0') < tonumber(ARGV[3]) then return 0 end
local top = redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', 1)
local seq = 0
if #top > 0 then seq = tonumber(string.match(top[1][1], '-(%d+)$')) end
redis.call('XADD', KEYS[2], '0-' .. (seq + 1), 'event', 'error', 'data', ARGV[1])
redis.call('HSET', KEYS[1], 'status', 'failed', 'error', ARGV[1], 'finished_at', string.format('%.3f', now / 1000))
redis.call('PEXPIRE', KEYS[1], ARGV[2])
redis.call('PEXPIRE', KEYS[2], ARGV[2])
return 1
"""
# KEYS: hash. Asks the job's replica to cancel it. 1 if the job was running.
_CANCEL = _FINISHED + """
if done or not st then return 0 end
redis.call('HSET', KEYS[1], 'cancel', '1')
return 1
"""
# KEYS: hash, events. ARGV: TTL (ms). The running job's replica is alive: -1 its keys are gone (to be
# written again), -2 finished (sealed), else 1 when a DELETE through another replica asks to cancel it.
_TOUCH = _FINISHED + """
if not st then return -1 end
if done then return -2 end
redis.call('HSET', KEYS[1], 'alive_at', now)
redis.call('PEXPIRE', KEYS[1], ARGV[1])
redis.call('PEXPIRE', KEYS[2], ARGV[1])
return redis.call('HGET', KEYS[1], 'cancel') == '1' and 1 or 0
"""


def job_keys(job_id: str) -> tuple[str, str]:
    """The Redis keys of a job's state and of its event stream."""
    base = f"vg:job:{{{job_id}}}"
    return base, f"{base}:events"


def _loads(raw: bytes | None) -> Any:
    return json.loads(raw) if raw else None


class JobWriter:
    """Copies one job into Redis: ``Job.listener`` wakes its one task, which writes the fields and
    the events published since its last write in one script call; a failed write is retried with
    a growing pause, until the job's last state is in (or, Redis away, ``job_ttl_s`` after the job
    finished: logged ``job_state_lost``)."""

    MAX_PAUSE_S = 2.0

    def __init__(self, shared: RedisJobs, job: Job) -> None:
        self.shared = shared
        self.job = job
        self.written = 0  # job.events[:written] are in the stream
        self.dirty = True
        self.done = False
        self.task: asyncio.Task | None = None
        self._wake = asyncio.Event()

    def start(self) -> None:
        """Write each change from now on."""
        self.job.listener = self._changed
        self.task = asyncio.get_running_loop().create_task(self._drain(), name=f"{self.job.job_id}:store")

    def _changed(self) -> None:
        self.dirty = True
        self._wake.set()

    def rewrite(self) -> None:
        """Redis lost the job's keys: write it again, whole."""
        if not self.done:
            log.warning("job_rewritten", job_id=self.job.job_id, written=self.written)
            self.written = 0
            self._changed()

    async def _drain(self) -> None:
        pause = 0.0
        while not self.done:
            if not self.dirty and self.written >= len(self.job.events):
                self._wake.clear()
                await self._wake.wait()
                continue
            try:
                await self.write()
                pause = 0.0
            except StoreUnavailable:
                self.dirty = True  # what that write carried is still to be written
                job = self.job
                if job.done_mono is not None and time.monotonic() - job.done_mono > self.shared.ttl_s:
                    log.error("job_state_lost", job_id=job.job_id, status=job.status, written=self.written)
                    return
                pause = min(self.MAX_PAUSE_S, pause * 2 or 0.1)
                await asyncio.sleep(pause)

    async def write(self) -> None:
        """One write of what has changed. Raises ``StoreUnavailable``."""
        shared, job = self.shared, self.job
        self.dirty = False
        batch = job.events[self.written:self.written + BATCH]  # with the status, no await between
        last = job.finished and self.written + len(batch) == len(job.events)
        status = job.status if last or not job.finished else "running"  # final only with the last event
        fields = {"kind": job.kind, "owner": job.owner or "", "total": job.total, "status": status,
                  "progress": event_json(job.progress), "created_at": job.created_at, "replica": shared.replica}
        if last:
            fields["finished_at"] = job.finished_at
            if job.result is not None:
                fields["result"] = event_json(job.result)
            else:
                fields["error"] = event_json(job.error or {})
        args: list[Any] = [self.written, shared.done_ttl_ms if last else shared.live_ttl_ms, 2 * len(fields)]
        for name, value in fields.items():
            args += [name, value]
        for ev in batch:
            args += [ev.id, ev.event, event_json(ev.data)]
        status_code, seq = await shared.call(shared.write_script(keys=list(job_keys(job.job_id)), args=args),
                                             "job_write")
        if status_code == 1:
            self.written, self.done = seq, last
        elif status_code == 0:  # Redis lost entries it had (a restart, an eviction): written again from there
            if seq > len(job.events):
                log.error("job_stream_foreign", job_id=job.job_id, stream=seq, events=len(job.events))
                self.done = True
            else:
                self.written, self.dirty = seq, True
        else:  # finished in Redis: by this writer (a reply lost), or sealed by a reader (job_lost)
            self.done = True
            if not job.finished:
                log.warning("job_sealed_elsewhere", job_id=job.job_id)
                if job.task is not None:
                    job.task.cancel()  # nobody can see its outcome any more


class RedisJobs:
    """The Redis side of jobs: writers for this replica's jobs, its liveness (and the DELETEs other
    replicas relay), and reading and following any replica's jobs."""

    LIVE_TTL_S = 3600.0
    ALIVE_TTL_S = 10.0  # a replica that has not said it is alive for this long is gone
    TEND_S = 1.0  # liveness renewed, live TTLs renewed and cancel requests read this often
    CHECK_S = 1.0  # a follower with nothing new looks at the job's status this often

    def __init__(self, redis: Redis, settings: Settings, health: Health) -> None:
        self.redis = redis
        self.health = health
        self.replica = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.ttl_s = settings.job_ttl_s
        self.done_ttl_ms = max(1, int(settings.job_ttl_s * 1000))
        self.live_ttl_ms = int(max(self.LIVE_TTL_S, settings.job_ttl_s) * 1000)
        self.alive_ttl_ms = int(self.ALIVE_TTL_S * 1000)
        self.block_ms = max(1, int(min(0.5, settings.redis_timeout_s / 2) * 1000))
        self.write_script = redis.register_script(_WRITE)
        self.seal_script = redis.register_script(_SEAL)
        self.cancel_script = redis.register_script(_CANCEL)
        self.touch_script = redis.register_script(_TOUCH)
        self.writers: dict[str, JobWriter] = {}
        self._alive: asyncio.Task | None = None

    async def call(self, aw, op: str):
        """Await a Redis command, counting a failure against the store's health (StoreUnavailable)."""
        return await guarded(aw, op, self.health)

    # ------------------------------------------------------------------ this replica's jobs

    async def create(self, job: Job) -> None:
        """Record the new job before it starts (its first write). Raises ``StoreUnavailable``."""
        job.replica = self.replica
        writer = JobWriter(self, job)
        await writer.write()
        self.writers[job.job_id] = writer

    def attach(self, job: Job) -> None:
        """Copy ``job`` (``create``d) into Redis as it changes, from now on."""
        if self._alive is None or self._alive.done():
            self._alive = asyncio.get_running_loop().create_task(self._tend(), name="jobs-replica-alive")
        writer = self.writers[job.job_id]
        writer.start()
        assert writer.task is not None
        writer.task.add_done_callback(lambda _: self.writers.pop(job.job_id, None))

    async def _tend(self) -> None:
        """Renew the liveness of this replica's running jobs (and their keys), write again those Redis
        lost, and cancel those a DELETE through another replica asked to stop."""
        while True:
            writers = [w for w in self.writers.values() if not w.job.finished and w.task is not None]
            if writers:
                pipe = self.redis.pipeline(transaction=False)
                for w in writers:
                    await self.touch_script(keys=list(job_keys(w.job.job_id)), args=[self.live_ttl_ms], client=pipe)
                with contextlib.suppress(StoreUnavailable):
                    replies = await self.call(pipe.execute(), "job_alive")
                    for w, reply in zip(writers, replies, strict=True):
                        if reply == -1:
                            w.rewrite()
                        elif reply == 1 and w.job.task is not None and not w.job.finished:
                            log.info("job_cancelled_elsewhere", job_id=w.job.job_id)
                            w.job.task.cancel()
            await asyncio.sleep(self.TEND_S)

    async def aclose(self, timeout_s: float = 1.0) -> None:
        """Give the writers ``timeout_s`` to write their jobs' last state, then stop."""
        pending: set[asyncio.Task] = set()
        tasks = {w.task for w in self.writers.values() if w.task is not None}
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=timeout_s)
        for writer in list(self.writers.values()):
            if writer.task is not None and writer.task in pending:
                log.error("job_state_lost", job_id=writer.job.job_id, status=writer.job.status,
                          written=writer.written)
                writer.task.cancel()
        if self._alive is not None:
            self._alive.cancel()
            pending.add(self._alive)
        await asyncio.gather(*pending, return_exceptions=True)

    # ------------------------------------------------------------------ any replica's jobs

    async def find(self, job_id: str) -> Job | None:
        """The job as Redis has it (ended ``job_lost`` first if its replica is gone), or None.
        Raises ``StoreUnavailable``."""
        key, _ = job_keys(job_id)
        for _ in range(2):
            h = await self.call(self.redis.hgetall(key), "job_read")
            if not h:
                return None
            job = self._job(job_id, h)
            if job.finished or not await self.seal_if_lost(job):
                return job
        return job

    async def seal_if_lost(self, job: Job) -> bool:
        """End ``job`` (failed, ``job_lost``) if its replica has not renewed it for ``ALIVE_TTL_S``.
        Whether it did."""
        sealed = await self.call(self.seal_script(keys=list(job_keys(job.job_id)),
                                                  args=[json.dumps(LOST), self.done_ttl_ms, self.alive_ttl_ms]),
                                 "job_read")
        if sealed:
            log.warning("job_lost", job_id=job.job_id, replica=job.replica)
        return bool(sealed)

    @staticmethod
    def _job(job_id: str, h: dict[bytes, bytes]) -> Job:
        def text(name: str) -> str:
            return h.get(name.encode(), b"").decode()

        total = int(text("total") or 0)
        progress = _loads(h.get(b"progress")) or {"done": 0, "total": total}
        return Job(job_id=job_id, kind=text("kind"), owner=text("owner") or None, total=total,
                   status=text("status") or "queued", progress=progress,
                   result=_loads(h.get(b"result")), error=_loads(h.get(b"error")),
                   created_at=float(text("created_at") or 0), finished_at=float(text("finished_at") or 0) or None,
                   replica=text("replica") or None)

    async def request_cancel(self, job: Job) -> None:
        """Ask the replica running ``job`` to cancel it. Raises ``StoreUnavailable``."""
        key, _ = job_keys(job.job_id)
        await self.call(self.cancel_script(keys=[key]), "job_write")

    async def follow(self, job: Job, after_id: int = 0) -> AsyncIterator[JobEvent]:
        """A job of another replica: its events after ``after_id`` (blocking reads, ``block_ms`` at
        most each), until its last event. Between reads with nothing new, at most every ``CHECK_S``,
        looks at its status: a job whose keys are gone ends the stream, one whose replica is gone
        is ended ``job_lost`` (that error is then read as its last event). Ends early, with no
        error event, if Redis fails (the client reconnects with Last-Event-ID)."""
        key, events_key = job_keys(job.job_id)
        last, checked, ending = max(0, after_id), time.monotonic(), False
        try:
            while True:
                reply = await self.call(self.redis.xread({events_key: f"0-{last}"}, count=BATCH, block=self.block_ms),
                                        "job_follow")
                entries = [e for got in stream_entries(reply).values() for e in got]
                for entry_id, fields in entries:
                    ev = JobEvent(id=entry_seq(entry_id), event=fields[b"event"].decode(),
                                  data=json.loads(fields[b"data"]))
                    yield ev
                    last = ev.id
                    if ev.event in FINAL_EVENTS:
                        return
                if entries or time.monotonic() - checked < self.CHECK_S:
                    continue
                checked = time.monotonic()
                status = await self.call(self.redis.hget(key, "status"), "job_follow")
                if status is None:
                    return  # expired (or lost with Redis's data)
                if status.decode() in TERMINAL:
                    if ending:
                        return  # the read after it was finished had nothing more (past its last event)
                    ending = True  # its last event is in the stream: the next read has it
                    continue
                await self.seal_if_lost(job)
        except StoreUnavailable:
            return
