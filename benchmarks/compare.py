"""One run, side by side: vgate against direct, a minimal proxy, LiteLLM and DSPy (the numbers of BENCHMARKS.md).

    bash benchmarks/litellm_env.sh                                              # once: LiteLLM's own venv
    bash benchmarks/dspy_env.sh                                                 # once: DSPy's own venv
    .venv/bin/python benchmarks/compare.py            # ~15 min on 2 cores
    .venv/bin/python benchmarks/compare.py --quick    # ~4 min: shorter windows, fewer DSPy thread counts
    .venv/bin/python benchmarks/compare.py --sections overhead,memory

Pinning (taskset, 2+ CPUs): upstreams (simulator, fixed-delay upstream) and this process, the load
generator, on CPU 0; the thing under test (vgate, the minimal proxy, LiteLLM's proxy, DSPy's process)
alone on CPU 1, one at a time. CPU per request is utime+stime from /proc of the process under test over
the measured window, divided by the requests completed in it. The machine's other load is shown (its CPU
on the pinned cores, "others"); read ratios of one run, not absolutes.

Sections (``--sections``, all by default):

- ``overhead``: benchmarks/passthrough.py's cells (raw HTTP/1.1 load generator, keep-alive, one request at
  a time per connection) at c = 1, 64, 256, non-streaming and streaming (20 content chunks + usage),
  straight to ``vgate sim`` (zero latency), through vgate's ``/v1/chat/completions``, through
  benchmarks/minimal_proxy.py (FastAPI + aiohttp) and through LiteLLM's proxy (benchmarks/.litellm-venv).
- ``predict``: a ``batch`` of 1,000 (``--quick``: 300) ``question -> answer: int`` through vgate's
  ``POST /predict`` and the same items through DSPy's ``Predict.batch`` (benchmarks/dspy_batch.py in
  benchmarks/.dspy-venv: DSPy's default num_threads and a few more), against
  benchmarks/fixed_delay_upstream.py (0.2 s per request whatever the load) and against the simulator's
  continuous-batching model (the same upstream forwarding to ``vgate sim --latency-model``, 8 tokens per
  answer). Ideal: ceil(n / in-flight) x 0.2 s for the fixed delay (vgate keeps
  ``max_inflight_per_upstream`` = 256 in flight), and the same requests sent straight to the upstream
  with 256 in flight for the batching model.
- ``stream``: 1,000 concurrent SSE streams held ~60 s (``--quick``: ~10 s) by a slow batching simulator
  (``--max-num-seqs 1024``, 200 ms + 0.06 ms per sequence per step): straight to the simulator, through
  vgate's passthrough and through ``POST /agent`` (no tools). Dropped streams (not ending in ``[DONE]`` or
  a ``final`` event), tokens/s relayed, TTFT p50/p99 and added against direct, gateway CPU and resident
  memory while the streams are open (per 1,000 streams: the rise over the idle gateway).
- ``memory``: 50,000 single ``POST /predict`` (``--quick``: 5,000) at c=64 against the zero-latency
  simulator; the gateway's RSS every 5,000 (1,000), its growth, and the /predict CPU per request.

Output: progress on stderr-ish stdout, then one markdown block (machine, versions, date, tables, targets with
pass/FAIL) printed and written to benchmarks/results/compare-<UTC date-time>.md (``--out`` to choose).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from types import SimpleNamespace

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import passthrough as pt  # noqa: E402
from benchmarks._common import (  # noqa: E402
    ROOT,
    cpu_busy_s,
    cpu_for,
    f,
    free_port,
    machine,
    pct,
    pin_self,
    proc_rss_mb,
    spawn,
    spawn_cmd,
    table,
    tree_cpu_s,
)

MODEL = pt.MODEL
DSPY_PY = os.path.join(ROOT, "benchmarks", ".dspy-venv", "bin", "python")
BENCH = os.path.join(ROOT, "benchmarks")
GW_ENV = {"VGATE_LOG_LEVEL": "WARNING", "VGATE_LOG_FORMAT": "json"}
SECTIONS = ("overhead", "predict", "stream", "memory")
CAP = 256  # vgate's default max_inflight_per_upstream


def say(msg: str) -> None:
    print(msg, flush=True)


def vgate_cmd(port: int) -> list[str]:
    """This checkout's gateway (``python -m app.cli`` run from ROOT imports ROOT's ``app``)."""
    return [sys.executable, "-m", "app.cli", "serve", "--port", str(port)]


@contextlib.contextmanager
def gateway(upstream: str, tmp: str, name: str = "vgate", env: dict[str, str] | None = None):
    port = free_port()
    with spawn_cmd(name, vgate_cmd(port), port, role="target", health="/healthz",
                   env={"VGATE_UPSTREAM_URL": upstream, **GW_ENV, **(env or {})},
                   log_path=os.path.join(tmp, f"{name}.log")) as proc:
        yield proc


@contextlib.contextmanager
def sim(*extra: str, tokens: int = pt.TOKENS):
    port = free_port()
    with spawn("sim", ["sim", "--port", str(port), "--output-tokens", str(tokens), "--model", MODEL,
                       "--log-level", "warning", *extra], port, role="harness") as proc:
        yield proc


# --------------------------------------------------------------------------- overhead

OVERHEAD_CELLS = (("chat", 1), ("chat", 64), ("chat", 256), ("stream", 1), ("stream", 64), ("stream", 256))
TARGETS = ("direct", "vgate", "minimal", "litellm")


def ratio(a: float, b: float) -> float:
    return a / b if b == b and b else float("nan")  # nan when the other did not run or answered nothing


def section_overhead(args, tmp: str, results: dict) -> str:
    pt.CELLS = OVERHEAD_CELLS
    targets = list(TARGETS)
    if not os.path.exists(pt.LITELLM_BIN):
        say(f"litellm: skipped, {pt.LITELLM_BIN} is missing (bash benchmarks/litellm_env.sh)")
        targets.remove("litellm")
    ns = SimpleNamespace(warmup=args.warmup, duration=args.duration,
                         vgate_cmd=f"env {sys.executable} -m app.cli serve")
    cells: dict[tuple[str, str, int], pt.Cell] = {}
    with sim() as s:
        for t in targets:
            ns.duration = args.duration * (2 if t == "litellm" else 1)  # ~100 req/s: more samples
            for cell in pt.run_target(t, ns, s, tmp):
                cells[(t, cell.kind, cell.concurrency)] = cell

    def rate(t: str, kind: str, c: int) -> float:
        cell = cells.get((t, kind, c))
        return cell.ok / cell.window_s if cell and not cell.failure and cell.window_s else float("nan")

    rows = []
    for kind, c in OVERHEAD_CELLS:
        for t in targets:
            cell = cells[(t, kind, c)]
            if cell.failure:
                rows.append([f"{kind} c={c}", t, *["–"] * 7, f"FAILED: {cell.failure[:50]}"])
                continue
            r = rate(t, kind, c)
            cpu = cell.cpu.get("target")
            cpu_req = cpu / cell.ok * 1000 if cpu is not None and cell.ok else float("nan")
            vs_min, vs_lite = ratio(r, rate("minimal", kind, c)), ratio(r, rate("litellm", kind, c))
            o1, o0 = pt.others_pct(cell)
            rows.append([f"{kind} c={c}", t, f(r, 0), f(pct(cell.latencies, 50) * 1000),
                         f(pct(cell.latencies, 99) * 1000), f(cpu_req, 3), f(vs_min), f(vs_lite, 1),
                         f"{o1:.0f}/{o0:.0f}", cell.errors])
            results["overhead"][f"{t}/{kind}/{c}"] = {"rps": r, "p50_ms": pct(cell.latencies, 50) * 1000,
                                                      "p99_ms": pct(cell.latencies, 99) * 1000,
                                                      "cpu_ms": cpu_req, "errors": cell.errors}
    results["checks"]["passthrough c=64 / minimal"] = (ratio(rate("vgate", "chat", 64), rate("minimal", "chat", 64)),
                                                       ">= 0.7", lambda v: v >= 0.7)
    results["checks"]["passthrough c=64 / LiteLLM"] = (ratio(rate("vgate", "chat", 64), rate("litellm", "chat", 64)),
                                                       ">= 15", lambda v: v >= 15)
    head = ["cell", "target", "req/s", "p50 ms", "p99 ms", "proxy CPU ms/req", "× minimal", "× LiteLLM",
            "others % c1/c0", "errors"]
    return ("### Gateway overhead (`POST /v1/chat/completions`, zero-latency simulator)\n\n"
            f"{args.warmup} s warm-up + {args.duration} s measured per cell (LiteLLM {2 * args.duration} s); "
            "streaming: 20 content chunks + a usage chunk, latency to `[DONE]`. "
            "`× minimal` / `× LiteLLM`: req/s over theirs in the same cell.\n\n" + table(head, rows))


# --------------------------------------------------------------------------- predict vs DSPy

def items(n: int) -> list[dict]:
    return [{"question": f"Question number {i}: what is {i} plus {i}?"} for i in range(n)]


async def vgate_batch(gw_url: str, gw_pid: int, n: int, upstream_url: str) -> dict:
    """One batch of ``n`` through the gateway, after a warm-up batch of one. The warm-up is a batch, not a
    single /predict: a single one is an interactive call, and for 10 s after one the scheduler keeps half
    of the slots for interactive calls (``VGATE_BATCH_MAX_SHARE``), which would halve the batch's slots.
    ``peak_in_flight``: the most requests the upstream held at once (its /stats)."""
    import aiohttp

    body = json.dumps({"signature": "question -> answer: int", "batch": items(n)}).encode()
    hdr = {"content-type": "application/json"}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=900)) as s:
        async with s.post(gw_url + "/predict", data=json.dumps({"signature": "question -> answer: int",
                                                                "batch": [{"question": "1+1?"}]}), headers=hdr) as r:
            await r.read()
        async with s.post(upstream_url + "/reset") as r:
            await r.read()
        cpu0, t0 = tree_cpu_s(gw_pid), time.perf_counter()
        async with s.post(gw_url + "/predict", data=body, headers=hdr) as r:
            data = await r.json()
            status = r.status
        wall = time.perf_counter() - t0
        ok = sum(1 for it in data.get("results", []) if isinstance((it.get("outputs") or {}).get("answer"), int))
        async with s.get(upstream_url + "/stats") as r:
            peak = (await r.json()).get("peak")
    return {"wall_s": wall, "ok": ok, "cpu_s": tree_cpu_s(gw_pid) - cpu0, "status": status, "peak_in_flight": peak}


async def direct_batch(url: str, n: int, cap: int) -> float:
    """The same n upstream requests straight to ``url`` with ``cap`` in flight (a perfect client)."""
    import aiohttp

    sem = asyncio.Semaphore(cap)
    schema = {"type": "object", "properties": {"answer": {"type": "integer"}}, "required": ["answer"]}

    async def one(s, q: str) -> None:
        async with sem, s.post(url + "/v1/chat/completions", json={
                "model": MODEL, "messages": [{"role": "user", "content": q}], "max_tokens": 64,
                "response_format": {"type": "json_schema", "json_schema": {"name": "o", "schema": schema}}}) as r:
            await r.read()

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as s:
        t0 = time.perf_counter()
        await asyncio.gather(*(one(s, it["question"]) for it in items(n)))
        return time.perf_counter() - t0


def run_dspy(api_base: str, n: int, threads: str) -> dict:
    cmd = [DSPY_PY, os.path.join(BENCH, "dspy_batch.py"), "--api-base", api_base, "--n", str(n),
           "--threads", threads]
    if (cpu := cpu_for("target")) is not None:
        cmd = ["taskset", "-c", str(cpu), *cmd]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=ROOT,
                       env={**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True"})
    sys.stdout.write(r.stderr[-2000:] if r.returncode else "".join(
        line + "\n" for line in r.stderr.splitlines() if line.startswith("  dspy")))
    if r.returncode:
        raise RuntimeError(f"dspy_batch.py exited {r.returncode}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def upstream_cmd(port: int, *extra: str) -> list[str]:
    return [sys.executable, os.path.join(BENCH, "fixed_delay_upstream.py"), "--port", str(port), *extra]


def section_predict(args, tmp: str, results: dict) -> str:
    n, delay = args.batch, 0.2
    rows, ideal_fixed = [], math.ceil(n / CAP) * delay
    have_dspy = os.path.exists(DSPY_PY)
    if not have_dspy:
        say(f"dspy: skipped, {DSPY_PY} is missing (bash benchmarks/dspy_env.sh)")
    for mode in ("fixed", "batching"):
        with contextlib.ExitStack() as stack:
            port = free_port()
            if mode == "fixed":
                extra: tuple[str, ...] = ("--delay", str(delay))
            else:
                s = stack.enter_context(sim("--latency-model"))
                extra = ("--forward", s.url)
            up = stack.enter_context(spawn_cmd("upstream", upstream_cmd(port, *extra), port, role="harness"))
            label = f"fixed {delay} s delay" if mode == "fixed" else "simulator's batching model"
            if mode == "fixed":
                ideal, ideal_txt = ideal_fixed, f"ceil({n}/{CAP}) × {delay} s"
            else:
                ideal = asyncio.run(direct_batch(up.url, n, CAP))
                ideal_txt = f"direct, {CAP} in flight"
            say(f"  predict [{label}] ideal {ideal:.2f} s ({ideal_txt})")
            with gateway(up.url, tmp) as gw:
                v = asyncio.run(vgate_batch(gw.url, gw.pid, n, up.url))
            say(f"  vgate /predict batch {v['wall_s']:.2f} s ok {v['ok']}/{n} cpu {v['cpu_s']:.2f} s "
                f"peak in flight {v['peak_in_flight']}")
            who = f"vgate `POST /predict` batch (upstream held {v['peak_in_flight']} at once)"
            rows.append([label, who, f(v["wall_s"]), f(ideal), f(v["wall_s"] / ideal),
                         f"{v['ok']}/{n}", f(v["cpu_s"] / n * 1000, 3)])
            results["predict"][f"{mode}/vgate"] = {**v, "ideal_s": ideal}
            best = None
            if have_dspy:
                try:
                    d = run_dspy(up.url + "/v1", n, args.dspy_threads)
                except (RuntimeError, subprocess.SubprocessError, ValueError) as exc:
                    say(f"  dspy FAILED: {exc}")
                    d = {"runs": []}
                for run in d["runs"]:
                    lbl = f"DSPy {d['dspy']} `Predict.batch`, {run['threads']} threads" + \
                        (" (default)" if run["label"] == "default" else "")
                    rideal = math.ceil(n / run["threads"]) * delay if mode == "fixed" else ideal
                    rows.append([label, lbl, f(run["wall_s"]), f(rideal), f(run["wall_s"] / rideal),
                                 f"{run['ok']}/{n}", f(run["cpu_s"] / n * 1000, 3)])
                    if run["ok"] == n and (best is None or run["wall_s"] < best["wall_s"]):
                        best = run
                results["predict"][f"{mode}/dspy"] = d
            if mode == "fixed":
                results["checks"][f"batch of {n:,}, 0.2 s fixed delay: vgate / ideal"] = (
                    v["wall_s"] / ideal, "<= 1.5", lambda x: x <= 1.5)
                results["checks"][f"batch of {n:,}, 0.2 s fixed delay: DSPy best / vgate"] = (
                    best["wall_s"] / v["wall_s"] if best else float("nan"), ">= 1.8", lambda x: x >= 1.8)
            else:
                results["checks"][f"batch of {n:,}, batching sim: DSPy best / vgate (context)"] = (
                    best["wall_s"] / v["wall_s"] if best else float("nan"), "–", None)
    head = ["upstream", "client", "wall s", "ideal s", "× ideal", "answered (int)", "client CPU ms/item"]
    return (f"### `/predict` against DSPy in-process (a batch of {n} `question -> answer: int`)\n\n"
            f"Fixed delay: every request answered {delay} s after it arrives, however many are in flight; ideal = "
            f"ceil({n} / requests in flight) × {delay} s (vgate: {CAP} in flight = {f(ideal_fixed)} s; DSPy: its "
            "thread count). Batching model: the same upstream forwarding each request (8 tokens) to "
            "`vgate sim --latency-model`; ideal = the same requests sent straight to it, "
            f"{CAP} in flight. vgate and DSPy's process each alone on CPU 1; DSPy's cache off, "
            "its default ChatAdapter.\n\n" + table(head, rows))


# --------------------------------------------------------------------------- streaming relay

async def hold_streams(url: str, kind: str, n: int, tokens: int, pid: int | None) -> dict:
    """n concurrent streams at once; per stream TTFT, tokens, whether it ended properly. RSS sampled."""
    import aiohttp

    if kind == "agent":
        path, body = "/agent", {"input": "Tell me a long story.", "tools": [], "tool_choice": "none",
                                "config": {"max_tokens": tokens}}
    else:
        path, body = "/v1/chat/completions", {"model": MODEL, "messages": [{"role": "user", "content": "Tell me"}],
                                              "max_tokens": tokens, "stream": True,
                                              "stream_options": {"include_usage": True}}
    data = json.dumps(body).encode()
    ttft: list[float] = []
    toks, done, errors = [0], [0], []
    rss: list[float] = []

    async def one(s) -> None:
        t0 = time.perf_counter()
        first, ended, event = None, False, ""
        try:
            async with s.post(url + path, data=data, headers={"content-type": "application/json",
                                                              "accept": "text/event-stream"}) as r:
                if r.status != 200:
                    errors.append(f"HTTP {r.status}: {(await r.read())[:120]!r}")
                    return
                async for line in r.content:
                    if line.startswith(b"event: "):
                        event = line[7:].strip().decode()
                        if event == "delta" and first is None:
                            first = time.perf_counter() - t0
                        continue
                    if not line.startswith(b"data: "):
                        continue
                    payload = line[6:].strip()
                    if kind == "agent":
                        if event == "final":
                            toks[0] += json.loads(payload).get("usage", {}).get("completion_tokens", 0)
                            ended = True
                        elif event == "error":
                            errors.append(payload[:120].decode())
                        continue
                    if payload == b"[DONE]":
                        ended = True
                        continue
                    chunk = json.loads(payload)
                    if first is None and any(c.get("delta", {}).get("content") for c in chunk.get("choices", [])):
                        first = time.perf_counter() - t0
                    if chunk.get("usage"):
                        toks[0] += chunk["usage"].get("completion_tokens", 0)
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            errors.append(f"{type(exc).__name__}: {exc}")
            return
        if first is not None:
            ttft.append(first)
        if ended:
            done[0] += 1
        else:
            errors.append("ended without [DONE] / final")

    async def sampler(stop: asyncio.Event) -> None:
        while not stop.is_set() and pid:
            rss.append(proc_rss_mb(pid))
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), 1.0)

    timeout = aiohttp.ClientTimeout(total=600, sock_read=120)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), timeout=timeout) as s:
        rss0 = proc_rss_mb(pid) if pid else float("nan")
        cpu0 = tree_cpu_s(pid) if pid else 0.0
        stop = asyncio.Event()
        samp = asyncio.create_task(sampler(stop))
        t0 = time.perf_counter()
        await asyncio.gather(*(one(s) for _ in range(n)))
        wall = time.perf_counter() - t0
        stop.set()
        await samp
    return {"kind": kind, "n": n, "wall_s": wall, "done": done[0], "errors": errors[:5], "n_errors": len(errors),
            "tokens": toks[0], "ttft_p50": pct(ttft, 50), "ttft_p99": pct(ttft, 99),
            "rss0_mb": rss0, "rss_peak_mb": max(rss, default=float("nan")),
            "cpu_s": (tree_cpu_s(pid) - cpu0) if pid else float("nan")}


def section_stream(args, tmp: str, results: dict) -> str:
    n, hold = args.streams, args.hold
    step_ms, per_seq = 200.0, 0.06
    tokens = max(8, int(hold * 1000 / (step_ms + per_seq * n)))
    env = {"VGATE_MAX_INFLIGHT_PER_UPSTREAM": str(n + 24), "VGATE_MAX_CONNECTIONS": str(n + 64),
           "VGATE_AGENT_MAX_CONCURRENT_RUNS": str(n + 24), "VGATE_AGENT_MAX_RETAINED_RUNS": str(n + 24),
           "VGATE_MAX_QUEUED_PER_MODEL": str(2 * n),
           # 1,000 prompts arriving at once put the simulator's waiting queue past the default threshold (8):
           # vgate would shed the later ones with 429 upstream_overloaded (by design); here every stream is held.
           "VGATE_SATURATION_QUEUE_THRESHOLD": str(100 * n), "VGATE_SATURATION_KV_THRESHOLD": "1.0"}
    runs = {}
    with sim("--latency-model", "--max-num-seqs", str(n + 24), "--step-ms", str(step_ms),
             "--step-per-seq-ms", str(per_seq), "--max-num-batched-tokens", "8192", tokens=tokens) as s:
        runs["direct"] = asyncio.run(hold_streams(s.url, "chat", n, tokens, None))
        say(f"  stream direct      {runs['direct']['wall_s']:.1f} s done {runs['direct']['done']}/{n}")
        with gateway(s.url, tmp, env=env) as gw:
            for kind in ("chat", "agent"):
                runs[kind] = r = asyncio.run(hold_streams(gw.url, kind, n, tokens, gw.pid))
                say(f"  stream vgate {kind:5s} {r['wall_s']:.1f} s done {r['done']}/{n} errors {r['errors'][:2]}")
    rows = []
    for name, label in (("direct", "direct to the simulator"), ("chat", "vgate `/v1/chat/completions` passthrough"),
                        ("agent", "vgate `POST /agent` (no tools)")):
        r = runs[name]
        added = (r["ttft_p50"] - runs["direct"]["ttft_p50"]) * 1000 if name != "direct" else float("nan")
        rows.append([label, f"{r['done']}/{n}", n - r["done"], f(r["wall_s"], 1), f(r["tokens"] / r["wall_s"], 0),
                     f(r["ttft_p50"] * 1000, 0), f(r["ttft_p99"] * 1000, 0), f(added, 1),
                     f(r["cpu_s"] / r["wall_s"] * 100, 0), f(r["rss0_mb"], 0), f(r["rss_peak_mb"], 0),
                     f(r["rss_peak_mb"] - r["rss0_mb"], 0)])
        results["stream"][name] = r
    for name in ("chat", "agent"):
        results["checks"][f"{n} streams held, {name}: dropped"] = (n - runs[name]["done"], "0", lambda v: v == 0)
    head = ["path", "completed", "dropped", "held s", "tokens/s relayed", "TTFT p50 ms", "TTFT p99 ms",
            "added TTFT p50 ms", "gateway CPU %", "RSS idle MB", "RSS peak MB", "MB per 1,000 open streams"]
    return (f"### Streaming relay ({n} concurrent SSE streams, opened at once, held ~{hold:.0f} s)\n\n"
            f"`vgate sim --latency-model --max-num-seqs {n + 24} --step-ms {step_ms:.0f}`: one token per stream "
            f"every ~{step_ms + per_seq * n:.0f} ms, {tokens} tokens each. TTFT includes the simulator's prefill of "
            f"{n} prompts arriving together. Memory per 1,000 streams: peak RSS while open minus the gateway's "
            f"RSS before, × 1000/{n}.\n\n" + table(head, rows))


# --------------------------------------------------------------------------- memory

async def predict_load(port: int, pid: int, total: int, every: int, c: int) -> dict:
    raw_body = json.dumps({"signature": "question -> answer: int", "inputs": {"question": "What is 2 plus 2?"}})
    data = raw_body.encode()
    raw = (f"POST /predict HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
           f"Content-Length: {len(data)}\r\n\r\n").encode() + data
    done, errors, samples = [0], [0], []
    conns = [await pt.connect(port) for _ in range(c)]
    issued = [0]
    samples.append((0, proc_rss_mb(pid)))
    cpu0, t0 = tree_cpu_s(pid), time.perf_counter()

    async def worker(conn) -> None:
        while issued[0] < total:
            issued[0] += 1
            if not conn.usable():
                conn = await pt.connect(port)
            try:
                status, body = await conn.send(raw)
            except Exception:  # noqa: BLE001 - counted
                status, body = -1, b""
            if status == 200 and b'"answer"' in body:
                done[0] += 1
            else:
                errors[0] += 1
            if (done[0] + errors[0]) % every == 0:
                samples.append((done[0] + errors[0], proc_rss_mb(pid)))
        if conn.transport:
            conn.transport.close()

    await asyncio.gather(*(worker(cn) for cn in conns))
    wall = time.perf_counter() - t0
    return {"ok": done[0], "errors": errors[0], "wall_s": wall, "cpu_s": tree_cpu_s(pid) - cpu0,
            "samples": samples}


def section_memory(args, tmp: str, results: dict) -> str:
    import uvloop

    total, every = args.requests, args.requests // 10
    with sim() as s, gateway(s.url, tmp) as gw:
        port = int(gw.url.rsplit(":", 1)[1])
        core1 = cpu_for("target")
        b0 = cpu_busy_s(core1)
        r = uvloop.run(predict_load(port, gw.pid, total, every, 64))
        others = max(0.0, cpu_busy_s(core1) - b0 - r["cpu_s"]) / r["wall_s"] * 100
    rss = [m for _, m in r["samples"]]
    first_after_warm = rss[1] if len(rss) > 1 else rss[0]
    growth = rss[-1] - first_after_warm
    cpu_ms = r["cpu_s"] / max(1, r["ok"] + r["errors"]) * 1000
    results["memory"] = {**r, "growth_mb": growth, "cpu_ms": cpu_ms, "others_pct_c1": others}
    results["checks"][f"RSS growth over {total:,} /predict (after the first {every:,})"] = (
        growth, "<= 10 MB", lambda v: v <= 10)
    results["checks"]["/predict CPU ms per request (c=64)"] = (cpu_ms, "< 0.6", lambda v: v < 0.6)
    head = ["requests done", *[f"{k:,}" for k, _ in r["samples"]]]
    return (f"### Memory and `/predict` CPU ({total:,} single `POST /predict` at c=64, zero-latency simulator)\n\n"
            f"{r['ok']:,} answered, {r['errors']} errors, {r['ok'] / r['wall_s']:.0f} req/s, gateway CPU "
            f"**{cpu_ms:.3f} ms per request**; other processes took {others:.0f}% of CPU 1 meanwhile. "
            f"RSS growth from {every:,} to {total:,} requests: **{growth:+.1f} MB**.\n\n"
            + table(head, [["gateway RSS MB", *[f"{m:.1f}" for m in rss]]]))


# --------------------------------------------------------------------------- main

def versions() -> str:
    out = [pt.versions()]
    if os.path.exists(DSPY_PY):
        rr = subprocess.run([DSPY_PY, "-c", "from importlib.metadata import version as v; "
                             "print('dspy', v('dspy'), '(its litellm', v('litellm') + ')')"],
                            capture_output=True, text=True)
        out.append(rr.stdout.strip())
    return ", ".join(x for x in out if x)


def git_rev() -> str:
    r = subprocess.run(["git", "-C", ROOT, "log", "-1", "--format=%h %s"], capture_output=True, text=True)
    dirty = subprocess.run(["git", "-C", ROOT, "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True).stdout.strip()
    return (r.stdout.strip()[:80] or "?") + (" (+ uncommitted changes)" if dirty else "")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="~4 min: shorter windows and holds, fewer DSPy runs")
    ap.add_argument("--sections", default=",".join(SECTIONS), help="comma-separated, from " + ",".join(SECTIONS))
    ap.add_argument("--out", default=None, help="markdown file (default benchmarks/results/compare-<date>.md)")
    args = ap.parse_args()
    quick = args.quick
    args.warmup, args.duration = (0.5, 1.0) if quick else (1.5, 4.0)
    args.batch = 300 if quick else 1000
    args.dspy_threads = "default,64" if quick else "default,32,64,128"
    args.streams, args.hold = 1000, (10.0 if quick else 60.0)
    args.requests = 5_000 if quick else 50_000
    sections = [x.strip() for x in args.sections.split(",") if x.strip()]
    if unknown := set(sections) - set(SECTIONS):
        ap.error(f"unknown sections: {', '.join(sorted(unknown))}")

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 65536)), hard))  # 1,000 streams x 2 sockets
    pin_self("harness")
    started = time.monotonic()
    now = dt.datetime.now(dt.timezone.utc)
    say(f"machine: {machine()}\nversions: {versions()}")
    results: dict = {"overhead": {}, "predict": {}, "stream": {}, "memory": {}, "checks": {}}
    blocks = []
    with tempfile.TemporaryDirectory(prefix="vgate-compare-") as tmp:
        for name in sections:
            say(f"== {name}")
            t0 = time.monotonic()
            try:
                blocks.append(globals()[f"section_{name}"](args, tmp, results))
            except Exception as exc:  # noqa: BLE001 - one failed section must not lose the others
                say(f"  {name} FAILED: {type(exc).__name__}: {exc}")
                for log in sorted(os.listdir(tmp)):
                    if log.endswith(".log"):
                        say(f"  --- {log}\n{pt.log_tail(os.path.join(tmp, log))}")
                blocks.append(f"### {name}\n\nFAILED: `{type(exc).__name__}: {exc}`")
            say(f"   ({time.monotonic() - t0:.0f} s)")

    checks = [[what, f(v, 3) if isinstance(v, float) else str(v), goal,
               "–" if ok is None else ("no data" if v != v else ("**pass**" if ok(v) else "**FAIL**"))]
              for what, (v, goal, ok) in results["checks"].items()]
    md = "\n\n".join([
        f"## Results: `benchmarks/compare.py{' --quick' if quick else ''}`, {now:%Y-%m-%d %H:%M} UTC",
        f"- machine: {machine()}; pinned: upstreams + load generator on CPU 0, the process under test on CPU 1"
        f"\n- versions: {versions()}\n- code: {git_rev()}\n- total run time: {time.monotonic() - started:.0f} s",
        "### Targets\n\n" + table(["target", "value", "goal", "verdict"], checks),
        *blocks,
    ]) + "\n"
    print("\n" + md)
    out = args.out or os.path.join(BENCH, "results", f"compare-{now:%Y%m%d-%H%M}{'-quick' if quick else ''}.md")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as fh:
        fh.write(md)
    with open(out[:-3] + ".json", "w") as fh:
        json.dump({k: v for k, v in results.items() if k != "checks"}
                  | {"checks": {k: [v[0], v[1]] for k, v in results["checks"].items()}}, fh, indent=1, default=str)
    say(f"written: {out}")


if __name__ == "__main__":
    main()
