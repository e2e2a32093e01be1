"""Process and port helpers for the ``vgate`` command line, its demo and the tests.

Who holds a port (a bind probe, and on Linux the /proc socket tables), waiting for a server to be
healthy *and* to be the process we started, and starting and stopping child processes so that none
outlives its parent.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

# --- ports ---------------------------------------------------------------------------------------


def port_in_use(host: str, port: int) -> bool:
    """Whether a server could not bind ``host:port`` now because something else holds it.

    Binds with SO_REUSEADDR as uvicorn and llama.cpp do, so a socket left in TIME_WAIT does not count.
    Other bind errors (a host that is not local, a privileged port) are left for the server to report."""
    try:
        family, kind, proto, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                          flags=socket.AI_PASSIVE)[0]
    except socket.gaierror:
        return False
    with socket.socket(family, kind, proto) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(addr)
        except OSError as e:
            return e.errno == errno.EADDRINUSE
    return False


def refuse_taken_port(host: str, port: int, flag: str, what: str) -> None:
    """Exit 1 with a message naming the port and the flag that changes it, if the port is taken."""
    if port_in_use(host, port):
        sys.exit(f"{what}: port {port} on {host} is already in use (an earlier vgate demo or another "
                 f"server still running?). Stop that, or choose another port with {flag}.")


def _listening_inodes(port: int) -> set[str] | None:
    """Inodes of the TCP sockets listening on ``port`` (Linux /proc); None where /proc cannot tell."""
    inodes: set[str] = set()
    readable = False
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        readable = True
        for row in rows:
            f = row.split()
            if len(f) > 9 and f[3] == "0A" and int(f[1].rsplit(":", 1)[1], 16) == port:  # 0A: LISTEN
                inodes.add(f[9])
    return inodes if readable else None


def serves_port(pid: int, port: int) -> bool | None:
    """Whether process ``pid`` itself holds the socket listening on ``port``; None where that cannot be
    told (no /proc: not Linux)."""
    inodes = _listening_inodes(port)
    if inodes is None:
        return None
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except FileNotFoundError:
        return False
    except OSError:
        return None
    for fd in fds:
        with contextlib.suppress(OSError):
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
            if link.startswith("socket:[") and link[8:-1] in inodes:
                return True
    return False


# --- processes -----------------------------------------------------------------------------------


def how_it_ended(returncode: int) -> str:
    """How a process with this return code ended, as words: "exited with code 1", "was killed by SIGKILL"."""
    if returncode < 0:
        with contextlib.suppress(ValueError):
            return f"was killed by {signal.Signals(-returncode).name}"
        return f"was killed by signal {-returncode}"
    return f"exited with code {returncode}"


def wait_healthy(base_url: str, timeout: float, proc: subprocess.Popen | None = None, path: str = "/health") -> None:
    """Wait until ``base_url + path`` answers 200 (llama.cpp opens its port before the model is loaded).

    Given ``proc``, the process that should be serving there, an answer counts only while ``proc`` is
    alive and (on Linux) itself holds the listening port: a server left on that port by an earlier run
    answers at once, while ``proc`` is still starting and about to fail to bind."""
    import httpx

    port = httpx.URL(base_url).port
    deadline = time.monotonic() + timeout
    someone_else = False
    while True:
        if proc is not None and proc.poll() is not None:
            hint = f" (another server answers there: port {port} is taken)" if someone_else else ""
            raise RuntimeError(f"process {proc.pid} {how_it_ended(proc.returncode)} "
                               f"before {base_url} was healthy{hint}")
        if time.monotonic() >= deadline:
            break
        try:
            ok = httpx.get(base_url + path, timeout=2).status_code == 200
        except httpx.HTTPError:
            ok = False
        if ok:
            if proc is None:
                return
            owner = serves_port(proc.pid, port) if port is not None else None
            if proc.poll() is None and owner is not False:
                return
            someone_else = owner is False
        time.sleep(0.2)
    if someone_else:
        raise RuntimeError(f"{base_url}{path} answers, but not from process {proc.pid}: something else "
                           f"holds port {port}")
    raise TimeoutError(f"{base_url}{path} not healthy after {timeout}s")


def die_with_parent() -> Callable[[], None] | None:
    """A ``preexec_fn`` that has Linux SIGKILL the child when the process that started it dies, even by
    SIGKILL (prctl PR_SET_PDEATHSIG), so a server never outlives its demo or test run. None elsewhere.

    Linux sends it when the *thread* that started the child exits: start children from the main thread."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def preexec() -> None:  # runs in the child, between fork and exec
        pr_set_pdeathsig = 1
        if prctl(pr_set_pdeathsig, ctypes.c_ulong(signal.SIGKILL), ctypes.c_ulong(0), ctypes.c_ulong(0),
                 ctypes.c_ulong(0)) == 0 and os.getppid() != parent:
            os._exit(1)  # the parent died before prctl took effect: do not start orphaned

    return preexec


def stop_process(proc: subprocess.Popen, grace_s: float = 10) -> None:
    """SIGTERM, then SIGKILL if it has not exited within ``grace_s``."""
    stop_processes([proc], grace_s)


def stop_processes(procs: list[subprocess.Popen], grace_s: float = 10) -> None:
    """SIGTERM all at once, then SIGKILL those not exited within ``grace_s`` (one deadline for all)."""
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
    deadline = time.monotonic() + grace_s
    for proc in procs:
        try:
            proc.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
