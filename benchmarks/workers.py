"""Throughput of ``vgate serve --workers 1`` against ``--workers 2`` on this machine (issue 8).

    .venv/bin/python benchmarks/workers.py                    # ~2 min on 2 cores

Both gateways run at once (idle but for the one under load), each with Redis (``VGATE_REDIS_URL``,
Debian's redis-server), in front of one zero-latency simulator. Nothing is pinned: a second worker is
worth only what the machine's cores give it beside the load generator, the simulator and Redis,
which share them (on 2 cores the harness takes a large part). Rounds alternate the order. CPU per
request counts the master and all its workers.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    from benchmarks.gateway_ab import report, run_rounds, side_by_side_args

    args = side_by_side_args(ap, [64, 256], 1.0, 3.0, path=True)

    from benchmarks import gateway as g
    from benchmarks._common import free_port, machine, proc_threads, spawn_cmd
    from benchmarks.access import start_harness

    print(f"machine: {machine()}", flush=True)
    started = time.monotonic()
    with contextlib.ExitStack() as stack:
        redis_url, sim, body = start_harness(stack, args.path, "any")
        gws = {}
        for n in (1, 2):
            port = free_port()
            cmd = [sys.executable, "-m", "app.cli", "serve", "--upstream", sim.url, "--port", str(port),
                   "--workers", str(n)]
            gws[f"{n} worker{'s' if n > 1 else ''}"] = stack.enter_context(spawn_cmd(
                f"workers-{n}", cmd, port, role="any", env={**g.GW_ENV, "VGATE_REDIS_URL": redis_url},
                health="/healthz"))
        cells = run_rounds({n: (p.popen.pid, p.url + args.path) for n, p in gws.items()}, body, sim.popen.pid, args)
        threads = {n: proc_threads(p.popen.pid) for n, p in gws.items()}
    report(cells, list(gws), threads, "gateway", args, started, title=args.path)


if __name__ == "__main__":
    main()
