"""Helpers shared by the benchmark scripts: processes, CPU accounting, percentiles, tables.

Nothing here imports the gateway: the scripts stay runnable on their own with the project's venv.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLK_TCK = os.sysconf("SC_CLK_TCK")
NCPU = os.cpu_count() or 1


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def machine() -> str:
    model = platform.processor() or "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{model}, {NCPU} CPU(s), Python {platform.python_version()}, {platform.system()} {platform.release()}"


def cpu_for(role: str) -> int | None:
    """The CPU a role is pinned to: 'harness' (load generator + simulator) on CPU 0, 'target' on CPU 1.

    With fewer than two CPUs nothing is pinned (the numbers are then a lot noisier)."""
    if NCPU < 2 or not shutil.which("taskset") or role == "any":
        return None
    return {"harness": 0, "target": 1}[role]


def pin_self(role: str) -> None:
    cpu = cpu_for(role)
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})


def wait_http(url: str, proc: subprocess.Popen, timeout: float = 60) -> None:
    """Wait for ``url`` to answer 200 (plain sockets: no client library warmed up in this process)."""
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args} exited with {proc.returncode} before {url} answered")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.1)
    raise TimeoutError(f"{url} did not answer 200 within {timeout}s")


async def post_many(url: str, body: bytes, n: int, c: int, timeout: float = 600) -> int:
    """``n`` POSTs of ``body`` (JSON) to ``url`` from ``c`` closed-loop workers on one aiohttp session;
    the number answered 200."""
    import aiohttp

    ok, left = 0, n
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as s:
        async def worker() -> None:
            nonlocal ok, left
            while left > 0:
                left -= 1
                async with s.post(url, data=body, headers={"content-type": "application/json"}) as r:
                    await r.read()
                    ok += r.status == 200
        await asyncio.gather(*(worker() for _ in range(c)))
    return ok


@dataclass
class Proc:
    popen: subprocess.Popen
    url: str
    name: str

    @property
    def pid(self) -> int:
        return self.popen.pid


@contextmanager
def spawn(name: str, args: Sequence[str], port: int, *, role: str, env: dict[str, str] | None = None,
          health: str = "/health", log_path: str | None = None) -> Iterator[Proc]:
    """Start ``vgate <args>`` (pinned with taskset for ``role``), wait for ``health``, stop it after.

    taskset execs the program, so the Popen pid is the server's own pid (used for /proc CPU and RSS)."""
    cmd = [sys.executable, "-m", "app.cli", *args]
    cpu = cpu_for(role)
    if cpu is not None:
        cmd = ["taskset", "-c", str(cpu), *cmd]
    out = open(log_path, "wb") if log_path else subprocess.DEVNULL
    popen = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, **(env or {})}, stdout=out,
                             stderr=subprocess.STDOUT, start_new_session=True)
    proc = Proc(popen, f"http://127.0.0.1:{port}", name)
    try:
        wait_http(proc.url + health, popen)
        yield proc
    finally:
        if popen.poll() is None:
            popen.send_signal(signal.SIGINT)  # uvicorn: graceful
            try:
                popen.wait(10)
            except subprocess.TimeoutExpired:
                popen.kill()
                popen.wait(5)
        if log_path:
            out.close()


def proc_cpu_s(pid: int) -> float:
    """utime + stime of a process (all its threads) and of its live children (``--workers``), in seconds."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return 0.0
    # fields[0] is 'state' (field 3); utime and stime are fields 14 and 15.
    total = (int(fields[11]) + int(fields[12])) / CLK_TCK
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            children = [int(c) for c in f.read().split()]
    except OSError:
        children = []
    return total + sum(proc_cpu_s(c) for c in children)


def cpu_busy_s(cpu: int | None) -> float:
    """Seconds CPU ``cpu`` was not idle (steal included: time the hypervisor gave to someone else).

    Minus the CPU time of our own processes pinned there, it shows how much other load shared the
    core during a measurement (this machine is shared; such load makes absolute numbers drift)."""
    if cpu is None:
        return float("nan")
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith(f"cpu{cpu} "):
                v = [int(x) for x in line.split()[1:]]
                user, nice, system, idle, iowait, irq, softirq, steal = v[:8]
                return (user + nice + system + irq + softirq + steal) / CLK_TCK
    return float("nan")


def proc_rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def proc_threads(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("Threads:"):
                return int(line.split()[1])
    return -1


def pct(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100) of unsorted values; nan when empty."""
    if not values:
        return float("nan")
    s = sorted(values)
    k = max(0, min(len(s) - 1, int(round(p / 100 * len(s) + 0.5)) - 1))
    return s[k]


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A Markdown table (pastes into RESULTS.md as is)."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]

    def line(r: list[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |"

    out = [line(cells[0]), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out += [line(r) for r in cells[1:]]
    return "\n".join(out)


def f(x: float, nd: int = 2) -> str:
    return "–" if x != x else f"{x:.{nd}f}"  # nan -> dash


@contextmanager
def spawn_cmd(name: str, cmd: Sequence[str], port: int, *, role: str, env: dict[str, str] | None = None,
              health: str = "/health", cwd: str = ROOT, log_path: str | None = None,
              timeout: float = 60) -> Iterator[Proc]:
    """Like ``spawn`` for any command (not only ``vgate``); stops its whole process group.

    The command runs in a new session, pinned with taskset for ``role``; SIGINT to the group, then SIGKILL."""
    cpu = cpu_for(role)
    if cpu is not None:
        cmd = ["taskset", "-c", str(cpu), *cmd]
    out = open(log_path, "wb") if log_path else subprocess.DEVNULL
    popen = subprocess.Popen(list(cmd), cwd=cwd, env={**os.environ, **(env or {})}, stdout=out,
                             stderr=subprocess.STDOUT, start_new_session=True)
    proc = Proc(popen, f"http://127.0.0.1:{port}", name)
    try:
        wait_http(proc.url + health, popen, timeout)
        yield proc
    finally:
        for sig, wait in ((signal.SIGINT, 10), (signal.SIGKILL, 5)):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(popen.pid, sig)
            try:
                popen.wait(wait)
                break
            except subprocess.TimeoutExpired:
                pass
        if log_path:
            out.close()


def proc_tree(pid: int) -> list[int]:
    """``pid`` and all its live descendants (a server's workers), from the ppid fields in /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as fh:
                    ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, ()))
    return out


def tree_cpu_s(pid: int) -> float:
    """utime + stime of ``pid`` and its live descendants, in seconds."""
    total = 0.0
    for p in proc_tree(pid):
        with contextlib.suppress(OSError):
            total += proc_cpu_s(p)
    return total
