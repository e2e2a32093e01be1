"""What routing buys, measured on simulators with the latency model (simulated GPU time, so the
figures do not depend on this machine's speed as long as it keeps up).

    .venv/bin/python benchmarks/routing.py                    # all three parts, ~2 min
    .venv/bin/python benchmarks/routing.py --parts load --duration 20

Parts (each starts its own simulators and gateways, CPU 0 for the harness, CPU 1 for the gateway):

- ``load``: two upstreams of unequal capacity — ``fast`` (max_num_seqs 64, 8 ms steps) and ``slow``
  (max_num_seqs 16, 24 ms steps) — under the same open-loop Poisson load of unique chat requests,
  through a gateway with ``VGATE_ROUTING=load`` and one with ``round_robin`` (prefix affinity off in
  both). Latency p50/p99, the share each upstream got.
- ``affinity``: two upstreams whose KV cache holds about half the programs' prompts each; requests
  of 8 "programs" (a ~1,500-token system prompt each, a unique question) in random order, through a
  gateway with prefix affinity and one with ``VGATE_ROUTING=random`` and affinity off. The
  prefix-cache hit rate is vllm:prefix_cache_hits / queries summed over both simulators.
- ``priority``: one upstream; interactive /predict calls at a steady rate, alone, then while a
  1,000-item /predict batch runs: sent with ``X-Vgate-Priority: batch`` (no priority over the batch),
  then as interactive calls with priority only, with the default cap on the batch's share of the
  slots while interactive calls come, and a tighter one; last the batch alone. Interactive p50/p99,
  their mean wait in the gateway's queue, the batch's time.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sys
import time
from contextlib import ExitStack

import aiohttp

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks._common import f, free_port, machine, pct, pin_self, spawn, table, tree_cpu_s  # noqa: E402

WORDS = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi rho sigma".split()


def sim(stack: ExitStack, *flags: str):
    port = free_port()
    return stack.enter_context(spawn("sim", ["sim", "--port", str(port), "--latency-model", *flags], port,
                                     role="harness"))


def gateway(stack: ExitStack, upstreams: list[str], **env: str):
    port = free_port()
    ups = "[" + ",".join(f'{{"url": "{u}"}}' for u in upstreams) + "]"
    base = {"VGATE_UPSTREAMS": ups, "VGATE_LOG_LEVEL": "WARNING", "VGATE_METRICS_SCRAPE_INTERVAL_S": "0.5"}
    return stack.enter_context(spawn("vgate", ["serve", "--port", str(port)], port, role="target",
                                     env={**base, **env}, health="/healthz"))


async def sim_counter(session: aiohttp.ClientSession, url: str) -> dict:
    async with session.get(f"{url}/sim/stats") as r:
        return await r.json()


async def open_loop(url: str, rate: float, duration: float, make_body, path: str = "/v1/chat/completions",
                    headers: dict | None = None, seed: int = 1) -> tuple[list[float], int]:
    """Poisson arrivals at ``rate``/s for ``duration`` s; latencies (s) of the 200s, and the failures."""
    rng = random.Random(seed)
    lat: list[float] = []
    failed = 0
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as s:
        async def one(i: int) -> None:
            nonlocal failed
            t0 = time.perf_counter()
            try:
                async with s.post(url + path, json=make_body(i), headers=headers) as r:
                    body = await r.read()
                    ok = r.status == 200
                    if not ok and os.environ.get("ROUTING_DEBUG"):
                        print(r.status, body[:200], file=sys.stderr)
            except aiohttp.ClientError:
                ok = False
            if ok:
                lat.append(time.perf_counter() - t0)
            else:
                failed += 1

        tasks = []
        end = time.perf_counter() + duration
        i = 0
        while time.perf_counter() < end:
            tasks.append(asyncio.create_task(one(i)))
            i += 1
            await asyncio.sleep(rng.expovariate(rate))
        await asyncio.gather(*tasks)
    return lat, failed


def queue_wait_ms(metrics: str, priority: str) -> float:
    """Mean time interactive (or batch) calls waited in the gateway's queue, from its /metrics."""
    got = {}
    for line in metrics.splitlines():
        if line.startswith("vgate_queue_seconds_") and f'priority="{priority}"' in line:
            kind = line.split("{", 1)[0].rsplit("_", 1)[1]
            got[kind] = got.get(kind, 0.0) + float(line.rsplit(" ", 1)[1])
    return 1000 * got["sum"] / got["count"] if got.get("count") else float("nan")


def chat(i: int) -> dict:
    words = " ".join(random.Random(i).choices(WORDS, k=12))
    return {"model": "sim-model", "messages": [{"role": "user", "content": f"{i}: {words}"}], "max_tokens": 32}


async def part_load(args) -> str:
    rows = []
    for policy in ("load", "round_robin"):
        with ExitStack() as stack:
            fast = sim(stack, "--max-num-seqs", "64", "--step-ms", "8")
            slow = sim(stack, "--max-num-seqs", "16", "--step-ms", "24")
            # saturation out of the way: the policies alone are compared (no 429s)
            gw = gateway(stack, [fast.url, slow.url], VGATE_ROUTING=policy, VGATE_PREFIX_AFFINITY="false",
                         VGATE_SATURATION_QUEUE_THRESHOLD="100000")
            await open_loop(gw.url, args.rate, 2, chat, seed=99)  # warm-up
            async with aiohttp.ClientSession() as s:
                before = [(await sim_counter(s, u.url))["requests_total"] for u in (fast, slow)]
                lat, failed = await open_loop(gw.url, args.rate, args.duration, chat)
                after = [(await sim_counter(s, u.url))["requests_total"] for u in (fast, slow)]
            got = [a - b for a, b in zip(after, before, strict=True)]
            rows.append([policy, len(lat), failed, f(pct(lat, 50) * 1000, 0), f(pct(lat, 99) * 1000, 0),
                         f(100 * got[0] / max(1, sum(got)), 0), f(100 * got[1] / max(1, sum(got)), 0)])
    p99 = {r[0]: float(r[4]) for r in rows}
    return (f"### Load-aware routing vs round robin ({args.rate:g} requests/s, {args.duration:g} s, 32 tokens each)\n\n"
            + table(["routing", "ok", "failed", "p50 ms", "p99 ms", "% to fast", "% to slow"], rows)
            + f"\n\np99 round robin / load-aware: **{p99['round_robin'] / p99['load']:.1f}x**\n")


async def part_affinity(args) -> str:
    programs = [" ".join(random.Random(1000 + p).choices(WORDS, k=400)) for p in range(8)]

    def body(i: int) -> dict:
        program = random.Random(i).randrange(8)
        return {"model": "sim-model", "max_tokens": 4, "messages": [
            {"role": "system", "content": programs[program]},
            {"role": "user", "content": f"question {i}"}]}

    rows = []
    for name, env in (("prefix affinity", {}), ("random", {"VGATE_ROUTING": "random",
                                                            "VGATE_PREFIX_AFFINITY": "false"})):
        with ExitStack() as stack:
            # each KV cache holds about half of the 8 programs' prompts; saturation out of the way
            sims = [sim(stack, "--kv-cache-tokens", str(args.kv_tokens)) for _ in range(2)]
            gw = gateway(stack, [s.url for s in sims], VGATE_SATURATION_QUEUE_THRESHOLD="100000",
                         VGATE_SATURATION_KV_THRESHOLD="1", **env)
            lat, failed = await open_loop(gw.url, args.affinity_rate, args.duration, body)
            async with aiohttp.ClientSession() as s:
                stats = [await sim_counter(s, u.url) for u in sims]
            hits = sum(x["prefix_cache_hits_total"] for x in stats)
            queries = sum(x["prefix_cache_queries_total"] for x in stats)
            rows.append([name, len(lat), failed, f(100 * hits / max(1, queries), 1), f(pct(lat, 50) * 1000, 0),
                         f(pct(lat, 99) * 1000, 0)])
    return (f"### Prefix affinity vs random placement (8 programs, {args.affinity_rate:g} requests/s, "
            f"{args.duration:g} s, KV cache {args.kv_tokens} tokens per upstream)\n\n"
            + table(["placement", "ok", "failed", "prefix-cache hit %", "p50 ms", "p99 ms"], rows) + "\n")


async def part_priority(args) -> str:
    def single(i: int) -> dict:
        return {"signature": "question -> answer: int", "inputs": {"question": f"What is {i} + 1?"}}

    batch = {"signature": "question -> answer: int",
             "batch": [{"question": f"What is {i} * 3?"} for i in range(1000)]}
    rows = []
    cases = [("interactive alone", None, False, {}),
             ("same calls sent as batch class (no priority)", {"x-vgate-priority": "batch"}, True, {}),
             ("interactive, priority only (VGATE_BATCH_MAX_SHARE=1)", None, True, {"VGATE_BATCH_MAX_SHARE": "1"}),
             ("interactive, defaults (VGATE_BATCH_MAX_SHARE=0.5)", None, True, {}),
             ("interactive, VGATE_BATCH_MAX_SHARE=0.25", None, True, {"VGATE_BATCH_MAX_SHARE": "0.25"}),
             ("no interactive calls: the batch alone", None, None, {})]
    for label, headers, with_batch, env in cases:
        with ExitStack() as stack:
            up = sim(stack)
            gw = gateway(stack, [up.url], **env)
            batch_s = float("nan")
            cpu0, t_start = tree_cpu_s(gw.pid), time.perf_counter()
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600)) as s:
                if with_batch is not False:
                    t0 = time.perf_counter()
                    big = asyncio.create_task(s.post(gw.url + "/predict", json=batch))
                    await asyncio.sleep(0.3)  # the batch is in flight first
                lat, failed = [], 0
                if with_batch is not None:  # 4 s: inside the batch's time
                    lat, failed = await open_loop(gw.url, 5, 4.0, single, path="/predict", headers=headers)
                if with_batch is not False:
                    r = await big
                    await r.read()
                    batch_s = time.perf_counter() - t0
                    assert r.status == 200, r.status
                async with s.get(gw.url + "/metrics") as m:
                    queue = queue_wait_ms(await m.text(), "interactive")
            busy = (tree_cpu_s(gw.pid) - cpu0) / (time.perf_counter() - t_start)
            rows.append([label, len(lat), failed, f(pct(lat, 50) * 1000, 0), f(pct(lat, 99) * 1000, 0),
                         f(queue, 1), f(batch_s, 2), f(100 * busy, 0)])
    return ("### A batch beside interactive calls (one upstream, interactive /predict at 5/s for the first 4 s)\n\n"
            + table(["interactive calls", "ok", "failed", "p50 ms", "p99 ms", "gateway queue ms (interactive mean)",
                     "batch wall s", "gateway CPU %"], rows) + "\n")


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--parts", default="load,affinity,priority")
    ap.add_argument("--duration", type=float, default=15.0)
    ap.add_argument("--rate", type=float, default=60.0, help="requests/s for the load part")
    ap.add_argument("--affinity-rate", type=float, default=20.0, help="requests/s for the affinity part")
    ap.add_argument("--kv-tokens", type=int, default=2200, help="each simulator's KV cache in the affinity part")
    args = ap.parse_args()
    pin_self("harness")
    print(f"Machine: {machine()}\n")
    parts = {"load": part_load, "affinity": part_affinity, "priority": part_priority}
    for name in args.parts.split(","):
        print(await parts[name](args), flush=True)


if __name__ == "__main__":
    asyncio.run(main())
