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
