"""Where the gateway's CPU goes per request: cProfile inside ``vgate serve``, under load.

    .venv/bin/python benchmarks/profile_gateway.py                     # POST /predict, 10,000 at c=64
    .venv/bin/python benchmarks/profile_gateway.py --route chat --requests 20000 --top 40

A zero-latency simulator and the load generator on CPU 0, the gateway on CPU 1 (log level WARNING) with
cProfile switched on by SIGUSR1 after 500 warm-up requests and off (stats dumped) by SIGUSR2 after the
measured ones. Prints the functions by cumulative time. cProfile inflates call-heavy code (every call
and coroutine resumption is timed), so read the shares between rows, not the times; the CPU per request
without the profiler is what ``gateway_ab.py`` and ``compare.py`` measure.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import pstats
import signal
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from benchmarks._common import free_port, pin_self, post_many, spawn, spawn_cmd  # noqa: E402

BODIES = {
    "predict": ("/predict", {"signature": "question -> answer",
                             "inputs": {"question": "What is the capital of France?"}}),
    "chat": ("/v1/chat/completions", {"model": "sim-model", "messages": [{"role": "user", "content": "Say hi"}],
                                      "max_tokens": 16}),
}
# Run in the gateway's process: cProfile on SIGUSR1, off and dumped on SIGUSR2, then `vgate serve`.
SHIM = """import cProfile, signal, sys
p = cProfile.Profile()
signal.signal(signal.SIGUSR1, lambda *a: p.enable())
signal.signal(signal.SIGUSR2, lambda *a: (p.disable(), p.dump_stats(sys.argv[1])))
from app.cli import main
main(sys.argv[2:])
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--route", choices=sorted(BODIES), default="predict")
    ap.add_argument("--requests", type=int, default=10_000)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--top", type=int, default=60)
    args = ap.parse_args()
    pin_self("harness")
    path, body = BODIES[args.route]
    raw = json.dumps(body).encode()
    stats = os.path.join(tempfile.mkdtemp(prefix="vgate-prof-"), "gateway.prof")
    sp, gp = free_port(), free_port()
    env = {"VGATE_LOG_LEVEL": "WARNING", "VGATE_LOG_FORMAT": "json"}
    gw_cmd = [sys.executable, "-c", SHIM, stats, "serve", "--upstream", f"http://127.0.0.1:{sp}", "--port", str(gp)]
    with spawn("sim", ["sim", "--port", str(sp)], sp, role="harness"), \
            spawn_cmd("vgate", gw_cmd, gp, role="target", env=env, health="/healthz") as gw:
        url = gw.url + path
        asyncio.run(post_many(url, raw, 500, args.concurrency))
        os.kill(gw.pid, signal.SIGUSR1)
        ok = asyncio.run(post_many(url, raw, args.requests, args.concurrency))
        os.kill(gw.pid, signal.SIGUSR2)
        for _ in range(100):
            if os.path.exists(stats):
                break
            time.sleep(0.1)
        time.sleep(0.5)  # the dump finishing
    print(f"{args.route}: {ok}/{args.requests} answered 200 at c={args.concurrency}; stats in {stats}\n")
    pstats.Stats(stats).sort_stats("cumulative").print_stats(args.top)


if __name__ == "__main__":
    main()
