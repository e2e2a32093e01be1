"""A/B of candidate gateway fixes, measured side by side before anyone edits the gateway.

    .venv/bin/python benchmarks/gateway_ab.py                       # ~75 s on 2 cores
    .venv/bin/python benchmarks/gateway_ab.py --variants "" inline_deps --concurrency 64 --rounds 6

Each variant is a gateway process (``vgate serve``, CPU 1) started through this file with a set of
monkeypatches (a comma-separated list; "" is the unpatched baseline). All variants run at once, idle
but for the one under load, in front of one zero-latency simulator (CPU 0, with the load generator);
rounds alternate the order. A patch is a stand-in for a code change, not the change itself:

- ``inline_deps``: FastAPI calls sync dependencies inline instead of through the thread pool,
  which is what declaring the trivial getters of ``app/routers/deps.py`` as ``async def`` does;
- ``tenacity_fast``: the LM client's first attempt runs outside tenacity's ``AsyncRetrying``
  (the retry machinery is entered only after a retryable failure);
- ``log_filter``: structlog drops below-level events before its processors run.

Once a fix lands, the patch becomes a no-op or fails loudly; delete it here then.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

PATCHES = ("inline_deps", "tenacity_fast", "log_filter")


# --------------------------------------------------------------------------- patched gateway


def _apply(patches: set[str]) -> None:
    unknown = patches - set(PATCHES)
    if unknown:
        raise SystemExit(f"unknown patch(es): {sorted(unknown)}")
    if "inline_deps" in patches:
        import fastapi.dependencies.utils as fdu

        async def inline(func, *args, **kwargs):
            return func(*args, **kwargs)

        if not hasattr(fdu, "run_in_threadpool"):
            raise SystemExit("inline_deps: fastapi.dependencies.utils.run_in_threadpool is gone")
        fdu.run_in_threadpool = inline
    if "tenacity_fast" in patches:
        from app.services import lm

        original = lm.LMClient._open_with_retries

        async def fast(self, body, rid, headers, label, deadline):
            try:
                opened = await self._open_once(body, rid, headers, deadline)
                opened.attempts = 1
                return opened
            except lm._AttemptFailed as failed:
                if not failed.retry:
                    raise failed.error from failed
            return await original(self, body, rid, headers, label, deadline)

        lm.LMClient._open_with_retries = fast
    if "log_filter" in patches:
        import structlog

        import app.logging.setup as setup
        import app.main

        configure = setup.configure_logging

        def configure_filtered(fmt="json", level="INFO"):
            configure(fmt, level)
            structlog.configure(processors=[structlog.stdlib.filter_by_level, *structlog.get_config()["processors"]])

        app.main.configure_logging = configure_filtered


def serve(argv: list[str]) -> None:
    _apply(set(filter(None, os.environ.get("VGATE_AB_PATCHES", "").split(","))))
    from app.cli import main

    main(argv)


# --------------------------------------------------------------------------- driver


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variants", nargs="+", default=["", "inline_deps", "inline_deps,tenacity_fast"],
                    help='comma-separated patch sets; "" is the baseline')
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 64])
    ap.add_argument("--warmup", type=float, default=0.7)
    ap.add_argument("--duration", type=float, default=2.0)
    ap.add_argument("--rounds", type=int, default=4)
    args = ap.parse_args()

    import uvloop

    from benchmarks import gateway as g
    from benchmarks._common import (
        cpu_for,
        f,
        free_port,
        machine,
        pct,
        pin_self,
        proc_threads,
        spawn,
        table,
        wait_http,
    )

    pin_self("harness")
    print(f"machine: {machine()}", flush=True)
    started = time.monotonic()
    sim_port = free_port()
    procs: dict[str, tuple[subprocess.Popen, str]] = {}
    cells = []
    with spawn("sim", ["sim", "--port", str(sim_port)], sim_port, role="harness") as sim:
        try:
            for v in args.variants:
                port = free_port()
                cmd = [sys.executable, os.path.abspath(__file__), "--serve", "serve", "--upstream", sim.url,
                       "--port", str(port)]
                cpu = cpu_for("target")
                if cpu is not None:
                    cmd = ["taskset", "-c", str(cpu), *cmd]
                p = subprocess.Popen(cmd, env={**os.environ, **g.GW_ENV, "VGATE_AB_PATCHES": v},
                                     stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True)
                procs[v] = (p, f"http://127.0.0.1:{port}")
                wait_http(procs[v][1] + "/healthz", p)

            class Opts:
                rounds, warmup, duration = 1, args.warmup, args.duration

            for rnd in range(args.rounds):
                for c in args.concurrency:
                    for v in args.variants if rnd % 2 == 0 else args.variants[::-1]:
                        Opts.concurrency = [c]
                        p, url = procs[v]
                        target = g.Target(v or "baseline", url + "/predict", g.predict_body(), p.pid)
                        cells.append(uvloop.run(g.single_rows([target], sim.pid, Opts, first_round=rnd))[0])
            threads = {v: proc_threads(p.pid) for v, (p, _) in procs.items()}
        finally:
            for p, _ in procs.values():
                if p.poll() is None:
                    p.send_signal(signal.SIGINT)
                    try:
                        p.wait(10)
                    except subprocess.TimeoutExpired:
                        p.kill()

    rows = []
    for c in args.concurrency:
        base = None
        for v in args.variants:
            runs = [x for x in cells if x.target == (v or "baseline") and x.concurrency == c]
            n, w = sum(r.requests for r in runs), sum(r.window_s for r in runs)
            cpu = sum(r.cpu["gateway"] for r in runs) / n * 1000
            per_round = sorted(r.cpu["gateway"] / r.requests * 1000 for r in runs)
            base = base or (n / w, cpu)
            lat = [x for r in runs for x in r.latencies]
            ov = [x for r in runs for x in r.overheads]
            rows.append([v or "baseline", c, n, f(n / w, 0), f(n / w / base[0]), f(pct(lat, 50) * 1000),
                         f(pct(lat, 99) * 1000), f(pct(ov, 50)), f(cpu, 3), f(cpu / base[1]),
                         f"{per_round[0]:.2f}–{per_round[-1]:.2f}", threads[v],
                         f"{max(max(g.others_pct(r)) for r in runs):.0f}"])
    print()
    print(table(["patches", "conc", "requests", "req/s", "x base", "p50 ms", "p99 ms", "overhead hdr p50 ms",
                 "gw CPU ms/req", "x base", "CPU/req range over rounds", "threads after", "others % max"], rows))
    print(f"\n{args.rounds} round(s) x ({args.warmup} s warm-up + {args.duration} s measured) per cell; "
          f"total {time.monotonic() - started:.0f} s")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--serve":
        serve(sys.argv[2:])
    else:
        main()
