"""Shared fixtures: upstream servers (simulator, real local model) that the tests start and stop."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import structlog

from tests.support import free_port, redis_server, spawn


def _serve(*args: str, timeout: float = 60) -> Iterator[str]:
    port = free_port()
    with spawn([*args, "--port", str(port)], port, timeout) as url:
        yield url


@pytest.fixture(autouse=True, scope="session")
def _own_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Program versions a test saves with the bundled programs go to $XDG_DATA_HOME: a directory of
    this run's own, never the user's (where a later run, or the demo, would serve them)."""
    mp = pytest.MonkeyPatch()
    mp.setenv("XDG_DATA_HOME", str(tmp_path_factory.mktemp("xdg-data")))
    yield
    mp.undo()


@pytest.fixture(autouse=True)
def _fresh_structlog() -> Iterator[None]:
    """Each test starts from structlog's defaults: an app built by an earlier test configures a
    level filter that would hide lines from structlog.testing.capture_logs."""
    structlog.reset_defaults()
    yield
    structlog.reset_defaults()


@pytest.fixture(scope="session")
def sim_url() -> Iterator[str]:
    """The simulator in zero-latency mode."""
    yield from _serve("sim")


@pytest.fixture(scope="session")
def sim_latency_url() -> Iterator[str]:
    """The simulator with its continuous-batching latency model on."""
    yield from _serve("sim", "--latency-model")


@pytest.fixture(scope="session")
def sim_slow_url() -> Iterator[str]:
    """The latency model with slow (50 ms) decode steps: every request lives for many steps, so
    whether a batch was in flight at once does not depend on how fast this machine submits it."""
    yield from _serve("sim", "--step-ms", "50")


@pytest.fixture(scope="session")
def sim_no_auto_tools_url() -> Iterator[str]:
    """Like a vLLM started without --enable-auto-tool-choice: tool_choice "auto" is a 400."""
    yield from _serve("sim", "--no-auto-tool-choice")


@pytest.fixture(scope="session")
def local_llm_url() -> Iterator[str]:
    """The real local model (llama.cpp + SmolLM2-135M). Loading takes a few seconds."""
    yield from _serve("local-llm", "--parallel", "4", timeout=300)


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """A real redis-server for the whole session; tests that share it use their own key ids or flush it."""
    with redis_server() as url:
        yield url


@pytest.fixture
def redis_clean(redis_url: str) -> str:
    """``redis_url``, emptied before the test."""
    import redis

    client = redis.Redis.from_url(redis_url)
    client.flushall()
    client.close()
    return redis_url
