"""Agent runs shared through Redis, so that a run started on one gateway replica can be resumed
through any other: each run's event log is copied into a Redis Stream as it is published, and a
replica that does not have the run follows that stream.

Layout (``{<run_id>}`` is a hash tag: a run's keys share one cluster slot):

- ``vg:run:{<run_id>}:events``: a stream, one entry per event, entry id ``0-<event id>`` (events are
  numbered 1, 2, 3, ..., so ``Last-Event-ID: n`` is the stream id ``0-n``), fields ``event`` and
  ``data`` (its JSON, as the SSE stream writes it: ``event_json``);
- ``vg:run:{<run_id>}:meta``: a hash: ``owner`` (the API key id that started it, empty without
  keys), ``replica`` (the one running it), ``session_id``, ``model`` (empty while unknown),
  ``finished`` (``0`` or ``1``, written after the run's last event);
- ``vg:run:{<run_id>}:followers``: a sorted set of the clients following the run through other
  replicas, each scored by when its presence ends (Redis's clock, ms): the replica that runs the
  run does not cancel it for want of clients while one is there;
- ``vg:replica:<replica>``: present while that replica is alive (renewed every few seconds).

While a run is live its keys expire ``LIVE_TTL_S`` after the last write (each write renews them);
once it has finished, ``agent_resume_ttl_s`` after its last event. A run whose replica died is
ended by its first follower that notices: an ``error`` event of type ``run_lost`` is appended and
the log marked finished.

Only following is shared. Stopping or cancelling a run happens on the replica that runs it (its
clients leaving there, its shutdown), never from another replica.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import time
import uuid
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass
from typing import TypeVar

import anyio
from redis.asyncio import Redis

from app.services.agent.runs import TERMINAL_EVENTS, AgentEvent, AgentRun, event_json
from app.services.state.connection import Health, StoreUnavailable, guarded
from app.settings import Settings

T = TypeVar("T")
BATCH = 256  # stream entries per write, and per read

_NOW_MS = "local t = redis.call('TIME') local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n"
# KEYS: followers. ARGV: token, presence (ms), the key's TTL (ms).
_FOLLOW = _NOW_MS + """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
"""
# KEYS: followers.
_FOLLOWED = _NOW_MS + "return redis.call('ZCOUNT', KEYS[1], '(' .. now, '+inf')"
# KEYS: events, meta, the replica's key. ARGV: the error event's data, TTL (ms). Ends a live run whose
# replica is gone, once: its next event is the error, and the log is marked finished.
_SEAL = """
if redis.call('EXISTS', KEYS[3]) == 1 or redis.call('HGET', KEYS[2], 'finished') ~= '0' then return 0 end
local top = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
local seq = 0
if #top > 0 then seq = tonumber(string.match(top[1][1], '-(%d+)$')) end
redis.call('XADD', KEYS[1], '0-' .. (seq + 1), 'event', 'error', 'data', ARGV[1])
redis.call('HSET', KEYS[2], 'finished', '1')
redis.call('PEXPIRE', KEYS[1], ARGV[2])
redis.call('PEXPIRE', KEYS[2], ARGV[2])
return 1
"""
_RUN_LOST = {"status": 503, "type": "run_lost", "retryable": True,
             "message": "the gateway replica running this run stopped (or lost the shared store) before it "
                        "finished; send it again"}


def run_keys(run_id: str) -> tuple[str, str, str]:
    """The run's stream, meta hash and followers set."""
    base = f"vg:run:{{{run_id}}}"
    return f"{base}:events", f"{base}:meta", f"{base}:followers"


def replica_key(replica: str) -> str:
    """The key present while ``replica`` is alive."""
    return f"vg:replica:{replica}"


class SharedRuns:
    """The Redis side of this replica's agent runs: one ``RunLogWriter`` per run started here, this
    replica's liveness, and the runs of other replicas, found and followed in Redis (``RemoteRun``)."""

    LIVE_TTL_S = 3600.0  # a live run's keys outlive its last write this long
    FOLLOWER_TTL_S = 5.0  # a follower's presence lasts this long past its last renewal
    FOLLOWER_RENEW_S = 1.0
    ALIVE_TTL_S = 15.0  # a replica that has not said it is alive for this long is gone
    ALIVE_RENEW_S = 5.0

    def __init__(self, redis: Redis, settings: Settings, health: Health) -> None:
        self.redis = redis
        self.health = health
        self.replica = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.done_ttl_ms = max(1, int(settings.agent_resume_ttl_s * 1000))
        self.live_ttl_ms = int(max(self.LIVE_TTL_S, settings.agent_resume_ttl_s) * 1000)
        self.resume_ttl_s = settings.agent_resume_ttl_s
        self.grace_s = settings.agent_disconnect_grace_s
        # A blocking read must answer within the client's socket timeout (1 s by default).
        self.block_ms = max(1, int(min(1.0, settings.redis_timeout_s / 2) * 1000))
        self.follow_script = redis.register_script(_FOLLOW)
        self.followed_script = redis.register_script(_FOLLOWED)
        self.seal_script = redis.register_script(_SEAL)
        self.settle_timeout_s = 2 * settings.redis_timeout_s
        self._writers: dict[str, RunLogWriter] = {}  # by run id, until each has written its run's end
        self._alive: asyncio.Task | None = None

    async def call(self, aw: Awaitable[T], op: str) -> T:
        """``aw``'s result; any Redis failure is a ``StoreUnavailable``, counted and logged once per outage."""
        return await guarded(aw, op, self.health)

    def attach(self, run: AgentRun) -> None:
        """Copy ``run``'s events into Redis from now on (call before it publishes anything)."""
        if self._alive is None:
            self._alive = asyncio.get_running_loop().create_task(self._stay_alive(), name="agent-replica-alive")
        writer = RunLogWriter(self, run)
        self._writers[run.run_id] = writer
        writer.task.add_done_callback(lambda _: self._writers.pop(run.run_id, None))

    async def settled(self, run_id: str) -> None:
        """Wait (``settle_timeout_s`` at most, and only while Redis answers) until the finished run's
        log is all in Redis: a client that saw a stream end here then finds the whole log through
        any replica."""
        writer = self._writers.get(run_id)
        if writer is None or not self.health.up:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(writer.task), self.settle_timeout_s)

    async def find(self, run_id: str) -> RemoteRun | None:
        """The run as Redis has it, or None (unknown or expired). Raises ``StoreUnavailable``."""
        _, meta_key, _ = run_keys(run_id)
        meta = await self.call(self.redis.hgetall(meta_key), "agent_resume")
        if not meta:
            return None
        return RemoteRun(self, run_id, owner=meta.get(b"owner", b"").decode() or None,
                         replica=meta.get(b"replica", b"").decode())

    async def followed_elsewhere(self, run_id: str) -> bool:
        """Whether a client follows the run through another replica now (False when Redis cannot say:
        the run is then this replica's alone)."""
        _, _, followers_key = run_keys(run_id)
        try:
            return bool(await self.call(self.followed_script(keys=[followers_key]), "agent_followers"))
        except StoreUnavailable:
            return False

    async def aclose(self, timeout_s: float = 1.0) -> None:
        """Give the writers ``timeout_s`` to write the runs' last events, then stop them and say
        this replica is gone."""
        if self._writers:
            _, pending = await asyncio.wait({w.task for w in self._writers.values()}, timeout=timeout_s)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        if self._alive is not None:
            self._alive.cancel()
            await asyncio.gather(self._alive, return_exceptions=True)
            with contextlib.suppress(StoreUnavailable):
                await self.call(self.redis.delete(replica_key(self.replica)), "agent_replica")

    async def _stay_alive(self) -> None:
        while True:
            with contextlib.suppress(StoreUnavailable):
                await self.call(self.redis.set(replica_key(self.replica), 1, px=int(self.ALIVE_TTL_S * 1000)),
                                "agent_replica")
            await asyncio.sleep(self.ALIVE_RENEW_S)


class RunLogWriter:
    """Copies one run's events into its stream in publish order, never making the run wait:
    ``publish()`` only wakes this writer (``AgentRun.listener``), whose one task writes all that has
    accumulated since its last write in one pipeline (the run's own list of events is the queue).

    A failed write is retried with a growing pause; the writer first asks the stream which events
    it already has (a write may have half-happened, or Redis may have restarted empty), so the stream
    ends up whole, without gap or duplicate, once Redis answers again. It stops once the log is
    finished (by itself, or by a follower that found this replica gone), or once the run has been
    finished ``agent_resume_ttl_s``: nobody could resume it any more."""

    def __init__(self, shared: SharedRuns, run: AgentRun) -> None:
        self.shared = shared
        self.run = run
        self.written = 0  # events[:written] are in the stream
        self.meta_written = False
        self.done = False  # the log is finished: nothing more to write
        self._resync = False
        self._wake = asyncio.Event()
        run.listener = self._wake.set
        self.task = asyncio.get_running_loop().create_task(self._drain(), name=f"{run.run_id}:log")

    def _pending(self) -> bool:
        return not self.meta_written or self.written < len(self.run.events) or self.run.finished

    async def _drain(self) -> None:
        pause = 0.0
        while not self.done:
            if not self._pending():
                self._wake.clear()
                await self._wake.wait()
                continue
            try:
                await self._flush()
                pause = 0.0
            except StoreUnavailable:
                self._resync = True
                run = self.run
                if run.finished_at is not None and time.monotonic() - run.finished_at > self.shared.resume_ttl_s:
                    return
                pause = min(5.0, pause * 2 or 0.2)
                await asyncio.sleep(pause)

    async def _flush(self) -> None:
        shared, run = self.shared, self.run
        events_key, meta_key, _ = run_keys(run.run_id)
        if self._resync:
            pipe = shared.redis.pipeline(transaction=False)
            pipe.xrevrange(events_key, count=1)
            pipe.hget(meta_key, "finished")
            top, finished = await shared.call(pipe.execute(), "agent_run_log")
            self.written = min(_seq(top[0][0]) if top else 0, len(run.events))
            self._resync = False
            if finished == b"1":  # by this writer before, or sealed by a follower: the log is complete
                self.done = True
                return
        # No await from here to execute(): the batch and the finished flag agree.
        batch = run.events[self.written:self.written + BATCH]
        last = run.finished and self.written + len(batch) == len(run.events)
        ttl_ms = shared.done_ttl_ms if last else shared.live_ttl_ms
        pipe = shared.redis.pipeline(transaction=False)
        for ev in batch:
            pipe.xadd(events_key, {"event": ev.event, "data": event_json(ev.data)}, id=f"0-{ev.id}")
        pipe.hset(meta_key, mapping={"owner": run.owner or "", "replica": shared.replica,
                                     "session_id": run.session_id or "", "model": run.model or "",
                                     "finished": int(last)})
        pipe.pexpire(events_key, ttl_ms)
        pipe.pexpire(meta_key, ttl_ms)
        pipe.set(replica_key(shared.replica), 1, px=int(shared.ALIVE_TTL_S * 1000))  # alive while it writes
        await shared.call(pipe.execute(), "agent_run_log")
        self.written += len(batch)
        self.meta_written = True
        self.done = last


@dataclass
class RemoteRun:
    """A run this replica does not have (another replica's, or one it no longer keeps), read from
    Redis. It can only be followed: stopping it is for the replica that runs it."""

    shared: SharedRuns
    run_id: str
    owner: str | None
    replica: str

    async def follow(self, after_id: int = 0, stopping: anyio.Event | None = None) -> AsyncIterator[AgentEvent]:
        """As ``AgentRun.follow``: the events with id > ``after_id`` from the stream (XRANGE), then the
        live ones (XREAD BLOCK, in short blocks) until the run's last event, each once and in order.
        While it follows, this client counts as one of the run's (the ``followers`` set).

        Ends early, without an error event, if Redis fails on the way (the client reconnects, and
        is told 503 while Redis is unreachable), if the run's keys expire, or once ``stopping`` is
        set (this server is shutting down; the run goes on where it runs)."""
        shared = self.shared
        events_key, _, followers_key = run_keys(self.run_id)
        last = max(0, after_id)
        token, renewed = uuid.uuid4().hex, 0.0
        try:
            async for ev in self._range(last):
                yield ev
                last = ev.id
                if ev.event in TERMINAL_EVENTS:
                    return
            while stopping is None or not stopping.is_set():
                if time.monotonic() - renewed >= shared.FOLLOWER_RENEW_S:
                    await self._present(token, shared.FOLLOWER_TTL_S)
                    renewed = time.monotonic()
                reply = await shared.call(shared.redis.xread({events_key: f"0-{last}"}, count=BATCH,
                                                             block=shared.block_ms), "agent_resume")
                entries = _entries(reply)
                for entry in entries:
                    ev = _event(entry)
                    yield ev
                    last = ev.id
                    if ev.event in TERMINAL_EVENTS:
                        return
                if not entries and not await self._still_going():
                    async for ev in self._range(last):  # its last events came between the read and the flag
                        yield ev
                    return
        except StoreUnavailable:
            return
        finally:
            if renewed:  # a client of the run for the disconnect grace yet, as one of its replica's would be
                with contextlib.suppress(StoreUnavailable):
                    await self._present(token, shared.grace_s)

    async def _still_going(self) -> bool:
        """After a read that found nothing new: whether the run may still publish. One whose replica
        is gone is ended here (``run_lost``): the next read finds that event."""
        shared = self.shared
        events_key, meta_key, _ = run_keys(self.run_id)
        pipe = shared.redis.pipeline(transaction=False)
        pipe.hget(meta_key, "finished")
        pipe.exists(replica_key(self.replica))
        finished, alive = await shared.call(pipe.execute(), "agent_resume")
        if finished != b"0":  # finished, or expired
            return False
        if not alive:
            await shared.call(shared.seal_script(keys=[events_key, meta_key, replica_key(self.replica)],
                                                 args=[json.dumps(_RUN_LOST), shared.done_ttl_ms]), "agent_resume")
        return True

    async def _present(self, token: str, seconds: float) -> None:
        _, _, followers_key = run_keys(self.run_id)
        await self.shared.call(self.shared.follow_script(
            keys=[followers_key], args=[token, int(seconds * 1000), self.shared.live_ttl_ms]), "agent_followers")

    async def _range(self, after_id: int) -> AsyncIterator[AgentEvent]:
        """The stream's events after ``after_id`` as it is now, page by page."""
        shared = self.shared
        events_key, _, _ = run_keys(self.run_id)
        while True:
            page = await shared.call(shared.redis.xrange(events_key, min=f"0-{after_id + 1}", count=BATCH),
                                     "agent_resume")
            for entry in page:
                ev = _event(entry)
                after_id = ev.id
                yield ev
            if len(page) < BATCH:
                return


def _entries(reply) -> list:
    """The entries of an XREAD of one stream: RESP2 ``[[key, entries]]``, RESP3 ``{key: [entries]}``."""
    if not reply:
        return []
    if isinstance(reply, dict):
        [value] = reply.values()
        return value[0] if value and isinstance(value[0], list) else value
    return reply[0][1]


def _seq(entry_id: bytes) -> int:
    return int(entry_id.split(b"-", 1)[1])


def _event(entry: tuple[bytes, dict[bytes, bytes]]) -> AgentEvent:
    entry_id, fields = entry
    return AgentEvent(id=_seq(entry_id), event=fields[b"event"].decode(), data=json.loads(fields[b"data"]))


RunLike = AgentRun | RemoteRun  # what a stream follows
