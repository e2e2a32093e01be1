"""The Redis connection and how its failures look to callers.

One client per process, owned by the app's lifespan. Every command has ``redis_timeout_s`` to
answer and is tried once more at most, so an unreachable or stalled Redis costs a request about a
second, never a hang; the failure is a ``StoreUnavailable`` (503 with a retry hint), counted in
``vgate_store_errors_total`` and logged once per outage, not per call.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from typing import TypeVar

import structlog
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry  # the asyncio one: redis-py's sync Retry is ignored by the asyncio pool
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeout

from app.errors import VGateError

log = structlog.get_logger("vgate.state")
T = TypeVar("T")
REDIS_CONNECTIONS = 64  # per process
# How many command timeouts a command may wait for a free pooled connection. All of them busy is a burst on
# this process's loop (Redis answers in microseconds), not an outage: 200 concurrent calls on a loaded 2-core
# machine waited past 2 timeouts and were refused. Bounded all the same; an outage fails fast via Health.
POOL_WAIT_TIMEOUTS = 10


class StoreUnavailable(VGateError):
    """The shared store (Redis) cannot be reached (503 ``store_unavailable``, retryable)."""
    status_code = 503
    type = "store_unavailable"
    retryable = True

    def __init__(self, message: str = "the gateway's shared state (Redis) is unreachable; retry shortly",
                 **kw) -> None:
        kw.setdefault("retry_after_s", 1.0)
        super().__init__(message, **kw)


def connect(settings) -> Redis | None:
    """The client for ``settings.redis_url``, or None without one. No I/O here: the first command
    connects."""
    if settings.redis_url is None:
        return None
    t = settings.redis_timeout_s
    # A bounded pool that makes a command wait for a free connection (a moment: Redis answers in
    # microseconds) rather than fail when many calls arrive at once, as the default pool does past 100.
    pool = BlockingConnectionPool.from_url(settings.redis_url.get_secret_value(), max_connections=REDIS_CONNECTIONS,
                                           timeout=POOL_WAIT_TIMEOUTS * t, socket_timeout=t, socket_connect_timeout=t,
                                           retry=Retry(NoBackoff(), 1), health_check_interval=30)
    return Redis(connection_pool=pool)


class Health:
    """Whether Redis answered last time, for the metric and one log line per change; after a failure,
    commands fail at once for ``quiet_s`` (then one tries again), so an outage costs each request
    nothing rather than a timeout."""

    def __init__(self, metrics=None, quiet_s: float = 1.0) -> None:
        self.metrics = metrics
        self.up = True
        self.since = time.monotonic()
        self.quiet_s = quiet_s
        self.failed_at = float("-inf")

    def resting(self) -> bool:
        """Whether commands should fail at once: Redis refused or dropped a connection less than a second ago."""
        return not self.up and time.monotonic() - self.failed_at < self.quiet_s

    def ok(self) -> None:
        """A command succeeded: mark the store reachable (logged and in the gauge once)."""
        if not self.up:
            self.up = True
            log.info("store_reachable", after_s=round(time.monotonic() - self.since, 2))
            self.since = time.monotonic()
            if self.metrics is not None:
                self.metrics.store_up.set(1)

    def failed(self, op: str, exc: BaseException) -> None:
        """A command failed: count it, mark the store down (logged once) and rest after a refusal."""
        if not isinstance(exc, RedisTimeout):  # refused or dropped: Redis is away. A timeout may be this
            self.failed_at = time.monotonic()  # process's own busy loop, and must not refuse the next second
        if self.metrics is not None:
            self.metrics.store_errors.labels(op=op).inc()
        if self.up:
            self.up = False
            self.since = time.monotonic()
            log.warning("store_unreachable", op=op, error=type(exc).__name__)
            if self.metrics is not None:
                self.metrics.store_up.set(0)


def _not_an_outage(exc: BaseException) -> bool:
    """Redis answered (with an error for this command), or this process ran out of pooled
    connections: Redis itself is there, and other commands must not be refused for it."""
    if isinstance(exc, ResponseError):
        return True
    return isinstance(exc, RedisConnectionError) and isinstance(exc.__cause__, (asyncio.TimeoutError, TimeoutError)) \
        and "No connection available" in str(exc)


async def guarded(aw: Awaitable[T], op: str, health: Health | None = None) -> T:
    """``aw``'s result, or ``StoreUnavailable`` for any Redis failure (connection, timeout, error),
    at once while Redis has just failed. A command Redis refused, or a moment without a free
    pooled connection, fails alone: it does not mark Redis as down."""
    if health is not None and health.resting():
        close = getattr(aw, "close", None)
        if close is not None:
            close()  # never started: no "never awaited" warning
        raise StoreUnavailable()
    task = asyncio.current_task()
    cancels = task.cancelling() if task is not None else 0
    try:
        result = await aw
    except (RedisError, OSError) as exc:
        if task is not None and task.cancelling() > cancels:
            # redis-py turned a cancellation that came while it (re)connected into a connection error:
            # give the task its cancellation back, or a loop that retries on StoreUnavailable never stops
            raise asyncio.CancelledError() from exc
        if _not_an_outage(exc):
            log.warning("store_command_failed", op=op, error=type(exc).__name__)
            if health is not None and health.metrics is not None:
                health.metrics.store_errors.labels(op=op).inc()
            raise StoreUnavailable("the gateway's shared state (Redis) could not do this just now; retry shortly") \
                from exc
        if health is not None:
            health.failed(op, exc)
        raise StoreUnavailable() from exc
    if task is not None and task.cancelling() > cancels:
        task.uncancel()  # a cancellation swallowed on the way to a result: it is raised at the next await
        task.cancel()
    if health is not None:
        health.ok()
    return result
