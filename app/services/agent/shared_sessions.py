"""Agent sessions (``session_id``) kept in Redis, so that every gateway replica continues the same
conversation and no two run it at once.

Layout (``<key>`` is ``AgentTask.session_key``: ``<API key id>/<session_id>``, or the bare id
without API keys; braces make it a hash tag, so a session's keys share one cluster slot):

- ``vg:session:{<key>}:history``: the conversation, JSON, bounded by ``trim_history``, expiring
  ``agent_session_ttl_s`` after the session's last run ended;
- ``vg:session:{<key>}:lease``: held while a run uses the session, a random token set with
  ``SET NX PX``: renewed while the run goes, deleted when it ends, and expiring by itself
  ``LEASE_S`` after a replica that died stopped renewing it.

Redis unreachable: starting a run of a session is a 503 ``store_unavailable`` (``StoreUnavailable``);
a run that ends then keeps its turn out of the history (counted and logged once per outage), and
its lease expires by itself.
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

# KEYS: history, lease. ARGV: token, history TTL (ms), history JSON ("": keep the history as it is).
# The history is written only by the run that still holds the lease.
_CHECKIN = """
if redis.call('GET', KEYS[2]) ~= ARGV[1] then return 0 end
if ARGV[3] ~= '' then
  redis.call('SET', KEYS[1], ARGV[3], 'PX', ARGV[2])
else
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
redis.call('DEL', KEYS[2])
return 1
"""
# KEYS: lease. ARGV: token, lease (ms).
_RENEW = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
return redis.call('PEXPIRE', KEYS[1], ARGV[2])
"""


def session_keys(session_key: str) -> tuple[str, str]:
    """The session's history and lease keys."""
    base = f"vg:session:{{{session_key}}}"
    return f"{base}:history", f"{base}:lease"


class SharedSessions:
    """Conversations by session key, in Redis: the interface of ``SessionStore`` that the agent
    service and loop use (``checkout``, ``checkin``, ``checkin_nowait``)."""

    LEASE_S = 30.0

    def __init__(self, redis: Redis, settings: Settings, health: Health, max_messages: int = 200) -> None:
        self.redis = redis
        self.health = health
        self.ttl_ms = max(1, int(settings.agent_session_ttl_s * 1000))
        self.max_messages = max_messages
        self.max_bytes = settings.agent_session_max_bytes
        self._checkin = redis.register_script(_CHECKIN)
        self._renew = redis.register_script(_RENEW)
        self._held: dict[str, tuple[str, asyncio.Task]] = {}  # session key → (lease token, its renewer)
        self._tasks: set[asyncio.Task] = set()

    async def checkout(self, session_key: str) -> list[dict[str, Any]] | None:
        """The history, with the session's lease taken; None if a run (on any replica) holds it.
        Raises ``StoreUnavailable`` when Redis does not answer."""
        if session_key in self._held:  # a run here still holds it (a lease it may have lost included)
            return None
        history_key, lease_key = session_keys(session_key)
        token = uuid.uuid4().hex
        pipe = self.redis.pipeline(transaction=False)
        pipe.set(lease_key, token, nx=True, px=int(self.LEASE_S * 1000))
        pipe.get(history_key)
        taken, raw = await guarded(pipe.execute(), "agent_session", self.health)
        if not taken:
            return None
        self._held[session_key] = (token, self._spawn(self._keep(session_key, lease_key, token)))
        return json.loads(raw) if raw else []

    async def checkin(self, session_key: str, messages: list[dict[str, Any]] | None) -> None:
        """The session free again, with ``messages`` as its history (None: the history unchanged), if
        the run still held its lease. Never raises: a failure is counted and logged, and the lease
        then expires by itself."""
        held = self._held.pop(session_key, None)
        if held is None:
            return
        token, renewer = held
        renewer.cancel()
        history_key, lease_key = session_keys(session_key)
        kept = "" if messages is None else json.dumps(trim_history(messages, self.max_messages, self.max_bytes),
                                                      separators=(",", ":"))  # ASCII: a lone surrogate too
        try:
            ok = await guarded(self._checkin(keys=[history_key, lease_key], args=[token, self.ttl_ms, kept]),
                               "agent_session", self.health)
        except StoreUnavailable:
            return
        if not ok:
            log.warning("agent_session_lease_lost", session_key=session_key, saved=False)

    def checkin_nowait(self, session_key: str, messages: list[dict[str, Any]] | None) -> None:
        """``checkin`` from code that cannot wait (a task's done callback)."""
        self._spawn(self.checkin(session_key, messages))

    async def aclose(self) -> None:
        """Let pending check-ins end; stop renewing leases (their runs have ended by now)."""
        for _, renewer in self._held.values():
            renewer.cancel()
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=1.0)
        for task in list(self._tasks):
            task.cancel()

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
