"""The health wait refuses a port that something else holds, instead of talking to it."""

from __future__ import annotations

import subprocess
import sys

import pytest

from app.cli import wait_healthy
from tests.demo_helpers import healthy_impostor
from tests.support import ROOT, free_port, spawn


def test_spawn_on_a_taken_port_fails_instead_of_talking_to_the_other_server():
    port = free_port()
    with spawn(["sim", "--port", str(port)], port):
        with pytest.raises(RuntimeError, match=str(port)):
            with spawn(["sim", "--port", str(port)], port, timeout=30):
                pass


def test_wait_healthy_does_not_accept_an_answer_from_a_process_it_did_not_start():
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], cwd=ROOT)
    try:
        with healthy_impostor(port):
            with pytest.raises((RuntimeError, TimeoutError), match=str(port)):
                wait_healthy(f"http://127.0.0.1:{port}", 2, proc)
    finally:
        proc.kill()
        proc.wait()


def test_wait_healthy_reports_a_process_that_dies_after_health_answered():
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(0.5)"], cwd=ROOT)
    try:
        with healthy_impostor(port):
            with pytest.raises(RuntimeError, match="exited"):
                wait_healthy(f"http://127.0.0.1:{port}", 20, proc)
    finally:
        proc.kill()
        proc.wait()
