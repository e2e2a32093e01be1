"""End to end: ``POST /predict`` through ``vgate serve`` in front of the simulator.

    .venv/bin/python benchmarks/gateway.py            # ~2 min on 2 cores
    .venv/bin/python benchmarks/gateway.py --quick    # ~45 s smoke run

What it starts (free loopback ports, pinned with taskset when there are 2+ CPUs):

- CPU 0: ``vgate sim`` (zero latency) and this process, the load generator (aiohttp, one event
  loop, ``c`` workers each sending one request at a time, keep-alive connections);
- CPU 1: ``vgate serve --upstream <sim>`` (uvicorn, uvloop + httptools, one worker),
  ``VGATE_LOG_LEVEL=WARNING``.

Single-request rows, concurrency 1, 16, 64 (``--concurrency``): ``{"signature": "question -> answer",
"inputs": {"question": ...}}``. Per cell a warm-up, then a measured window; requests completing in
the window count. Columns:

- requests/s, p50/p99 of the latency the load generator sees;
- ``x-vgate-overhead-ms`` (the gateway's own report: request time minus time with an upstream
  call in progress), p50/p99;
- ``lat - lm``: client-seen latency minus the ``latency_ms`` the gateway reports for its upstream
  call, p50: the gateway's overhead as seen from outside (it includes time the request waited in
  the gateway's event loop and socket buffers, which the header cannot see);
- gateway CPU per request (``/proc/<pid>/stat`` utime+stime over the window / requests), and the
  CPU use of the gateway, the simulator and the load generator in % of one core (if the gateway is
  near 100 % it is the bottleneck; if CPU 0's processes are, the harness is);
- ``others``: CPU taken on the two cores by processes that are not ours (the machine is shared).

A reference row per concurrency sends the exact upstream request the gateway makes (same messages,
``response_format``, streaming) straight to the simulator: the harness's own ceiling. One more row
(c=16 only) runs a second, otherwise identical gateway at the default log level INFO (two JSON log
lines per request, written to /dev/null here): what the default logging costs. All rows of one
concurrency run back to back, the order reversed every round.

Batch row: a second simulator with ``--latency-model`` (continuous batching, max_num_seqs 256) and
a second gateway; one ``POST /predict`` with a ``batch`` of 1,000 items. Reported: wall time, items
succeeded, the simulator's ``peak_num_requests_running`` (``/sim/stats``, reset before), the
overhead header, gateway CPU for the whole batch, RSS. Reference: the same 1,000 upstream requests
sent directly with 256 in flight (what a perfect client would get from this simulator).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import time
from dataclasses import dataclass, field

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks._common import (  # noqa: E402
    cpu_busy_s,
    cpu_for,
    f,
    free_port,
    machine,
    pct,
    pin_self,
    proc_cpu_s,
    proc_rss_mb,
    proc_threads,
    spawn,
    table,
)

SIGNATURE = "question -> answer"
QUESTION = "What is the capital of France?"
GW_ENV = {"VGATE_LOG_LEVEL": "WARNING", "VGATE_LOG_FORMAT": "json"}
GW_ROW = "POST /predict via gateway"
INFO_ROW = "same, gateway at log level INFO (default)"
DIRECT_ROW = "direct to sim (same upstream request)"


def predict_body() -> bytes:
    return json.dumps({"signature": SIGNATURE, "inputs": {"question": QUESTION}}).encode()


def upstream_body(question: str = QUESTION) -> bytes:
    """The upstream request the gateway builds for one /predict (for the direct reference rows)."""
    from app.services.adapter import build_messages, response_format
    from app.services.signature import parse_signature
    from app.settings import Settings

    sig = parse_signature(SIGNATURE)
    return json.dumps({
        "model": "sim-model",
        "messages": build_messages(sig, {"question": question}),
        "response_format": response_format(sig),
        "max_tokens": Settings().predict_default_max_tokens,
        "stream": True,
        "stream_options": {"include_usage": True},
    }).encode()


@dataclass
class Cell:
    target: str
    concurrency: int
    requests: int = 0
    errors: int = 0
    window_s: float = 0.0
    latencies: list[float] = field(default_factory=list)
    overheads: list[float] = field(default_factory=list)  # x-vgate-overhead-ms, ms
    outside: list[float] = field(default_factory=list)  # client latency - reported upstream latency, ms
    cpu: dict[str, float] = field(default_factory=dict)  # seconds over the window, by process
    busy: dict[str, float] = field(default_factory=dict)  # seconds each core was busy


@dataclass
class Target:
    name: str  # row label
    url: str
    body: bytes
    gateway_pid: int | None  # None: straight to the simulator
    only: tuple[int, ...] | None = None  # concurrencies to run it at (None: all)
    headers: dict[str, str] | None = None  # sent with every request (an API key)


async def load(session, target: Target, concurrency: int, warmup: float, duration: float, sim_pid: int) -> Cell:
    """Closed-loop load: ``concurrency`` workers, each one request at a time."""
    gateway = target.gateway_pid is not None
    cell = Cell(target.name, concurrency)
    pids = {"sim": sim_pid, **({"gateway": target.gateway_pid} if gateway else {})}
    loop = asyncio.get_running_loop()
    t0 = loop.time() + warmup
    t1 = t0 + duration
    headers = {"content-type": "application/json", **(target.headers or {})}
    marks: dict[str, dict[str, float]] = {}

    def snapshot() -> dict[str, float]:
        snap = {name: proc_cpu_s(pid) for name, pid in pids.items()}
        snap["loadgen"] = time.process_time()
        snap["core1"] = cpu_busy_s(cpu_for("target"))
        snap["core0"] = cpu_busy_s(cpu_for("harness"))
        snap["t"] = loop.time()
        return snap

    async def worker() -> None:
        while loop.time() < t1:
            s = time.perf_counter()
            try:
                async with session.post(target.url, data=target.body, headers=headers) as resp:
                    data = await resp.read()
                    status = resp.status
                    overhead = resp.headers.get("x-vgate-overhead-ms")
            except Exception:  # noqa: BLE001 - counted, reported
                if t0 <= loop.time() < t1:
                    cell.errors += 1
                continue
            lat = time.perf_counter() - s
            now = loop.time()
            if not t0 <= now < t1:
                continue
            if status != 200:
                cell.errors += 1
                continue
            cell.requests += 1
            cell.latencies.append(lat)
            if gateway:
                cell.overheads.append(float(overhead) if overhead else float("nan"))
                lm_ms = json.loads(data).get("latency_ms")
                if lm_ms is not None:
                    cell.outside.append(lat * 1000 - lm_ms)

    async def clock() -> None:
        await asyncio.sleep(max(0.0, t0 - loop.time()))
        marks["a"] = snapshot()
        await asyncio.sleep(max(0.0, t1 - loop.time()))
        marks["b"] = snapshot()

    await asyncio.gather(clock(), *(worker() for _ in range(concurrency)))
    a, b = marks["a"], marks["b"]
    cell.window_s = b["t"] - a["t"]
    cell.cpu = {k: b[k] - a[k] for k in (*pids, "loadgen")}
    cell.busy = {k: b[k] - a[k] for k in ("core0", "core1")}
    return cell


def others_pct(cell: Cell) -> tuple[float, float]:
    """CPU % that processes other than ours took on core 1 (gateway) and core 0 (sim + load gen)."""
    w = cell.window_s
    ours1 = cell.cpu.get("gateway", 0.0)
    ours0 = cell.cpu["sim"] + cell.cpu["loadgen"]
    return max(0.0, cell.busy["core1"] - ours1) / w * 100, max(0.0, cell.busy["core0"] - ours0) / w * 100


async def single_rows(targets: list[Target], sim_pid: int, args, first_round: int = 0) -> list[Cell]:
    import aiohttp

    cells: list[Cell] = []
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=60)) as session:
        # Warm-up: the first call resolves the model, imports lazily, fills caches.
        for t in targets:
            for _ in range(20):
                async with session.post(t.url, data=t.body,
                                        headers={"content-type": "application/json", **(t.headers or {})}) as r:
                    await r.read()
                    if r.status != 200:
                        raise RuntimeError(f"{t.url} answered {r.status}: {await r.text()}")
        for rnd in range(args.rounds):
            for c in args.concurrency:
                for t in targets if rnd % 2 == 0 else targets[::-1]:
                    if t.only is not None and c not in t.only:
                        continue
                    cell = await load(session, t, c, args.warmup, args.duration, sim_pid)
                    cells.append(cell)
                    o1, o0 = others_pct(cell)
                    w = cell.window_s
                    gw = f"gw cpu {cell.cpu['gateway'] / w * 100:3.0f}%" if "gateway" in cell.cpu else "gw cpu   -"
                    print(f"  round {first_round + rnd + 1} c={c:<3d} {cell.requests / w:6.0f} req/s  "
                          f"p50 {pct(cell.latencies, 50) * 1000:6.2f} ms  {gw}  sim {cell.cpu['sim'] / w * 100:3.0f}%  "
                          f"loadgen {cell.cpu['loadgen'] / w * 100:3.0f}%  others c1/c0 {o1:3.0f}%/{o0:3.0f}%  "
                          f"errors {cell.errors}  {t.name}", flush=True)
    return cells


async def batch_row(gw_url: str, sim_url: str, gw_pid: int, n: int, cap: int) -> dict:
    import aiohttp

    items = [{"question": f"Question number {i}: what is {i} plus {i}?"} for i in range(n)]
    body = json.dumps({"signature": SIGNATURE, "batch": items}).encode()
    out: dict = {}
    timeout = aiohttp.ClientTimeout(total=600)
    async with aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=0)) as session:
        async with session.post(gw_url + "/predict", data=predict_body(),
                                headers={"content-type": "application/json"}) as r:  # warm-up
            await r.read()

        # Through the gateway.
        async with session.post(sim_url + "/sim/reset") as r:
            await r.read()
        cpu0 = proc_cpu_s(gw_pid)
        s = time.perf_counter()
        async with session.post(gw_url + "/predict", data=body, headers={"content-type": "application/json"}) as r:
            data = await r.json()
            out["status"] = r.status
            out["overhead_ms"] = float(r.headers.get("x-vgate-overhead-ms", "nan"))
        out["wall_s"] = time.perf_counter() - s
        out["gw_cpu_s"] = proc_cpu_s(gw_pid) - cpu0
        out["succeeded"] = data.get("succeeded")
        out["failed"] = data.get("failed")
        async with session.get(sim_url + "/sim/stats") as r:
            out["stats"] = await r.json()
        out["rss_mb"] = proc_rss_mb(gw_pid)
        out["threads"] = proc_threads(gw_pid)

        # Reference: the same upstream requests straight to the simulator, `cap` in flight.
        async with session.post(sim_url + "/sim/reset") as r:
            await r.read()
        bodies = [upstream_body(it["question"]) for it in items]
        sem = asyncio.Semaphore(cap)
        ok = 0

        async def one(b: bytes) -> None:
            nonlocal ok
            async with sem:
                async with session.post(sim_url + "/v1/chat/completions", data=b,
                                        headers={"content-type": "application/json"}) as r:
                    await r.read()
                    ok += r.status == 200

        s = time.perf_counter()
        await asyncio.gather(*(one(b) for b in bodies))
        out["direct_wall_s"] = time.perf_counter() - s
        out["direct_ok"] = ok
        async with session.get(sim_url + "/sim/stats") as r:
            out["direct_stats"] = await r.json()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 16, 64])
    ap.add_argument("--warmup", type=float, default=1.5, help="seconds per cell before measuring")
    ap.add_argument("--duration", type=float, default=5.0, help="measured seconds per cell and round")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--batch", type=int, default=1000, help="items in the batch row (0: skip it)")
    ap.add_argument("--no-direct", dest="direct", action="store_false", help="skip the direct reference rows")
    ap.add_argument("--no-info-row", dest="info_row", action="store_false",
                    help="skip the row of a gateway at the default log level INFO (c=16)")
    ap.add_argument("--quick", action="store_true", help="1 round, 0.5 s warm-up, 2 s measured, batch of 300")
    ap.add_argument("--json", default=None, help="also write the raw results to this file")
    args = ap.parse_args()
    if args.quick:
        args.rounds, args.warmup, args.duration, args.batch = 1, 0.5, 2.0, 300

    pin_self("harness")
    import uvloop

    print(f"machine: {machine()}", flush=True)
    started = time.monotonic()
    sim_port, gw_port = free_port(), free_port()
    info_port = free_port()
    with contextlib.ExitStack() as stack:
        sim = stack.enter_context(spawn("sim", ["sim", "--port", str(sim_port)], sim_port, role="harness"))
        gw = stack.enter_context(spawn("gateway", ["serve", "--upstream", sim.url, "--port", str(gw_port)], gw_port,
                                       role="target", env=GW_ENV, health="/healthz"))
        targets = [Target(GW_ROW, gw.url + "/predict", predict_body(), gw.pid)]
        if args.info_row:
            # The default log level (INFO): two JSON lines per request (access + upstream call), to /dev/null.
            gwi = stack.enter_context(spawn("gateway", ["serve", "--upstream", sim.url, "--port", str(info_port)],
                                            info_port, role="target", env={**GW_ENV, "VGATE_LOG_LEVEL": "INFO"},
                                            health="/healthz"))
            targets.append(Target(INFO_ROW, gwi.url + "/predict", predict_body(), gwi.pid, only=(16,)))
        if args.direct:
            targets.append(Target(DIRECT_ROW, sim.url + "/v1/chat/completions", upstream_body(), None))
        cells = uvloop.run(single_rows(targets, sim.pid, args))
        rss, threads = proc_rss_mb(gw.pid), proc_threads(gw.pid)

    batch = None
    if args.batch:
        sim_port, gw_port = free_port(), free_port()
        with spawn("sim", ["sim", "--port", str(sim_port), "--latency-model"], sim_port, role="harness") as sim, \
                spawn("gateway", ["serve", "--upstream", sim.url, "--port", str(gw_port)], gw_port, role="target",
                      env=GW_ENV, health="/healthz") as gw:
            batch = uvloop.run(batch_row(gw.url, sim.url, gw.pid, args.batch, 256))

    # ------------------------------------------------------------------ tables
    rows = []
    for c in args.concurrency:
        for target in (GW_ROW, INFO_ROW, DIRECT_ROW):
            runs = [x for x in cells if x.target == target and x.concurrency == c]
            if not runs:
                continue
            n = sum(r.requests for r in runs)
            w = sum(r.window_s for r in runs)
            rates = [r.requests / r.window_s for r in runs]
            lat = [x for r in runs for x in r.latencies]
            ov = [x for r in runs for x in r.overheads]
            outside = [x for r in runs for x in r.outside]
            cpu = {k: sum(r.cpu[k] for r in runs) for k in runs[0].cpu}
            oth = [others_pct(r) for r in runs]
            has_gw = "gateway" in cpu
            gw_col = [f(cpu["gateway"] / n * 1000, 3) if has_gw else "–",
                      f(cpu["gateway"] / w * 100, 0) if has_gw else "–"]
            rows.append([
                target, c, n, f(sum(rates) / len(rates), 0),
                f(max(rates) / min(rates) if min(rates) else float("nan")),
                f(pct(lat, 50) * 1000), f(pct(lat, 99) * 1000),
                f(pct(ov, 50)) if ov else "–", f(pct(ov, 99)) if ov else "–",
                f(pct(outside, 50)) if outside else "–",
                *gw_col, f(cpu["sim"] / w * 100, 0), f(cpu["loadgen"] / w * 100, 0),
                f"{max(o[0] for o in oth):.0f}/{max(o[1] for o in oth):.0f}",
                sum(r.errors for r in runs),
            ])
    headers = ["target", "conc", "requests", "req/s", "spread", "p50 ms", "p99 ms", "overhead hdr p50 ms",
               "overhead hdr p99 ms", "lat - lm p50 ms", "gw CPU ms/req", "gw CPU %", "sim CPU %",
               "loadgen CPU %", "others % c1/c0", "errors"]
    print()
    print(table(headers, rows))
    print(f"\ngateway after the single-request rows: RSS {rss:.0f} MB, {threads} threads")
    if batch:
        st, dst = batch["stats"], batch["direct_stats"]
        brows = [
            [f"POST /predict, batch of {args.batch}", batch["wall_s"], f"{batch['succeeded']}/{args.batch}",
             st["peak_num_requests_running"], st["requests_total"], f(batch["overhead_ms"]),
             f(batch["gw_cpu_s"] * 1000 / args.batch, 3), f(batch["rss_mb"], 0)],
            [f"direct to sim, {args.batch} requests, 256 in flight", batch["direct_wall_s"],
             f"{batch['direct_ok']}/{args.batch}", dst["peak_num_requests_running"], dst["requests_total"],
             "–", "–", "–"],
        ]
        for r in brows:
            r[1] = f(r[1], 2)
        print()
        print(table(["batch (sim --latency-model)", "wall s", "ok", "peak_num_requests_running",
                     "sim requests", "overhead hdr ms", "gw CPU ms/item", "gw RSS MB"], brows))
    worst = max(max(others_pct(c)) for c in cells)
    if worst > 10:
        print(f"\nWARNING: processes other than ours took up to {worst:.0f}% of a pinned core during a cell: "
              "absolute numbers are depressed and noisy; compare rows of this run only, or rerun when quiet.")
    print(f"\n{args.rounds} round(s) x ({args.warmup} s warm-up + {args.duration} s measured) per cell; "
          f"total {time.monotonic() - started:.0f} s")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"cells": [{k: v for k, v in vars(c).items() if k not in ("latencies", "overheads", "outside")}
                                 for c in cells], "rss_mb": rss, "threads": threads, "batch": batch}, fh, indent=1)


if __name__ == "__main__":
    main()
