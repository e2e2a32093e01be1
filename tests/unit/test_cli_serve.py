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
