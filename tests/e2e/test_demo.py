"""`vgate demo` (what `make demo` runs) with the real local model: however it is stopped, it leaves
nothing running, and it stops when one of its two servers dies.

Each test runs the demo in its own session (its own process group), signals only the demo process,
as make, systemd, Docker or a CI runner would, and always SIGKILLs the group at the end.
"""

from __future__ import annotations

import os
import signal

import pytest

from tests.demo_helpers import alive, answers, children, healthy, kill_all, output, start_demo, wait_until
from tests.support import free_port

START_S = 240  # model load (a few seconds) plus two Python servers starting on a busy machine
STOP_S = 30  # the demo's grace period is 10 s, then SIGKILL


def _up(tmp_path):
    port, llm_port = free_port(), free_port()
    demo = start_demo(tmp_path, "--port", str(port), "--llm-port", str(llm_port))
    urls = (f"http://127.0.0.1:{port}/healthz", f"http://127.0.0.1:{llm_port}/health")

    def ready():
        assert demo.poll() is None, f"demo exited {demo.returncode}:\n{output(demo, tmp_path)}"
        return healthy(urls[0]) and len(children(demo)) == 2

    try:
        wait_until(ready, START_S, "the demo's gateway answers /healthz", interval=0.25)
        assert healthy(urls[1])
    except BaseException:
        kill_all(demo)
        raise
    return demo, children(demo), urls


def _gone(pids, urls) -> bool:
    return not any(alive(p) for p in pids) and not any(answers(u) for u in urls)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT], ids=lambda s: s.name)
def test_a_signal_to_the_demo_stops_both_servers(tmp_path, sig):
    demo, kids, urls = _up(tmp_path)
    try:
        os.kill(demo.pid, sig)  # the demo only, not its group
        rc = demo.wait(STOP_S)
        wait_until(lambda: _gone(kids.values(), urls), STOP_S, f"children {kids} gone and ports closed")
        assert rc == -sig, f"demo exit {rc}:\n{output(demo, tmp_path)}"
    finally:
        kill_all(demo, list(kids.values()))


def test_children_do_not_outlive_a_demo_killed_hard(tmp_path):
    demo, kids, urls = _up(tmp_path)
    try:
        os.kill(demo.pid, signal.SIGKILL)
        demo.wait(STOP_S)
        wait_until(lambda: _gone(kids.values(), urls), STOP_S, f"children {kids} gone after SIGKILL of the demo")
    finally:
        kill_all(demo, list(kids.values()))


@pytest.mark.parametrize(("role", "name"), [("local-llm", "llama.cpp server"), ("serve", "gateway")])
def test_a_dying_child_stops_the_demo_with_an_error_naming_it(tmp_path, role, name):
    demo, kids, urls = _up(tmp_path)
    try:
        os.kill(kids[role], signal.SIGKILL)
        rc = demo.wait(STOP_S)
        wait_until(lambda: _gone(kids.values(), urls), STOP_S, f"children {kids} gone")
        text = output(demo, tmp_path)
        assert rc not in (0, None) and rc > 0, f"demo exit {rc}:\n{text}"
        assert name in text and "SIGKILL" in text, text
    finally:
        kill_all(demo, list(kids.values()))
