from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from tests.sim.helpers import sim_client


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    """The simulator with default settings (zero latency), in-process over ASGI."""
    async with sim_client() as c:
        yield c
