"""`vgate serve` refuses to start with a clear message, not a traceback: a taken port, contradictory settings."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

from tests.support import ROOT


def _serve(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "app.cli", "serve", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=60, env={**os.environ, **(env or {})})


def test_a_taken_port_is_refused_naming_it_and_the_flag():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        r = _serve("--port", str(port), "--upstream", "http://127.0.0.1:9")
    assert r.returncode == 1
    assert f"port {port}" in r.stderr and "--port" in r.stderr and "Traceback" not in r.stderr


def test_contradictory_settings_stop_the_start_naming_both_values():
    r = _serve("--port", "1", env={"VGATE_AGENT_MAX_STEPS": "40"})
    assert r.returncode == 1
    assert "agent_max_steps=40" in r.stderr and "agent_max_steps_limit=32" in r.stderr
    assert "Traceback" not in r.stderr


def test_several_workers_without_a_shared_store_are_refused_in_one_line():
    env = {k: v for k, v in os.environ.items() if k != "VGATE_REDIS_URL"}
    r = subprocess.run([sys.executable, "-m", "app.cli", "serve", "--workers", "2", "--upstream", "http://127.0.0.1:9"],
                       cwd=ROOT, capture_output=True, text=True, timeout=60, env=env)
    assert r.returncode == 1
    assert r.stderr.strip() == r.stderr.strip().splitlines()[0]  # one line, no traceback
    assert "--workers 2" in r.stderr and "VGATE_REDIS_URL" in r.stderr


def test_the_workers_get_the_settings_as_validated_secrets_included(monkeypatch):
    from app.cli import _settings_from_json, _settings_json
    from app.settings import Settings

    settings = Settings(port=1234, upstream_url="http://up:8000/", upstream_api_key="upstream-secret",
                        redis_url="redis://:pw@r:6379/0", api_keys=[{"id": "a", "key": "k" * 16, "rpm": 5}],
                        prices={"m": {"input_per_1k": 1, "output_per_1k": 2}}, workers=2)
    monkeypatch.setenv("VGATE_PORT", "4321")  # read once, by the command line: not again by each worker
    again = _settings_from_json(_settings_json(settings))
    assert again == settings and again.port == 1234
    assert again.upstream_api_key.get_secret_value() == "upstream-secret"
    assert again.redis_url.get_secret_value() == "redis://:pw@r:6379/0"
    assert again.api_keys[0].key.get_secret_value() == "k" * 16
