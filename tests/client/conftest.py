"""The client's fixtures: a live gateway (a real socket: the sync client needs one) in front of the
simulator, and vgate's default client pointed at it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import vgate

from tests.support import live_gateway


@pytest.fixture(scope="module")
def gateway_url(sim_url: str) -> Iterator[str]:
    with live_gateway(sim_url) as (url, _app):
        yield url


@pytest.fixture(autouse=True)
def _default_client_reset(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No test sees another's ``vgate.configure`` or the machine's VGATE_* variables."""
    monkeypatch.delenv("VGATE_BASE_URL", raising=False)
    monkeypatch.delenv("VGATE_API_KEY", raising=False)
    vgate.configure()
    yield
    vgate.configure()


@pytest.fixture
def configured(gateway_url: str) -> str:
    vgate.configure(base_url=gateway_url)
    return gateway_url
