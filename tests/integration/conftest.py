"""Fixtures of the integration tests that several modules share."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.fleet_support import Sim, sims


@pytest.fixture(scope="module")
def pair() -> Iterator[tuple[Sim, Sim, Sim]]:
    """Two zero-latency simulators behind the gateway, and one with the latency model whose streams
    arrive in many pieces (for the relay's control test): the fleet fault suites' upstreams."""
    with sims([], [], ["--step-ms", "20", "--output-tokens", "20"]) as started:
        yield tuple(started)  # type: ignore[misc]


@pytest.fixture(params=["memory", "redis"])
def store(request) -> dict:
    """Gateway settings for the store under test: this process's memory (no URL), or a real Redis,
    emptied first."""
    if request.param == "memory":
        return {}
    return {"redis_url": request.getfixturevalue("redis_clean")}
