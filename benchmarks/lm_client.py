"""The LM client alone against the zero-latency simulator: which transport under ``LMClient``?

    .venv/bin/python benchmarks/lm_client.py            # ~100 s on 2 cores
    .venv/bin/python benchmarks/lm_client.py --quick    # ~25 s smoke run

Starts ``vgate sim`` (zero latency) pinned to CPU 0, pins this process (the client under test) to
CPU 1, and for each concurrency runs, side by side in one process and one run:

- ``LMClient`` with its default transport (``httpx_aiohttp.AiohttpTransport``),
- ``LMClient`` with plain httpx (``httpx.AsyncHTTPTransport`` with the same limits),
- a reference floor: a bare ``aiohttp.ClientSession`` reading the same SSE stream (no LMClient,
  no httpx): what the call would cost with nothing but the HTTP client and ``json.loads``.

Every call is ``lm.chat([...], max_tokens=16)``, which the LM client always streams from the
upstream (16 content chunks + role chunk + usage chunk + [DONE]). Each cell: a fresh client, a
warm-up at the cell's concurrency, then a measured window; calls completing inside the window are
counted. Client CPU per call is this process's CPU time (``time.process_time``) over the window
divided by the calls completed in it; the simulator's CPU is read from /proc the same way, to show
whether the simulator (not the client) was the limit. Cells are run in ``--rounds`` rounds, the
order of the variants reversed every round; calls/s and CPU are the mean of the rounds,
percentiles are over all rounds' calls, ``spread`` is max/min calls/s over rounds, and
``others %`` is the most CPU that processes other than ours took on the client's / simulator's
core during a round (the machine is shared: read ratios, and distrust a row where it is high).
"""

from __future__ import annotations

import argparse
import asyncio
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
    spawn,
    table,
)

MESSAGES = [{"role": "user", "content": "Say hello"}]


@dataclass
class Cell:
    variant: str
    concurrency: int
    calls: int = 0
    errors: int = 0
    window_s: float = 0.0
    cpu_s: float = 0.0
    sim_cpu_s: float = 0.0
    busy_target_s: float = 0.0  # CPU 1 (client) not idle, whoever used it
    busy_harness_s: float = 0.0  # CPU 0 (simulator) not idle
    latencies: list[float] = field(default_factory=list)


# --------------------------------------------------------------------------- clients under test


def make_lm(variant: str, upstream: str):
    import httpx

    from app.metrics import Metrics
    from app.services.lm import LMClient
    from app.settings import Settings

    settings = Settings(upstream_url=upstream, log_level="WARNING", default_model="sim-model")
    transport = None
    if variant == "httpx":
        # The same limits LMClient gives its default transport.
        transport = httpx.AsyncHTTPTransport(limits=httpx.Limits(
            max_connections=settings.max_connections,
            max_keepalive_connections=settings.max_connections,
            keepalive_expiry=30,
        ))
    lm = LMClient(settings, Metrics(), transport=transport)

    async def call() -> None:
        r = await lm.chat(MESSAGES, max_tokens=16)
        if not r.content:
            raise RuntimeError("empty completion")

    return call, lm.aclose


def make_raw_aiohttp(upstream: str):
    import aiohttp

    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=512, keepalive_timeout=30))
    url = upstream + "/v1/chat/completions"
    body = json.dumps({"model": "sim-model", "messages": MESSAGES, "max_tokens": 16, "stream": True,
                       "stream_options": {"include_usage": True}}).encode()
    headers = {"content-type": "application/json", "accept": "application/json"}

    async def call() -> None:
        text = []
        async with session.post(url, data=body, headers=headers) as resp:
            if resp.status != 200:
                raise RuntimeError(f"status {resp.status}")
            async for line in resp.content:
                if line.startswith(b"data:"):
                    data = line[5:].strip()
                    if data == b"[DONE]":
                        break
                    chunk = json.loads(data)
                    for choice in chunk.get("choices") or ():
                        t = (choice.get("delta") or {}).get("content")
                        if t:
                            text.append(t)
        if not text:
            raise RuntimeError("empty completion")

    return call, session.close


VARIANTS = {
    "aiohttp": "LMClient + httpx-aiohttp transport (default)",
    "httpx": "LMClient + plain httpx (AsyncHTTPTransport)",
    "raw": "reference: bare aiohttp.ClientSession, no LMClient",
}


# --------------------------------------------------------------------------- one cell


async def run_cell(variant: str, concurrency: int, upstream: str, sim_pid: int, warmup: float,
                   duration: float) -> Cell:
    call, close = make_raw_aiohttp(upstream) if variant == "raw" else make_lm(variant, upstream)
    cell = Cell(variant, concurrency)
    loop = asyncio.get_running_loop()
    t_start = loop.time()
    t0, t1 = t_start + warmup, t_start + warmup + duration
    marks: dict[str, float] = {}

    async def worker() -> None:
        while loop.time() < t1:
            s = time.perf_counter()
            try:
                await call()
            except Exception:  # noqa: BLE001 - counted, reported
                if t0 <= loop.time() < t1:
                    cell.errors += 1
                continue
            now = loop.time()
            if t0 <= now < t1:
                cell.calls += 1
                cell.latencies.append(time.perf_counter() - s)

    async def clock() -> None:
        await asyncio.sleep(max(0.0, t0 - loop.time()))
        marks["cpu0"], marks["sim0"], marks["w0"] = time.process_time(), proc_cpu_s(sim_pid), loop.time()
        marks["bt0"], marks["bh0"] = cpu_busy_s(cpu_for("target")), cpu_busy_s(cpu_for("harness"))
        await asyncio.sleep(max(0.0, t1 - loop.time()))
        marks["cpu1"], marks["sim1"], marks["w1"] = time.process_time(), proc_cpu_s(sim_pid), loop.time()
        marks["bt1"], marks["bh1"] = cpu_busy_s(cpu_for("target")), cpu_busy_s(cpu_for("harness"))

    try:
        await asyncio.gather(clock(), *(worker() for _ in range(concurrency)))
    finally:
        await close()
    cell.window_s = marks["w1"] - marks["w0"]
    cell.cpu_s = marks["cpu1"] - marks["cpu0"]
    cell.sim_cpu_s = marks["sim1"] - marks["sim0"]
    cell.busy_target_s = marks["bt1"] - marks["bt0"]
    cell.busy_harness_s = marks["bh1"] - marks["bh0"]
    return cell


def others(cell: Cell) -> tuple[float, float]:
    """Percent of each core used by processes other than ours during the window (clamped at 0)."""
    w = cell.window_s
    return (max(0.0, cell.busy_target_s - cell.cpu_s) / w * 100,
            max(0.0, cell.busy_harness_s - cell.sim_cpu_s) / w * 100)


# --------------------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 64, 256])
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--warmup", type=float, default=1.0, help="seconds per cell before measuring")
    ap.add_argument("--duration", type=float, default=4.0, help="measured seconds per cell and round")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="1 round, 0.5 s warm-up, 1.5 s measured")
    ap.add_argument("--json", default=None, help="also write the raw cells to this file")
    args = ap.parse_args()
    if args.quick:
        args.rounds, args.warmup, args.duration = 1, 0.5, 1.5

    pin_self("target")
    import uvloop  # the gateway runs under uvloop; so does its LM client here

    from app.logging import configure_logging

    configure_logging("json", "WARNING")  # as `vgate serve` with VGATE_LOG_LEVEL=WARNING

    print(f"machine: {machine()}", flush=True)
    started = time.monotonic()
    port = free_port()
    cells: dict[tuple[str, int], list[Cell]] = {}
    with spawn("sim", ["sim", "--port", str(port)], port, role="harness") as sim:
        for rnd in range(args.rounds):
            order = args.variants if rnd % 2 == 0 else list(reversed(args.variants))
            for c in args.concurrency:
                for v in order:
                    cell = uvloop.run(run_cell(v, c, sim.url, sim.pid, args.warmup, args.duration))
                    cells.setdefault((v, c), []).append(cell)
                    print(f"  round {rnd + 1} {v:8s} c={c:<4d} {cell.calls / cell.window_s:8.0f} calls/s  "
                          f"cpu/call {cell.cpu_s / max(cell.calls, 1) * 1000:.3f} ms  "
                          f"client cpu {cell.cpu_s / cell.window_s * 100:3.0f}%  "
                          f"sim cpu {cell.sim_cpu_s / cell.window_s * 100:3.0f}%  "
                          f"others on cpu1/cpu0 {others(cell)[0]:3.0f}%/{others(cell)[1]:3.0f}%  errors {cell.errors}",
                          flush=True)

    rows = []
    base: dict[int, float] = {}
    for c in args.concurrency:
        for v in args.variants:
            runs = cells[(v, c)]
            rates = [r.calls / r.window_s for r in runs]
            rate = sum(rates) / len(rates)
            calls = sum(r.calls for r in runs)
            lat = [x for r in runs for x in r.latencies]
            cpu = sum(r.cpu_s for r in runs) / max(calls, 1) * 1000
            sim_cpu = sum(r.sim_cpu_s for r in runs) / sum(r.window_s for r in runs) * 100
            oth = [others(r) for r in runs]
            oth_t, oth_h = max(o[0] for o in oth), max(o[1] for o in oth)
            if v == "aiohttp":
                base[c] = rate
            rel = rate / base[c] if c in base and base[c] else float("nan")
            rows.append([VARIANTS[v], c, calls, f(rate, 0), f(max(rates) / min(rates) if min(rates) else float("nan")),
                         f(rel), f(pct(lat, 50) * 1000), f(pct(lat, 99) * 1000), f(cpu, 3), f(sim_cpu, 0),
                         f"{oth_t:.0f}/{oth_h:.0f}", sum(r.errors for r in runs)])
    headers = ["client", "conc", "calls", "calls/s", "spread", "vs default", "p50 ms", "p99 ms",
               "client CPU ms/call", "sim CPU %",
               "others % cpu1/cpu0", "errors"]
    print()
    print(table(headers, rows))
    worst = max(max(others(c)) for cs in cells.values() for c in cs)
    if worst > 10:
        print(f"\nWARNING: processes other than ours took up to {worst:.0f}% of a pinned core during a cell: "
              "absolute numbers are depressed and noisy; compare rows of this run only, or rerun when quiet.")
    print(f"\n{args.rounds} round(s) x ({args.warmup} s warm-up + {args.duration} s measured) per cell; "
          f"total {time.monotonic() - started:.0f} s")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump([{k: v for k, v in vars(c).items() if k != "latencies"} for cs in cells.values() for c in cs],
                      fh, indent=1)


if __name__ == "__main__":
    main()
