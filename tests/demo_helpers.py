"""Helpers for the `vgate demo` tests: run the demo in its own session, find its children, poll with deadlines."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx

from tests.support import ROOT


def wait_until(predicate: Callable[[], bool], timeout: float, what: str, interval: float = 0.1) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {what}")
        time.sleep(interval)


def _stat(pid: int) -> tuple[str, int] | None:
    """(state, process group) of a pid, None if there is no such process."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw.rsplit(")", 1)[1].split()
    return fields[0], int(fields[2])


def alive(pid: int) -> bool:
    """Running, not gone and not a zombie waiting to be reaped."""
    st = _stat(pid)
    return st is not None and st[0] not in ("Z", "X")


def cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
    except OSError:
        return []


def group_members(pgid: int) -> list[int]:
    """Live processes of a process group (the demo's session: the demo and its children)."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            st = _stat(int(entry))
            if st is not None and st[1] == pgid and st[0] not in ("Z", "X"):
                pids.append(int(entry))
    return pids


def children(demo: subprocess.Popen) -> dict[str, int]:
    """The demo's two children by role: {"local-llm": pid, "serve": pid} (those that exist yet)."""
    found = {}
    for pid in group_members(demo.pid):
        args = cmdline(pid)
        for role in ("local-llm", "serve"):
            if pid != demo.pid and role in args:
                found[role] = pid
    return found


def answers(url: str) -> bool:
    """Anything at all answers HTTP there."""
    try:
        httpx.get(url, timeout=1)
        return True
    except httpx.HTTPError:
        return False


def healthy(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def start_demo(tmp_path: Path, *args: str) -> subprocess.Popen:
    """`python -m app.cli demo ARGS` in its own session (so it is its own process group), output to files."""
    out = open(tmp_path / "demo.out", "wb")  # closed by kill_all
    err = open(tmp_path / "demo.err", "wb")
    env = {**os.environ, "VGATE_LOG_FORMAT": "console"}
    proc = subprocess.Popen([sys.executable, "-m", "app.cli", "demo", *args], cwd=ROOT, env=env,
                            stdin=subprocess.DEVNULL, stdout=out, stderr=err, start_new_session=True)
    proc.files = (out, err)  # type: ignore[attr-defined]
    return proc


def output(proc: subprocess.Popen, tmp_path: Path) -> str:
    for f in getattr(proc, "files", ()):
        if not f.closed:
            f.flush()
    return (tmp_path / "demo.out").read_text(errors="replace") + (tmp_path / "demo.err").read_text(errors="replace")


def kill_all(proc: subprocess.Popen, extra_pids: list[int] = ()) -> None:
    """Cleanup whatever happened: SIGKILL the demo's process group and any pid it started."""
    for pid in [*extra_pids]:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(10)
    for f in getattr(proc, "files", ()):
        f.close()


@contextlib.contextmanager
def healthy_impostor(port: int) -> Iterator[list[str]]:
    """An HTTP server on ``port`` that answers 200 ``{}`` to every GET: a stale server from an earlier run.
    Yields the list of paths it was asked for."""
    seen: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            seen.append(self.path)
            body = b'{"data": []}' if self.path.startswith("/v1/models") else b"{}"
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield seen
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
