"""A/B of gateway revisions, measured side by side in one run: ``POST /predict`` through each.

    .venv/bin/python benchmarks/gateway_ab.py --revs ba22300 .          # ~75 s on 2 cores
    .venv/bin/python benchmarks/gateway_ab.py --revs HEAD~3 HEAD . --concurrency 64 --rounds 6

Each revision is a gateway process (``vgate serve``, CPU 1) run from a temporary ``git worktree`` of
it (``.`` is this checkout as it is, uncommitted changes included), all in front of one zero-latency
simulator (CPU 0, with the load generator). All gateways run at once, idle but for the one under
load; rounds alternate the order, so the machine's noise falls on every revision alike. Read the
``x base`` columns (ratios to the first revision), not the absolute numbers.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@contextlib.contextmanager
def checkouts(revs: list[str]):
    """A directory per revision: a detached worktree, or this checkout for ``.``."""
    tmp = tempfile.mkdtemp(prefix="vgate-ab-")
    dirs: dict[str, str] = {}
    try:
        for rev in revs:
            if rev == ".":
                dirs[rev] = ROOT
                continue
            path = os.path.join(tmp, rev.replace("/", "_").replace("~", "-"))
            subprocess.run(["git", "-C", ROOT, "worktree", "add", "--detach", "-q", path, rev], check=True)
            dirs[rev] = path
        yield dirs
    finally:
        for path in dirs.values():
            if path != ROOT:
                subprocess.run(["git", "-C", ROOT, "worktree", "remove", "--force", path], check=False)
        shutil.rmtree(tmp, ignore_errors=True)


# --------------------------------------------------------------------------- side by side


def run_rounds(targets: dict[str, tuple[int, str]], body: bytes, sim_pid: int, args,
               headers: dict[str, dict[str, str]] | None = None) -> list:
    """``args.rounds`` rounds over every concurrency and target (name -> (gateway pid, url)), the
    targets' order reversed every other round so the machine's drift falls on all alike."""
    import uvloop

    from benchmarks import gateway as g

    class Opts:
        rounds, warmup, duration = 1, args.warmup, args.duration

    names = list(targets)
    cells = []
    for rnd in range(args.rounds):
        for c in args.concurrency:
            for v in names if rnd % 2 == 0 else names[::-1]:
                Opts.concurrency = [c]
                pid, url = targets[v]
                target = g.Target(v, url, body, pid, headers=(headers or {}).get(v))
                cells.append(uvloop.run(g.single_rows([target], sim_pid, Opts, first_round=rnd))[0])
    return cells


def side_by_side_args(ap, concurrency: list[int], warmup: float, duration: float, path: bool = False):
    """The options every side-by-side script takes; parsed."""
    if path:
        ap.add_argument("--path", default="/v1/chat/completions", help="/v1/chat/completions (default) or /predict")
    ap.add_argument("--concurrency", type=int, nargs="+", default=concurrency)
    ap.add_argument("--warmup", type=float, default=warmup)
    ap.add_argument("--duration", type=float, default=duration)
    ap.add_argument("--rounds", type=int, default=4)
    return ap.parse_args()


def report(cells: list, names: list[str], threads: dict[str, int], label: str, args, started: float,
           title: str = "") -> None:
    if title:
        print(f"\n{title}")
    print(summary(cells, names, args.concurrency, threads, label))
    print(f"\n{args.rounds} round(s) x ({args.warmup} s warm-up + {args.duration} s measured) per cell; "
          f"total {time.monotonic() - started:.0f} s")


def summary(cells: list, names: list[str], concurrency: list[int], threads: dict[str, int], label: str) -> str:
    """The table: per target and concurrency, throughput, latency and gateway CPU, as ratios to the first."""
    from benchmarks import gateway as g
    from benchmarks._common import f, pct, table

    rows = []
    for c in concurrency:
        base = None
        for v in names:
            runs = [x for x in cells if x.target == v and x.concurrency == c]
            n, w = sum(r.requests for r in runs), sum(r.window_s for r in runs)
            cpu = sum(r.cpu["gateway"] for r in runs) / n * 1000
            per_round = sorted(r.cpu["gateway"] / r.requests * 1000 for r in runs)
            base = base or (n / w, cpu)
            lat = [x for r in runs for x in r.latencies]
            ov = [x for r in runs for x in r.overheads]
            rows.append([v, c, n, f(n / w, 0), f(n / w / base[0]), f(pct(lat, 50) * 1000),
                         f(pct(lat, 99) * 1000), f(pct(ov, 50)), f(cpu, 3), f(cpu / base[1]),
                         f"{per_round[0]:.2f}–{per_round[-1]:.2f}", threads[v],
                         f"{max(max(g.others_pct(r)) for r in runs):.0f}"])
    return table([label, "conc", "requests", "req/s", "x base", "p50 ms", "p99 ms", "overhead hdr p50 ms",
                  "gw CPU ms/req", "x base", "CPU/req range over rounds", "threads after", "others % max"], rows)


# --------------------------------------------------------------------------- driver


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--revs", nargs="+", default=["ba22300", "."],
                    help='git revisions to compare; "." is this checkout as it is (default: ba22300 .)')
    args = side_by_side_args(ap, [1, 64], 0.7, 2.0)

    from benchmarks import gateway as g
    from benchmarks._common import cpu_for, free_port, machine, pin_self, proc_threads, spawn, wait_http

    pin_self("harness")
    print(f"machine: {machine()}", flush=True)
    started = time.monotonic()
    sim_port = free_port()
    procs: dict[str, tuple[subprocess.Popen, str]] = {}
    cells = []
    with checkouts(args.revs) as dirs, spawn("sim", ["sim", "--port", str(sim_port)], sim_port,
                                             role="harness") as sim:
        try:
            for v in args.revs:
                port = free_port()
                # run from the revision's directory: ``-m`` puts it first on sys.path, before the
                # editable install of this checkout
                cmd = [sys.executable, "-m", "app.cli", "serve", "--upstream", sim.url, "--port", str(port)]
                cpu = cpu_for("target")
                if cpu is not None:
                    cmd = ["taskset", "-c", str(cpu), *cmd]
                p = subprocess.Popen(cmd, cwd=dirs[v], env={**os.environ, **g.GW_ENV},
                                     stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True)
                procs[v] = (p, f"http://127.0.0.1:{port}")
                wait_http(procs[v][1] + "/healthz", p)

            cells = run_rounds({v: (p.pid, url + "/predict") for v, (p, url) in procs.items()},
                               g.predict_body(), sim.pid, args)
            threads = {v: proc_threads(p.pid) for v, (p, _) in procs.items()}
        finally:
            for p, _ in procs.values():
                if p.poll() is None:
                    p.send_signal(signal.SIGINT)
                    try:
                        p.wait(10)
                    except subprocess.TimeoutExpired:
                        p.kill()

    print()
    report(cells, args.revs, threads, "revision", args, started)


if __name__ == "__main__":
    main()
