"""How a Redis failure looks to the gateway: an outage against one command Redis refused."""

from __future__ import annotations

import pytest

from app.metrics import Metrics
from app.services.state.connection import Health, StoreUnavailable, connect, guarded
from app.settings import Settings


async def test_a_command_redis_refuses_fails_alone_and_does_not_mark_redis_down(redis_clean):
    metrics = Metrics()
    health = Health(metrics)
    client = connect(Settings(redis_url=redis_clean))
    with pytest.raises(StoreUnavailable):  # an id Redis cannot parse: Redis answered, with an error
        await guarded(client.xrange("s", min="0-18446744073709551616"), "x", health)
    ok = await guarded(client.ping(), "ping", health)
    await client.aclose()
    assert ok and health.up and metrics.registry.get_sample_value("vgate_store_up") == 1
    assert metrics.registry.get_sample_value("vgate_store_errors_total", {"op": "x"}) == 1


async def test_after_a_refused_connection_commands_fail_at_once_for_a_moment():
    import time

    from tests.support import free_port

    health = Health(Metrics(), quiet_s=0.5)
    client = connect(Settings(redis_url=f"redis://127.0.0.1:{free_port()}/0"))  # nothing listens there
    with pytest.raises(StoreUnavailable):
        await guarded(client.ping(), "ping", health)
    t0 = time.perf_counter()
    with pytest.raises(StoreUnavailable):
        await guarded(client.ping(), "ping", health)
    await client.aclose()
    assert not health.up and time.perf_counter() - t0 < 0.01


async def test_a_task_cancelled_while_redis_drops_its_connections_is_cancelled():
    """redis-py can turn a cancellation that arrives while it reconnects into a ConnectionError (about
    one in four here): ``guarded`` gives the task its cancellation back instead of a StoreUnavailable,
    so a loop that retries on StoreUnavailable (a run log's writer) still stops when cancelled."""
    import asyncio

    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()  # accepts, then closes at once: Redis going away

    server = await asyncio.start_server(hang_up, "127.0.0.1", 0)
    client = connect(Settings(redis_url=f"redis://127.0.0.1:{server.sockets[0].getsockname()[1]}/0"))

    async def retry_forever() -> None:
        while True:
            try:
                await guarded(client.ping(), "ping")
            except StoreUnavailable:
                await asyncio.sleep(0.001)

    lost = 0
    for trial in range(40):
        task = asyncio.create_task(retry_forever())
        await asyncio.sleep(trial * 0.0003)  # cancelled at different moments of a reconnect
        task.cancel()
        done, _ = await asyncio.wait({task}, timeout=1.0)
        if not done:
            lost += 1
            while not task.done():  # let go of it anyway
                task.cancel()
                await asyncio.sleep(0.01)
    server.close()
    await client.aclose()
    assert lost == 0


async def test_a_burst_waits_for_a_pooled_connection_longer_than_one_command_may_take(redis_clean, monkeypatch):
    """Every pooled connection busy (a burst of calls on a loaded loop) is congestion, not an outage:
    a command waits for one to come free for several command timeouts before it is refused (the pool
    used to give up after two, and 200 concurrent calls saw 503s on a loaded 2-core machine)."""
    import asyncio

    from app.services.state import connection

    monkeypatch.setattr(connection, "REDIS_CONNECTIONS", 1)
    client = connect(Settings(redis_url=redis_clean, redis_timeout_s=1.0))
    pool = client.connection_pool
    held = await pool.get_connection()  # the only connection, taken for 3 s: three command timeouts

    async def give_back() -> None:
        await asyncio.sleep(3.0)
        await pool.release(held)

    releasing = asyncio.create_task(give_back())
    try:
        assert await guarded(client.ping(), "ping", Health()) is True
    finally:
        await releasing
        await client.aclose()
