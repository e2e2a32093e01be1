"""Agent sessions (``session_id``) kept in Redis, so that every gateway replica continues the same
conversation and no two run it at once.

Layout (``<key>`` is ``AgentTask.session_key``: ``<API key id>/<session_id>``, or the bare id
without API keys; braces make it a hash tag, so a session's keys share one cluster slot):

- ``vg:session:{<key>}:history``: the conversation, JSON, bounded by ``trim_history``, expiring
  ``agent_session_ttl_s`` after the session's last run ended;
- ``vg:session:{<key>}:lease``: held while a run uses the session, a random token: renewed while
  the run goes, deleted when it ends, and expiring by itself ``LEASE_S`` after a replica that died
  stopped renewing it;
- ``vg:sessions``: the sessions with a history, scored by their last use (ms): past
  ``agent_max_sessions`` the least recently used ones not in use are dropped, as in memory.

Redis unreachable: starting a run of a session is a 503 ``store_unavailable`` (``StoreUnavailable``),
and a lease that the failed call may have taken is given back in the background; a run that ends
then keeps its turn out of the history (counted and logged once per outage; its ``final`` event says
``"session_saved": false``), and its lease expires by itself.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import structlog
from redis.asyncio import Redis

from app.services.agent.runs import trim_history
from app.services.state.connection import Health, StoreUnavailable, guarded
from app.settings import Settings

log = structlog.get_logger("vgate.agent")

INDEX_KEY = "vg:sessions"
# KEYS: lease, history. ARGV: token, lease (ms). The lease, unless another token holds it (a retried
# call finds its own), and the history ("" if none).
_CHECKOUT = """
local holder = redis.call('GET', KEYS[1])
if holder and holder ~= ARGV[1] then return {0, ''} end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return {1, redis.call('GET', KEYS[2]) or ''}
"""
# KEYS: history, lease, index. ARGV: token, history TTL (ms), history JSON ("": keep the history as it
# is), session key, max sessions. The history is written only by the run that still holds the lease;
# then the least recently used sessions past the bound, and not in use, are dropped (their key names
# are made here from the index: one Redis server, not Cluster).
_CHECKIN = """
if redis.call('GET', KEYS[2]) ~= ARGV[1] then return 0 end
if ARGV[3] ~= '' then
  redis.call('SET', KEYS[1], ARGV[3], 'PX', ARGV[2])
else
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
redis.call('DEL', KEYS[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now - tonumber(ARGV[2]))
if redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('ZADD', KEYS[3], now, ARGV[4])
  redis.call('PEXPIRE', KEYS[3], ARGV[2])
end
local excess = redis.call('ZCARD', KEYS[3]) - tonumber(ARGV[5])
if excess > 0 then
  for _, key in ipairs(redis.call('ZRANGE', KEYS[3], 0, excess - 1)) do
    local base = 'vg:session:{' .. key .. '}'
    if redis.call('EXISTS', base .. ':lease') == 0 then
      redis.call('DEL', base .. ':history')
      redis.call('ZREM', KEYS[3], key)
    end
  end
end
return 1
"""
# KEYS: lease. ARGV: token, lease (ms).
_RENEW = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
return redis.call('PEXPIRE', KEYS[1], ARGV[2])
"""
# KEYS: lease. ARGV: token.
_RELEASE = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
return redis.call('DEL', KEYS[1])
"""


def session_keys(session_key: str) -> tuple[str, str]:
    """The session's history and lease keys."""
    base = f"vg:session:{{{session_key}}}"
    return f"{base}:history", f"{base}:lease"


class SharedSessions:
    """Conversations by session key, in Redis: the interface of ``SessionStore`` that the agent
    service and loop use (``checkout``, ``checkin``, ``checkin_nowait``)."""

    LEASE_S = 30.0
    GIVE_BACK_TRIES = 5  # a lease a failed checkout may hold: given back at once, or a little later

    def __init__(self, redis: Redis, settings: Settings, health: Health, max_messages: int = 200) -> None:
        self.redis = redis
        self.health = health
        self.ttl_ms = max(1, int(settings.agent_session_ttl_s * 1000))
        self.max_sessions = settings.agent_max_sessions
        self.max_messages = max_messages
        self.max_bytes = settings.agent_session_max_bytes
        self._checkout = redis.register_script(_CHECKOUT)
        self._checkin = redis.register_script(_CHECKIN)
        self._renew = redis.register_script(_RENEW)
        self._release = redis.register_script(_RELEASE)
        # session key → (lease token, its renewer; None while the checkout is under way)
        self._held: dict[str, tuple[str, asyncio.Task | None]] = {}
        self._tasks: set[asyncio.Task] = set()

    async def checkout(self, session_key: str) -> list[dict[str, Any]] | None:
        """The history, with the session's lease taken; None if a run (on any replica) holds it.
        Raises ``StoreUnavailable`` when Redis does not answer; the lease that call may have taken
        anyway (its reply lost) is then given back in the background."""
        if session_key in self._held:  # a run here holds it (a lease it may have lost included), or takes it
            return None
        history_key, lease_key = session_keys(session_key)
        token = uuid.uuid4().hex
        self._held[session_key] = (token, None)  # before the call: a lease it takes is known here
        try:
            taken, raw = await guarded(self._checkout(keys=[lease_key, history_key],
                                                      args=[token, int(self.LEASE_S * 1000)]),
                                       "agent_session", self.health)
        except BaseException as exc:  # StoreUnavailable, or the request cancelled while it waited
            del self._held[session_key]
            if not (isinstance(exc, StoreUnavailable) and exc.__cause__ is None):  # None: never sent
                self._spawn(self._give_back(lease_key, token))
            raise
        if not taken:
            del self._held[session_key]
            return None
        self._held[session_key] = (token, self._spawn(self._keep(session_key, lease_key, token)))
        return json.loads(raw) if raw else []

    async def checkin(self, session_key: str, messages: list[dict[str, Any]] | None) -> bool:
        """The session free again, with ``messages`` as its history (None: the history unchanged), if
        the run still held its lease. Whether that was done: never raises (a failure is counted and
        logged, and the lease then expires by itself). Cancelling the wait does not stop it."""
        held = self._held.pop(session_key, None)
        if held is None:
            return False
        return await asyncio.shield(self._spawn(self._check_in(session_key, *held, messages)))

    def checkin_nowait(self, session_key: str, messages: list[dict[str, Any]] | None) -> None:
        """``checkin`` from code that cannot wait (a task's done callback)."""
        held = self._held.pop(session_key, None)
        if held is not None:
            self._spawn(self._check_in(session_key, *held, messages))

    async def aclose(self) -> None:
        """Let pending check-ins end; stop renewing leases (their runs have ended by now)."""
        for _, renewer in self._held.values():
            if renewer is not None:
                renewer.cancel()
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=1.0)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _check_in(self, session_key: str, token: str, renewer: asyncio.Task | None,
                        messages: list[dict[str, Any]] | None) -> bool:
        if renewer is not None:
            renewer.cancel()
        history_key, lease_key = session_keys(session_key)
        kept = "" if messages is None else json.dumps(trim_history(messages, self.max_messages, self.max_bytes),
                                                      separators=(",", ":"))  # ASCII: a lone surrogate too
        try:
            ok = await guarded(self._checkin(keys=[history_key, lease_key, INDEX_KEY],
                                             args=[token, self.ttl_ms, kept, session_key, self.max_sessions]),
                               "agent_session", self.health)
        except StoreUnavailable:
            return False
        if not ok:
            log.warning("agent_session_lease_lost", session_key=session_key, saved=False)
        return bool(ok)

    async def _give_back(self, lease_key: str, token: str) -> None:
        """Delete the lease if ``token`` holds it, trying a few times over a few seconds (then it
        expires by itself)."""
        for attempt in range(self.GIVE_BACK_TRIES):
            try:
                await guarded(self._release(keys=[lease_key], args=[token]), "agent_session", self.health)
                return
            except StoreUnavailable:
                await asyncio.sleep(0.2 * 2**attempt)

    async def _keep(self, session_key: str, lease_key: str, token: str) -> None:
        """Renew the lease every ``LEASE_S / 3`` while the run goes."""
        lease_ms = int(self.LEASE_S * 1000)
        while True:
            await asyncio.sleep(self.LEASE_S / 3)
            try:
                held = await guarded(self._renew(keys=[lease_key], args=[token, lease_ms]), "agent_session",
                                     self.health)
            except StoreUnavailable:
                continue
            if not held:
                log.warning("agent_session_lease_lost", session_key=session_key)
                return

    def _spawn(self, coro) -> asyncio.Task:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task
