"""A batch of typed predictions against an upstream with a fixed delay, per revision, side by side.

    .venv/bin/python benchmarks/batch_delay_ab.py --roots /tmp/base . [--batch 1000] [--delay-ms 200] [--rounds 3]

One simulator (CPU 0, with this process) answers every request after ``--delay-ms`` (its fault
``slow_first_token_ms``: the first token is held back, then the answer streams at once); one gateway
per root (a checkout; CPU 1, log level WARNING). Rounds alternate the roots' order. Each round sends
one ``POST /predict`` with a ``batch`` of ``--batch`` items to each gateway. The ideal is the delay
times the waves the gateway's slots allow: ceil(batch / max_inflight_per_upstream (256)) x delay,
0.8 s for 1,000 items at 0.2 s. Reported: wall time, its ratio to the ideal, gateway CPU per item.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks._common import cpu_for, free_port, machine, pin_self, proc_cpu_s  # noqa: E402

SLOTS = 256


def wait(url: str, timeout: float = 60) -> None:
    import urllib.request

    end = time.monotonic() + timeout
    while time.monotonic() < end:
        with contextlib.suppress(OSError):
            urllib.request.urlopen(url, timeout=5).read()
            return
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not come up")


def start(args: list[str], root: str, role: str, env: dict[str, str]) -> subprocess.Popen:
    cpu = cpu_for(role)
    cmd = [sys.executable, *args]
    if cpu is not None:
        cmd = ["taskset", "-c", str(cpu), *cmd]
    return subprocess.Popen(cmd, cwd=root, env={**os.environ, "PYTHONPATH": root, **env},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


async def one_batch(url: str, pid: int, body: bytes) -> tuple[float, float, int]:
    import aiohttp

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600)) as s:
        cpu0, t0 = proc_cpu_s(pid), time.perf_counter()
        async with s.post(url, data=body, headers={"content-type": "application/json"}) as r:
            data = await r.json()
        return time.perf_counter() - t0, proc_cpu_s(pid) - cpu0, int(data.get("succeeded") or 0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--roots", nargs="+", required=True)
    ap.add_argument("--batch", type=int, default=1000)
    ap.add_argument("--delay-ms", type=float, default=200)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    pin_self("harness")
    print(f"machine: {machine()}", flush=True)
    roots = [os.path.abspath(r) for r in args.roots]
    items = [{"question": f"Question number {i}: what is {i} plus {i}?"} for i in range(args.batch)]
    body = json.dumps({"signature": "question -> answer", "batch": items}).encode()
    warm = json.dumps({"signature": "question -> answer", "batch": items[:SLOTS]}).encode()
    ideal = math.ceil(args.batch / SLOTS) * args.delay_ms / 1000
    env = {"VGATE_LOG_LEVEL": "WARNING", "VGATE_LOG_FORMAT": "json"}
    sp = free_port()
    procs = [start(["-m", "app.sim", "--port", str(sp), "--fault", f"slow_first_token_ms={args.delay_ms}"],
                   roots[0], "harness", {})]
    gws: dict[str, tuple[int, str]] = {}
    try:
        for root in roots:
            gp = free_port()
            p = start(["-m", "app.cli", "serve", "--upstream", f"http://127.0.0.1:{sp}", "--port", str(gp)],
                      root, "target", env)
            procs.append(p)
            gws[root] = (p.pid, f"http://127.0.0.1:{gp}")
        wait(f"http://127.0.0.1:{sp}/health")
        for pid, url in gws.values():
            wait(url + "/healthz")
            asyncio.run(one_batch(url + "/predict", pid, warm))  # warm-up: connections, caches
        runs: dict[str, list[tuple[float, float, int]]] = {r: [] for r in roots}
        for rnd in range(args.rounds):
            for root in roots if rnd % 2 == 0 else roots[::-1]:
                pid, url = gws[root]
                wall, cpu, ok = asyncio.run(one_batch(url + "/predict", pid, body))
                runs[root].append((wall, cpu, ok))
                print(f"  round {rnd + 1} {root}: {wall:.2f} s ({wall / ideal:.2f}x ideal), "
                      f"gw CPU {cpu * 1000 / args.batch:.3f} ms/item, ok {ok}/{args.batch}", flush=True)
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(30)
    print(f"\nbatch of {args.batch}, upstream delay {args.delay_ms:.0f} ms, ideal {ideal:.2f} s "
          f"({math.ceil(args.batch / SLOTS)} waves of {SLOTS})\n")
    print("| root | wall s (median) | x ideal | range | gw CPU ms/item (median) | ok |")
    print("|---|---|---|---|---|---|")
    for root, rs in runs.items():
        walls = sorted(r[0] for r in rs)
        cpus = sorted(r[1] for r in rs)
        med, cmed = walls[len(walls) // 2], cpus[len(cpus) // 2]
        print(f"| {root} | {med:.2f} | {med / ideal:.2f} | {walls[0]:.2f}–{walls[-1]:.2f} | "
              f"{cmed * 1000 / args.batch:.3f} | {min(r[2] for r in rs)}/{args.batch} |")


if __name__ == "__main__":
    main()
