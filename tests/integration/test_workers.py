"""`vgate serve --workers 2`: two processes on the one port, one set of metrics (the totals of both),
the settings given once reaching both, and a SIGTERM that stops them all and leaves nothing behind."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families

from app.procs import die_with_parent, stop_process, wait_healthy
from tests.support import ROOT, free_port

pytestmark = pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="finds the workers through /proc (Linux)")

ROUTES = ("/predict", "/v1/chat/completions")
N = 200


@contextmanager
def serve(args: list[str], env: dict[str, str]) -> Iterator[tuple[str, subprocess.Popen, Path]]:
    """``vgate serve ARGS`` on a free port until the block ends: its URL, its process (the master) and
    the file its stderr goes to. (tests.support.spawn waits for /health, which the gateway does not serve.)"""
    port = free_port()
    full_env = {k: v for k, v in os.environ.items()
                if k not in ("PROMETHEUS_MULTIPROC_DIR", "prometheus_multiproc_dir", "VGATE_REDIS_URL")}
    full_env.update(env)
    with tempfile.NamedTemporaryFile(prefix="vgate-serve-", suffix=".log") as err:
        proc = subprocess.Popen([sys.executable, "-m", "app.cli", "serve", *args, "--port", str(port)], cwd=ROOT,
                                env=full_env, stdout=subprocess.DEVNULL, stderr=err, preexec_fn=die_with_parent())
        url = f"http://127.0.0.1:{port}"
        try:
            try:
                wait_healthy(url, 60, proc, path="/healthz")
            except (RuntimeError, TimeoutError) as e:
                raise type(e)(f"{e}\n--- its stderr:\n{Path(err.name).read_text()[-3000:]}") from None
            yield url, proc, Path(err.name)
        finally:
            stop_process(proc, grace_s=20)


def workers_of(master: int) -> set[int]:
    """The worker processes uvicorn started (multiprocessing's spawn; not its resource tracker)."""
    found = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == master and b"spawn_main" in cmdline:
            found.add(int(entry))
    return found


def wait_for_workers(master: int, n: int) -> set[int]:
    deadline = time.monotonic() + 30
    while len(pids := workers_of(master)) != n:
        assert time.monotonic() < deadline, f"{len(pids)} workers of {master}, not {n}"
        time.sleep(0.1)
    return pids


def worker_settings(pid: int) -> dict:
    """The settings a worker was started with (the variable the command line passes them in)."""
    for entry in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"):
        name, _, value = entry.partition(b"=")
        if name == b"_VGATE_WORKER_SETTINGS":
            return json.loads(value)
    raise AssertionError(f"worker {pid} has no _VGATE_WORKER_SETTINGS")


def summed(samples: list, name: str, label: str, values: tuple[str, ...] | None = None) -> float:
    return sum(s.value for s in samples if s.name == name and (values is None or s.labels.get(label) in values))


def scrape(url: str) -> list:
    r = httpx.get(f"{url}/metrics", timeout=10)
    assert r.status_code == 200
    return [s for family in text_string_to_metric_families(r.text) for s in family.samples]


def per_process(metrics_dir: Path, pid: int) -> list:
    """What one worker counted: its own files, merged alone."""
    with tempfile.TemporaryDirectory() as alone:
        for f in metrics_dir.glob(f"*_{pid}.db"):
            shutil.copy(f, alone)
        registry = CollectorRegistry()
        MultiProcessCollector(registry, alone)
        return [s for family in registry.collect() for s in family.samples]


async def send(url: str) -> list[int]:
    """N calls, half /predict and half the chat passthrough, from 16 clients at once; half of the clients
    open a new connection for every call, so the kernel hands connections to both workers."""
    calls = [("/predict", {"signature": "question -> answer", "inputs": {"question": f"q{i}"}}) if i % 2 else
             ("/v1/chat/completions", {"model": "sim-model", "messages": [{"role": "user", "content": f"m{i}"}]})
             for i in range(N)]
    statuses: list[int] = []

    async def client(k: int) -> None:
        limits = httpx.Limits(max_keepalive_connections=0) if k % 2 else httpx.Limits()
        async with httpx.AsyncClient(base_url=url, timeout=30, limits=limits) as c:
            while calls:
                path, body = calls.pop()
                statuses.append((await c.post(path, json=body)).status_code)

    await asyncio.gather(*(client(k) for k in range(16)))
    return statuses


def test_two_workers_serve_and_the_metrics_are_their_totals(sim_url, redis_url, tmp_path):
    metrics_dir = tmp_path / "prometheus"
    metrics_dir.mkdir()
    # An earlier run's file in the operator's directory: emptied at start, or its 1000 would count.
    subprocess.run([sys.executable, "-c", "from prometheus_client import Counter; Counter('vgate_requests', '', "
                    "['route', 'method', 'status']).labels('/predict', 'POST', '200').inc(1000)"],
                   env={**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)}, check=True)
    assert list(metrics_dir.glob("counter_*.db"))
    env = {"VGATE_REDIS_URL": redis_url, "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir), "VGATE_LOG_LEVEL": "WARNING"}
    with serve(["--workers", "2", "--upstream", sim_url], env) as (url, master, _):
        pids = wait_for_workers(master.pid, 2)
        statuses = asyncio.run(send(url))
        assert statuses == [200] * N

        # A request is counted as its answer goes out, so the last ones may land just after the client has
        # them: scrape until the totals are N (or the deadline), then they must be exactly N.
        deadline = time.monotonic() + 10
        while True:
            samples = scrape(url)
            requests = summed(samples, "vgate_requests_total", "route", ROUTES)
            upstream = summed(samples, "vgate_upstream_requests_total", "outcome")
            if (requests, upstream) == (N, N) or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert requests == N and upstream == N
        ok = [s for s in samples if s.name == "vgate_requests_total" and s.labels.get("route") in ROUTES]
        assert {s.labels["status"] for s in ok} == {"200"}
        for gauge in ("vgate_store_up", "vgate_upstream_up"):  # set at start, and by function: both workers' 1
            assert [s.value for s in samples if s.name == gauge] == [1.0]

        # Both workers served: each one's own files hold a share, and the shares add up.
        shares = {pid: summed(per_process(metrics_dir, pid), "vgate_requests_total", "route", ROUTES) for pid in pids}
        assert all(share > 0 for share in shares.values()) and sum(shares.values()) == N, shares
        # The settings given to the command line reached both, as validated there; the in-flight cap shared out.
        for pid in pids:
            given = worker_settings(pid)
            assert given["upstream_url"] == sim_url and given["redis_url"] == redis_url and given["workers"] == 2
            assert given["max_inflight_per_upstream"] == 128  # 256 between two

        # A worker killed is replaced; its in-flight gauges leave the sums, what it counted stays.
        dead = min(pids)
        os.kill(dead, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while dead in (now := workers_of(master.pid)) or len(now) != 2:
            assert time.monotonic() < deadline, "the killed worker was not replaced"
            time.sleep(0.1)
        wait_healthy(url, 30, path="/healthz")
        samples = scrape(url)
        assert summed(samples, "vgate_requests_total", "route", ROUTES) == N
        assert not list(metrics_dir.glob(f"gauge_live*_{dead}.db"))
        assert list(metrics_dir.glob(f"counter_{dead}.db"))


def test_sigterm_stops_every_worker_and_removes_the_metrics_directory(sim_url, redis_url):
    with serve(["--workers", "2", "--upstream", sim_url], {"VGATE_REDIS_URL": redis_url}) as (url, master, err):
        pids = wait_for_workers(master.pid, 2)
        started = next(json.loads(line) for line in err.read_text().splitlines()
                       if line.startswith("{") and json.loads(line).get("event") == "workers_start")
        metrics_dir = Path(started["metrics_dir"])
        assert httpx.post(f"{url}/predict", json={"signature": "question -> answer",
                                                  "inputs": {"question": "q"}}, timeout=30).status_code == 200
        # Each worker writes its live-gauge file when its app is built; /healthz answering means one worker is up,
        # not both, so wait (bounded) for the other's.
        deadline = time.monotonic() + 30
        while (owners := {int(f.stem.rsplit("_", 1)[1]) for f in metrics_dir.glob("gauge_livesum_*.db")}) != pids:
            assert time.monotonic() < deadline and owners <= pids, (owners, pids)
            time.sleep(0.1)
        assert (metrics_dir.stat().st_mode & 0o777) == 0o700  # private
        master.send_signal(signal.SIGTERM)
        assert master.wait(30) == 0
        for pid in pids:
            assert not os.path.exists(f"/proc/{pid}"), f"worker {pid} outlived the master"
        assert not metrics_dir.exists()


def test_one_worker_keeps_its_metrics_in_memory_even_with_a_multiprocess_directory_set(sim_url, tmp_path):
    with serve(["--upstream", sim_url], {"PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}) as (url, master, _):
        assert workers_of(master.pid) == set()
        assert httpx.post(f"{url}/predict", json={"signature": "question -> answer",
                                                  "inputs": {"question": "q"}}, timeout=30).status_code == 200
        samples = scrape(url)
        assert summed(samples, "vgate_requests_total", "route", ("/predict",)) == 1
        assert list(tmp_path.iterdir()) == []



def test_workers_sweeping_dead_workers_at_the_same_moment_do_not_fail_a_scrape(tmp_path):
    """Scrapes answered by several workers at once all find the dead workers' live-gauge files; all
    but one then find them gone, which must not fail the scrape (prometheus-client does not expect it)."""
    import subprocess
    import sys

    for pid in range(2**22 + 1, 2**22 + 400):  # above the default pid_max: no such processes
        (tmp_path / f"gauge_livesum_{pid}.db").write_bytes(b"")
    code = ("import sys, time; from app.metrics import sweep_dead_processes; "
            "time.sleep(max(0, float(sys.argv[2]) - time.time())); sweep_dead_processes(sys.argv[1])")
    start = str(time.time() + 1.0)
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path), start], stderr=subprocess.PIPE)
             for _ in range(4)]
    errors = [p.communicate(timeout=30)[1].decode() for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0, 0], errors
    assert not list(tmp_path.iterdir())
