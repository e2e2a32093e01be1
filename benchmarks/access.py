"""What API keys and limits cost per request, side by side in one run (issue 8).

    .venv/bin/python benchmarks/access.py                    # ~2 min on 2 cores
    .venv/bin/python benchmarks/access.py --path /predict --concurrency 1 64 --rounds 4

Five gateways (``vgate serve``, all pinned to CPU 1, idle but for the one under load) in front of
one zero-latency simulator, with the load generator and a redis-server (Debian's) on CPU 0:

- ``open``: no keys (the gateway as before);
- ``key``: a configured key, no limits (authentication, and usage recorded in memory);
- ``limits``: the key with every limit (rpm, tpm, max_concurrent, daily and monthly budgets) set
  too high to refuse, kept in memory: the request's admission and each call's reservation and
  settlement;
- ``key+redis``: the key without limits, usage recorded in Redis;
- ``limits+redis``: every limit, in Redis (two Lua scripts per call and one per request).

Read the ``x base`` columns (ratios to ``open``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

KEY = "vg-bench-" + "k" * 32
HUGE = {"rpm": 10**9, "tpm": 10**12, "max_concurrent": 10**6, "budget_usd_daily": 1e9, "budget_usd_monthly": 1e9}
CHAT = json.dumps({"messages": [{"role": "user", "content": "Say something short."}], "max_tokens": 8}).encode()


@contextlib.contextmanager
def redis_server(port: int):
    """Debian's redis-server on the harness CPU, in memory only."""
    from benchmarks._common import cpu_for

    exe = shutil.which("redis-server")
    if exe is None:
        sys.exit("redis-server is not installed (Debian: apt-get install redis-server)")
    with tempfile.TemporaryDirectory() as d:
        cmd = [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", d]
        cpu = cpu_for("harness")
        if cpu is not None:
            cmd = ["taskset", "-c", str(cpu), *cmd]
        p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            time.sleep(0.3)
            yield f"redis://127.0.0.1:{port}/0"
        finally:
            p.terminate()
            p.wait(5)


def start_harness(stack: contextlib.ExitStack, path: str, role: str):
    """Redis and the simulator (pinned for ``role``, or not with "any"), and the body for ``path``."""
    from benchmarks import gateway as g
    from benchmarks._common import free_port, spawn_cmd

    redis_url = stack.enter_context(redis_server(free_port()))
    sim_port = free_port()
    sim = stack.enter_context(spawn_cmd("sim", [sys.executable, "-m", "app.cli", "sim", "--port", str(sim_port)],
                                        sim_port, role=role))
    return redis_url, sim, CHAT if path.startswith("/v1/") else g.predict_body()


def variants(redis_url: str) -> dict[str, dict[str, str]]:
    key = {"id": "bench", "key": KEY}
    keys = lambda **lim: json.dumps([{**key, **lim}])  # noqa: E731
    return {
        "open": {},
        "key": {"VGATE_API_KEYS": keys()},
        "limits": {"VGATE_API_KEYS": keys(**HUGE)},
        "key+redis": {"VGATE_API_KEYS": keys(), "VGATE_REDIS_URL": redis_url},
        "limits+redis": {"VGATE_API_KEYS": keys(**HUGE), "VGATE_REDIS_URL": redis_url},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    from benchmarks.gateway_ab import report, run_rounds, side_by_side_args

    args = side_by_side_args(ap, [1, 64], 0.7, 2.0, path=True)

    from benchmarks import gateway as g
    from benchmarks._common import free_port, machine, pin_self, proc_threads, spawn

    pin_self("harness")
    print(f"machine: {machine()}", flush=True)
    started = time.monotonic()
    with contextlib.ExitStack() as stack:
        redis_url, sim, body = start_harness(stack, args.path, "harness")
        gws = {}
        for name, env in variants(redis_url).items():
            port = free_port()
            gws[name] = stack.enter_context(spawn(name, ["serve", "--upstream", sim.url, "--port", str(port)], port,
                                                  role="target", env={**g.GW_ENV, **env}, health="/healthz"))
        auth = {name: {"authorization": f"Bearer {KEY}"} for name in gws if name != "open"}
        cells = run_rounds({n: (p.popen.pid, p.url + args.path) for n, p in gws.items()}, body, sim.popen.pid, args,
                           headers=auth)
        threads = {n: proc_threads(p.popen.pid) for n, p in gws.items()}
    report(cells, list(gws), threads, "gateway", args, started, title=args.path)


if __name__ == "__main__":
    main()
