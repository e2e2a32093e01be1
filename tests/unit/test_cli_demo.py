"""`vgate demo` and the health wait refuse a port that something else holds, instead of talking to it.

These start no model: a taken port must be refused before anything is loaded.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from app.demo import DEMO_CURLS
from app.procs import wait_healthy
from tests.demo_helpers import healthy_impostor, kill_all, output, start_demo
from tests.support import ROOT, free_port, spawn


def test_demo_text_says_the_tiny_model_is_often_wrong_and_names_the_llm_port_flag():
    text = DEMO_CURLS.format(host="127.0.0.1", port=8080, llm_port=8000)
    assert "135M" in text and "often wrong" in text and "types" in text
    assert "--llm-port" in text and "--port" in text


@pytest.mark.parametrize("taken", ["--port", "--llm-port"])
def test_demo_refuses_a_taken_port_naming_it_and_its_flag(tmp_path, taken):
    port, llm_port = free_port(), free_port()
    held = port if taken == "--port" else llm_port
    with healthy_impostor(held) as seen:  # a stale demo still answering /health and /healthz
        demo = start_demo(tmp_path, "--port", str(port), "--llm-port", str(llm_port))
        try:
            rc = demo.wait(60)
        except subprocess.TimeoutExpired:
            rc = None
        finally:
            kill_all(demo)
    text = output(demo, tmp_path)
    assert rc not in (None, 0), f"demo exit {rc}, output:\n{text}"
    assert f"port {held}" in text and f" {taken}" in text, text  # " --port" is no part of " --llm-port"
    assert "vgate is up" not in text, text
    assert seen == [], "the demo talked to the server that holds the port"


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
