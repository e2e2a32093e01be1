"""Agent runs shared through Redis, so that a run started on one gateway replica can be resumed
through any other: each run's event log is copied into a Redis Stream as it is published
(``shared_log``), and a replica that does not have the run follows that stream (``shared_follow``).
The keys are laid out in ``shared_keys``.

While a run is live its keys expire ``LIVE_TTL_S`` after the last write (each write renews them);
once it has finished, ``agent_resume_ttl_s`` after its last event. A run whose replica died is
ended by a replica that follows it: an ``error`` event of type ``run_lost`` is appended and the
log marked finished, once the replica's liveness key is gone and the log has been silent for the
key's TTL too; a finished log takes no more entries, so a replica wrongly taken for dead (slow to
renew its key) cannot write past that end: it stops writing the log and logs
``agent_run_log_sealed`` (its own clients still see the run to its end).

Only following is shared. Stopping or cancelling a run happens on the replica that runs it (its
clients leaving there, its shutdown), never from another replica.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Coroutine
from typing import Any, TypeVar

import structlog
from redis.asyncio import Redis

from app.services.agent.runs import AgentRun
from app.services.agent.shared_follow import FollowHub, RemoteRun
from app.services.agent.shared_keys import NOW_MS, SEAL, entry_seq, replica_key, run_keys
from app.services.agent.shared_log import APPEND, RunLogWriter
from app.services.state.connection import Health, StoreUnavailable, guarded
from app.settings import Settings

T = TypeVar("T")
log = structlog.get_logger("vgate.agent")

# KEYS: followers. ARGV: member (this replica), presence (ms), "set" (this long from now: its last
# client left) or "extend" (at least this long from now). The key expires with its last presence.
_PRESENT = NOW_MS + """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local ms = tonumber(ARGV[2])
local score = tonumber(redis.call('ZSCORE', KEYS[1], ARGV[1]) or '0')
if ARGV[3] == 'set' or score < now + ms then redis.call('ZADD', KEYS[1], now + ms, ARGV[1]) end
if redis.call('PTTL', KEYS[1]) < ms then redis.call('PEXPIRE', KEYS[1], ms) end
return 1
"""
# KEYS: followers.
_FOLLOWED = NOW_MS + "return redis.call('ZCOUNT', KEYS[1], '(' .. now, '+inf')"


class SharedRuns:
    """The Redis side of this replica's agent runs: one ``RunLogWriter`` per run started here, this
    replica's liveness, and the runs of other replicas, found (``find``) and followed through this
    process's one ``FollowHub``."""

    LIVE_TTL_S = 3600.0  # a live run's keys outlive its last write this long
    FOLLOWER_TTL_S = 5.0  # a follower's presence lasts this long past its last renewal
    ALIVE_TTL_S = 15.0  # a replica that has not said it is alive for this long is gone
    ALIVE_RENEW_S = 5.0
    MAX_SEALS = 1024  # logs of runs no longer kept here, waiting for Redis to be sealed

    def __init__(self, redis: Redis, settings: Settings, health: Health) -> None:
        self.redis = redis
        self.health = health
        self.replica = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.done_ttl_ms = max(1, int(settings.agent_resume_ttl_s * 1000))
        self.live_ttl_ms = int(max(self.LIVE_TTL_S, settings.agent_resume_ttl_s) * 1000)
        self.alive_ttl_ms = int(self.ALIVE_TTL_S * 1000)
        self.seal_silence_ms = self.alive_ttl_ms  # a follower seals a log silent this long, of a replica gone
        self.follower_ttl_s = self.FOLLOWER_TTL_S
        self.resume_ttl_s = settings.agent_resume_ttl_s
        self.grace_s = settings.agent_disconnect_grace_s
        # A blocking read must answer well within the client's socket timeout (1 s by default).
        self.block_ms = max(1, int(min(0.5, settings.redis_timeout_s / 2) * 1000))
        self.append_script = redis.register_script(APPEND)
        self.seal_script = redis.register_script(SEAL)
        self.present_script = redis.register_script(_PRESENT)
        self.followed_script = redis.register_script(_FOLLOWED)
        self.settle_timeout_s = 2 * settings.redis_timeout_s
        self.hub = FollowHub(self)
        self._writers: dict[str, RunLogWriter] = {}  # by run id, until each has written its run's end
        self._sealing: OrderedDict[str, RunLogWriter] = OrderedDict()  # released writers, oldest first
        self._background: set[asyncio.Task] = set()
        self._alive: asyncio.Task | None = None

    async def call(self, aw: Awaitable[T], op: str) -> T:
        """``aw``'s result; any Redis failure is a ``StoreUnavailable``, counted and logged once per outage."""
        return await guarded(aw, op, self.health)

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        """Run ``coro`` in the background (a best-effort write: a Redis failure is only counted)."""
        async def quietly() -> None:
            with contextlib.suppress(StoreUnavailable):
                await coro

        task = asyncio.get_running_loop().create_task(quietly())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def attach(self, run: AgentRun) -> None:
        """Copy ``run``'s events into Redis from now on (call before it publishes anything)."""
        if self._alive is None:
            self._alive = asyncio.get_running_loop().create_task(self._stay_alive(), name="agent-replica-alive")
        writer = RunLogWriter(self, run)
        self._writers[run.run_id] = writer
        writer.task.add_done_callback(lambda _: self._forget(writer))

    def dropped(self, run: AgentRun) -> None:
        """The run store no longer keeps ``run``: its writer, if its log is not all in Redis yet, keeps
        only the seal to write (``RunLogWriter.release``)."""
        writer = self._writers.get(run.run_id)
        if writer is not None and writer.run is run:
            self.seal_later(writer)

    def seal_later(self, writer: RunLogWriter) -> None:
        """``writer`` lets go of its run and only seals its log; at most ``MAX_SEALS`` of them (the
        oldest given up first, and logged: that log stays unfinished until its keys expire)."""
        writer.release()
        self._sealing[writer.run_id] = writer
        while len(self._sealing) > self.MAX_SEALS:
            _, oldest = self._sealing.popitem(last=False)
            oldest.task.cancel()
            log.warning("agent_run_log_unsealed", run_id=oldest.run_id, written=oldest.written)

    def _forget(self, writer: RunLogWriter) -> None:
        if self._writers.get(writer.run_id) is writer:
            del self._writers[writer.run_id]
        if self._sealing.get(writer.run_id) is writer:
            del self._sealing[writer.run_id]

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
        events_key, meta_key, _ = run_keys(run_id)
        pipe = self.redis.pipeline(transaction=False)
        pipe.hgetall(meta_key)
        pipe.xrevrange(events_key, count=1)
        meta, top = await self.call(pipe.execute(), "agent_resume")
        if not meta:
            return None
        return RemoteRun(self, run_id, owner=meta.get(b"owner", b"").decode() or None,
                         replica=meta.get(b"replica", b"").decode(), finished=meta.get(b"finished") == b"1",
                         last_id=entry_seq(top[0][0]) if top else 0)

    async def followed_elsewhere(self, run_id: str) -> bool:
        """Whether a client follows the run through another replica now (False when Redis cannot say:
        the run is then this replica's alone)."""
        _, _, followers_key = run_keys(run_id)
        try:
            return bool(await self.call(self.followed_script(keys=[followers_key]), "agent_followers"))
        except StoreUnavailable:
            return False

    def presence(self, seconds: float, exact: bool = False) -> list:
        """``_PRESENT``'s arguments: this replica present for ``seconds`` from now (``exact``: even if
        that ends an earlier, longer presence)."""
        return [self.replica, max(1, int(seconds * 1000)), "set" if exact else "extend"]

    async def present(self, followers_key: str, seconds: float, exact: bool = False) -> None:
        """This replica counted among the run's clients for ``seconds`` from now. Raises ``StoreUnavailable``."""
        await self.call(self.present_script(keys=[followers_key], args=self.presence(seconds, exact)),
                        "agent_followers")

    async def aclose(self, timeout_s: float = 1.0) -> None:
        """Give the writers ``timeout_s`` to write the runs' last events, then stop them and say
        this replica is gone."""
        if self._writers:
            _, pending = await asyncio.wait({w.task for w in self._writers.values()}, timeout=timeout_s)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        if self._background:
            await asyncio.wait(set(self._background), timeout=timeout_s)
        for task in [*self._background, self._alive, self.hub.task]:
            if task is not None:
                task.cancel()
        await asyncio.gather(*self._background, *(t for t in (self._alive, self.hub.task) if t is not None),
                             return_exceptions=True)
        if self._alive is not None:
            with contextlib.suppress(StoreUnavailable):
                await self.call(self.redis.delete(replica_key(self.replica)), "agent_replica")

    async def _stay_alive(self) -> None:
        while True:
            with contextlib.suppress(StoreUnavailable):
                await self.call(self.redis.set(replica_key(self.replica), 1, px=self.alive_ttl_ms), "agent_replica")
            await asyncio.sleep(self.ALIVE_RENEW_S)


RunLike = AgentRun | RemoteRun  # what a stream follows
