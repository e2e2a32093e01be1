"""Instructions per ``POST /predict`` in the gateway process, counted by valgrind's callgrind: a figure
that does not move with the machine's load (CPU time does, on a shared VM without hardware counters).

    .venv/bin/python benchmarks/predict_instructions.py [--requests 300] [--concurrency 8] [--root DIR ...]

Per root (a checkout; default this one): a zero-latency simulator, and ``vgate serve`` in front of
it under ``valgrind --tool=callgrind --instr-atstart=no`` at log level WARNING. After a warm-up
(50 requests) counting is switched on (``callgrind_control -i on``), ``--requests`` requests go out
``--concurrency`` at a time, counting goes off, and the instructions (Ir, the dumps' ``totals``) per
request are printed.
Under valgrind the gateway runs ~50x slower, so timeouts are raised; the count includes the event
loop, uvicorn, the middleware and the upstream client, everything the process executes.
"""

from __future__ import annotations

import argparse
import asyncio
import glob
import json
import os
import re
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks._common import free_port, post_many  # noqa: E402

QUESTION = "What is the capital of France?"
BODY = json.dumps({"signature": "question -> answer", "inputs": {"question": QUESTION}}).encode()


def wait(url: str, timeout: float = 300) -> None:
    import urllib.request

    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            urllib.request.urlopen(url, timeout=5).read()
            return
        except OSError:
            time.sleep(0.5)
    raise RuntimeError(f"{url} did not come up")


def measure(root: str, n: int, c: int) -> float:
    py = sys.executable
    env = {**os.environ, "PYTHONPATH": root, "VGATE_LOG_LEVEL": "WARNING", "VGATE_LOG_FORMAT": "json",
           "VGATE_REQUEST_TIMEOUT_S": "300", "VGATE_READ_TIMEOUT_S": "300"}
    sp, gp = free_port(), free_port()
    out = tempfile.mkdtemp(prefix="vgate-cg-")
    sim = subprocess.Popen([py, "-m", "app.sim", "--port", str(sp)], cwd=root, env=env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    gw = subprocess.Popen(["valgrind", "--tool=callgrind", "--instr-atstart=no",
                           f"--callgrind-out-file={out}/cg.%p", py, "-m", "app.cli", "serve", "--upstream",
                           f"http://127.0.0.1:{sp}", "--port", str(gp)], cwd=root, env=env,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait(f"http://127.0.0.1:{sp}/health")
        wait(f"http://127.0.0.1:{gp}/healthz")
        url = f"http://127.0.0.1:{gp}/predict"
        asyncio.run(post_many(url, BODY, 50, c))
        subprocess.run(["callgrind_control", "-i", "on", str(gw.pid)], check=True, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
        ok = asyncio.run(post_many(url, BODY, n, c))
        subprocess.run(["callgrind_control", "-i", "off", str(gw.pid)], check=True, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
        subprocess.run(["callgrind_control", "-d", str(gw.pid)], check=True, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
        if ok != n:
            raise RuntimeError(f"{n - ok} of {n} requests failed")
        total = 0
        for path in glob.glob(f"{out}/cg.*"):
            with open(path) as fh:
                for line in fh:  # the "summary:" line of a dump made by callgrind_control reads 0
                    m = re.match(r"totals: (\d+)", line)
                    if m:
                        total += int(m.group(1))
        return total / n
    finally:
        for p in (gw, sim):
            p.terminate()
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=300)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--root", nargs="+", default=[os.path.dirname(os.path.dirname(os.path.abspath(__file__)))])
    args = ap.parse_args()
    base = None
    for root in args.root:
        ir = measure(root, args.requests, args.concurrency)
        base = base or ir
        print(f"{root}: {ir / 1e6:.3f} M instructions per /predict (x base {ir / base:.2f}), "
              f"{args.requests} requests, c={args.concurrency}", flush=True)


if __name__ == "__main__":
    main()
