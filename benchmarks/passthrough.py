"""Side by side: OpenAI-compatible passthrough proxies in front of one zero-latency simulator.

    .venv/bin/python benchmarks/passthrough.py                          # ~2 min: all four targets
    .venv/bin/python benchmarks/passthrough.py --targets direct,minimal,vgate --duration 3
    .venv/bin/python benchmarks/passthrough.py --vgate-cmd "/other/checkout/.venv/bin/vgate serve"
    bash benchmarks/litellm_env.sh                                      # once, for the litellm target

What it starts (free loopback ports; pinned with taskset when there are 2+ CPUs):

- CPU 0: ``vgate sim --output-tokens 20`` (zero latency) and this process, the load generator;
- CPU 1: one target at a time, stopped before the next starts:
  - ``direct``: nothing; the requests go to the simulator itself (the harness's ceiling);
  - ``minimal``: benchmarks/minimal_proxy.py, FastAPI + one aiohttp ClientSession (the reference);
  - ``vgate``: ``--vgate-cmd --port P`` with VGATE_UPSTREAM_URL=<sim>, VGATE_LOG_LEVEL=WARNING;
  - ``litellm``: LiteLLM's proxy from benchmarks/.litellm-venv (``litellm_env.sh``), ``--num_workers 1``,
    a config routing the simulator's model to ``openai/<model>`` at the simulator; skipped if absent.

Cells per target: non-streaming chat completions at c=1 and c=64, streaming (20 content chunks + usage
chunk) at c=64. Each cell: ``c`` keep-alive connections, each sending one request at a time for the
warm-up, then the measured window; only responses completing inside the window count. A request counts
when it answers 200 with a complete body (``choices``; a stream ending in ``data: [DONE]``); latency is
to the last byte (for a stream, to ``[DONE]``). Proxy CPU per request: utime+stime of the target's
process tree (/proc) over the window, divided by the requests that completed in it. ``added p50`` at c=1:
target p50 minus direct p50. ``others``: CPU on each pinned core taken by processes that are not ours.

The load generator is raw HTTP/1.1 on asyncio protocols (uvloop) with httptools' parser, ~0.05 ms of
CPU per request: an aiohttp client costs ~0.17 ms and, sharing CPU 0 with the simulator, caps the
direct target at ~2,900 requests/s where this one reaches the simulator's own limit.
A target that fails to start or to answer is reported and skipped; the others still run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks._common import (  # noqa: E402
    ROOT,
    cpu_busy_s,
    cpu_for,
    f,
    free_port,
    machine,
    pct,
    pin_self,
    spawn,
    spawn_cmd,
    table,
    tree_cpu_s,
)

MODEL = "sim-model"
TOKENS = 20
MASTER_KEY = "sk-bench"
LITELLM_BIN = os.path.join(ROOT, "benchmarks", ".litellm-venv", "bin", "litellm")
ALL_TARGETS = ("direct", "minimal", "vgate", "litellm")
CELLS = (("chat", 1), ("chat", 64), ("stream", 64))
GOALS = ("vgate goals: >= 0.7x minimal and >= 15x litellm req/s (chat c=64); CPU < 0.5 ms/call, < 1.0 ms/stream; "
         "added p50 at c=1 < 0.5 ms")


def raw_request(port: int, kind: str, headers: dict[str, str]) -> bytes:
    body: dict = {"model": MODEL, "messages": [{"role": "user", "content": "Say hello"}], "max_tokens": TOKENS}
    if kind == "stream":
        body |= {"stream": True, "stream_options": {"include_usage": True}}
    data = json.dumps(body).encode()
    head = {"Host": f"127.0.0.1:{port}", "Content-Type": "application/json", "Content-Length": str(len(data)),
            **headers}
    lines = "".join(f"{k}: {v}\r\n" for k, v in head.items())
    return f"POST /v1/chat/completions HTTP/1.1\r\n{lines}\r\n".encode() + data


def complete(kind: str, body: bytes) -> bool:
    return body.rstrip().endswith(b"data: [DONE]") if kind == "stream" else b'"choices"' in body


class Conn(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection, one request at a time; responses parsed by httptools."""

    def __init__(self) -> None:
        import httptools

        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.waiter: asyncio.Future | None = None
        self.body: list[bytes] = []

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except Exception as exc:  # noqa: BLE001 - a malformed response fails the request
            self._fail(exc)
            self.transport.close()

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        if self.waiter and not self.waiter.done():
            self.waiter.set_result((self.parser.get_status_code(), b"".join(self.body)))
        self.body = []

    def connection_lost(self, exc) -> None:
        self.transport = None
        self._fail(ConnectionError("connection closed"))

    def _fail(self, exc: Exception) -> None:
        if self.waiter and not self.waiter.done():
            self.waiter.set_exception(exc)

    def usable(self) -> bool:
        return self.transport is not None and not self.transport.is_closing()

    async def send(self, raw: bytes) -> tuple[int, bytes]:
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(raw)
        return await self.waiter


async def connect(port: int) -> Conn:
    _, conn = await asyncio.get_running_loop().create_connection(Conn, "127.0.0.1", port)
    return conn


@dataclass
class Cell:
    target: str
    kind: str
    concurrency: int
    ok: int = 0
    errors: int = 0
    window_s: float = 0.0
    latencies: list[float] = field(default_factory=list)  # seconds
    cpu: dict[str, float] = field(default_factory=dict)  # seconds over the window: target, sim, loadgen
    busy: dict[str, float] = field(default_factory=dict)  # seconds each pinned core was busy
    failure: str = ""  # why the cell did not run


async def probe(port: int, raw: bytes, kind: str) -> str:
    """'' when one request succeeds, else what went wrong."""
    conn = None
    try:
        conn = await connect(port)
        status, body = await asyncio.wait_for(conn.send(raw), 30)
    except Exception as exc:  # noqa: BLE001
        return f"{type(exc).__name__}: {exc}"
    finally:
        if conn and conn.transport:
            conn.transport.close()
    if status == 200 and complete(kind, body):
        return ""
    return f"HTTP {status}: {body[:160].decode(errors='replace')}"


async def run_cell(cell: Cell, port: int, raw: bytes, pids: dict[str, int | None], warmup: float,
                   duration: float) -> Cell:
    loop = asyncio.get_running_loop()
    if failure := await probe(port, raw, cell.kind):
        cell.failure = failure
        return cell
    conns = [await connect(port) for _ in range(cell.concurrency)]
    t0 = loop.time() + warmup
    t1 = t0 + duration
    marks: dict[str, dict[str, float]] = {}

    def snapshot() -> dict[str, float]:
        snap = {name: tree_cpu_s(pid) for name, pid in pids.items() if pid is not None}
        snap |= {"loadgen": time.process_time(), "t": loop.time(),
                 "core0": cpu_busy_s(cpu_for("harness")), "core1": cpu_busy_s(cpu_for("target"))}
        return snap

    async def worker(conn: Conn) -> None:
        while loop.time() < t1:
            if not conn.usable():
                try:
                    conn = await connect(port)
                except OSError:
                    cell.errors += t0 <= loop.time() < t1
                    await asyncio.sleep(0.05)
                    continue
            s = time.perf_counter()
            try:
                status, body = await conn.send(raw)
            except Exception:  # noqa: BLE001 - counted below
                status, body = -1, b""
            lat = time.perf_counter() - s
            if not t0 <= loop.time() < t1:
                continue
            if status == 200 and complete(cell.kind, body):
                cell.ok += 1
                cell.latencies.append(lat)
            else:
                cell.errors += 1
        if conn.transport:
            conn.transport.close()

    async def clock() -> None:
        await asyncio.sleep(max(0.0, t0 - loop.time()))
        marks["a"] = snapshot()
        await asyncio.sleep(max(0.0, t1 - loop.time()))
        marks["b"] = snapshot()

    tasks = [asyncio.create_task(worker(c)) for c in conns]
    await clock()
    _, stuck = await asyncio.wait(tasks, timeout=30)  # requests still open 30 s after the window: abandoned
    for t in stuck:
        t.cancel()
    a, b = marks["a"], marks["b"]
    cell.window_s = b["t"] - a["t"]
    cell.cpu = {k: b[k] - a[k] for k in a if k not in ("t", "core0", "core1")}
    cell.busy = {k: b[k] - a[k] for k in ("core0", "core1")}
    return cell


def others_pct(cell: Cell) -> tuple[float, float]:
    """CPU % taken by processes not ours on core 1 (target) and core 0 (simulator + load generator)."""
    w = cell.window_s
    ours0 = cell.cpu.get("sim", 0.0) + cell.cpu.get("loadgen", 0.0)
    return (max(0.0, cell.busy["core1"] - cell.cpu.get("target", 0.0)) / w * 100,
            max(0.0, cell.busy["core0"] - ours0) / w * 100)


def litellm_config(path: str, sim_url: str) -> None:
    with open(path, "w") as fh:  # JSON is YAML
        json.dump({
            "model_list": [{"model_name": MODEL, "litellm_params": {
                "model": f"openai/{MODEL}", "api_base": sim_url + "/v1", "api_key": "x"}}],
            "general_settings": {"master_key": MASTER_KEY},
            "litellm_settings": {"telemetry": False},
        }, fh)


def target_spec(name: str, args, sim_url: str, port: int, tmp: str) -> dict:
    """How to start a target: spawn_cmd's arguments, plus the extra request headers it needs."""
    if name == "minimal":
        cmd = [sys.executable, os.path.join(ROOT, "benchmarks", "minimal_proxy.py"), "--upstream", sim_url,
               "--port", str(port)]
        return {"cmd": cmd, "health": "/v1/models"}
    if name == "vgate":
        cmd = [*shlex.split(args.vgate_cmd), "--port", str(port)]
        exe = os.path.abspath(cmd[0]) if os.sep in cmd[0] else ""
        checkout = exe.split(f"{os.sep}.venv{os.sep}")[0] if f"{os.sep}.venv{os.sep}" in exe else ROOT
        env = {"VGATE_UPSTREAM_URL": sim_url, "VGATE_LOG_LEVEL": "WARNING", "VGATE_LOG_FORMAT": "json"}
        return {"cmd": cmd, "health": "/healthz", "env": env, "cwd": checkout}
    if name == "litellm":
        cfg = os.path.join(tmp, "litellm.json")
        litellm_config(cfg, sim_url)
        cmd = [LITELLM_BIN, "--config", cfg, "--host", "127.0.0.1", "--port", str(port), "--num_workers", "1"]
        return {"cmd": cmd, "health": "/health/liveliness", "env": {"LITELLM_LOCAL_MODEL_COST_MAP": "True"},
                "timeout": 240, "headers": {"Authorization": f"Bearer {MASTER_KEY}"}}
    raise ValueError(name)


def log_tail(path: str, n: int = 8) -> str:
    with contextlib.suppress(OSError), open(path, errors="replace") as fh:
        return "".join(fh.readlines()[-n:])
    return ""


def progress(cell: Cell) -> str:
    if cell.failure:
        return f"FAILED: {cell.failure}"
    w = cell.window_s
    cpu = f"{cell.cpu['target'] / w * 100:3.0f}%" if "target" in cell.cpu else "   -"
    o1, o0 = others_pct(cell)
    p50, p99 = pct(cell.latencies, 50) * 1000, pct(cell.latencies, 99) * 1000
    return (f"{cell.ok / w:7.0f}/s  p50 {p50:7.2f} ms  p99 {p99:7.2f} ms  target cpu {cpu}  "
            f"others c1/c0 {o1:3.0f}%/{o0:3.0f}%  errors {cell.errors}")


def run_target(name: str, args, sim, tmp: str) -> list[Cell]:
    import uvloop

    cells = [Cell(name, kind, c) for kind, c in CELLS]
    if name == "direct":
        port, headers, log = int(sim.url.rsplit(":", 1)[1]), {}, ""
        server = contextlib.nullcontext()
    else:
        port = free_port()
        spec = target_spec(name, args, sim.url, port, tmp)
        headers = spec.pop("headers", {})
        log = os.path.join(tmp, f"{name}.log")
        server = spawn_cmd(name, spec.pop("cmd"), port, role="target", log_path=log, **spec)
    try:
        with server as proc:
            for cell in cells:
                pids = {"target": proc.pid if proc else None, "sim": sim.pid}
                try:
                    uvloop.run(run_cell(cell, port, raw_request(port, cell.kind, headers), pids, args.warmup,
                                        args.duration))
                except Exception as exc:  # noqa: BLE001 - reported, the next cell still runs
                    cell.failure = f"{type(exc).__name__}: {exc}"
                print(f"  {name:8s} {cell.kind:6s} c={cell.concurrency:<3d} {progress(cell)}", flush=True)
    except (RuntimeError, TimeoutError, OSError, subprocess.SubprocessError) as exc:
        print(f"  {name:8s} FAILED, did not start: {exc}\n{log_tail(log)}", flush=True)
        for cell in cells:
            cell.failure = f"did not start: {exc}"
    return cells


def merge(runs: list[Cell]) -> Cell | None:
    """One cell from the rounds of the same target and cell (None when none ran)."""
    ran = [r for r in runs if not r.failure]
    if not ran:
        return None
    out = Cell(ran[0].target, ran[0].kind, ran[0].concurrency)
    for r in ran:
        out.ok += r.ok
        out.errors += r.errors
        out.window_s += r.window_s
        out.latencies += r.latencies
        for k, v in r.cpu.items():
            out.cpu[k] = out.cpu.get(k, 0.0) + v
        for k, v in r.busy.items():
            out.busy[k] = out.busy.get(k, 0.0) + v
    return out


def versions() -> str:
    from importlib.metadata import PackageNotFoundError, version

    out = []
    for pkg in ("aiohttp", "fastapi", "starlette", "uvicorn", "uvloop", "httptools"):
        with contextlib.suppress(PackageNotFoundError):
            out.append(f"{pkg} {version(pkg)}")
    if os.path.exists(LITELLM_BIN):
        py = os.path.join(os.path.dirname(LITELLM_BIN), "python")
        r = subprocess.run([py, "-c", "from importlib.metadata import version; print(version('litellm'))"],
                           capture_output=True, text=True)
        out.append(f"litellm {r.stdout.strip() or '?'}")
    return ", ".join(out)


def report(cells: dict[tuple[str, str, int], Cell | None], failures: dict[tuple[str, str, int], str],
           targets: list[str]) -> dict:
    def ms(x: float) -> float:
        return x * 1000

    direct_p50 = {(k, c): pct(cell.latencies, 50) for (t, k, c), cell in cells.items() if t == "direct" and cell}
    rows, summary = [], {}
    for t in targets:
        for kind, c in CELLS:
            cell = cells.get((t, kind, c))
            label = f"{kind} c={c}"
            if cell is None:
                rows.append([t, label, *["–"] * 10, f"FAILED: {failures.get((t, kind, c), '?')[:60]}"])
                continue
            w, n = cell.window_s, cell.ok
            p50, p99 = pct(cell.latencies, 50), pct(cell.latencies, 99)
            added = ms(p50 - direct_p50[(kind, c)]) if c == 1 and (kind, c) in direct_p50 and t != "direct" \
                else float("nan")
            cpu = cell.cpu.get("target")
            cpu_req = ms(cpu / n) if cpu is not None and n else float("nan")
            o1, o0 = others_pct(cell)
            summary[(t, kind, c)] = {"rate": n / w, "p50_ms": ms(p50), "p99_ms": ms(p99), "added_p50_ms": added,
                                     "cpu_ms_per_req": cpu_req, "requests": n, "errors": cell.errors}
            rows.append([t, label, n, f(n / w, 0), f(ms(p50)), f(ms(p99)), f(added), f(cpu_req, 3),
                         f(cpu / w * 100, 0) if cpu is not None else "–", f(cell.cpu["sim"] / w * 100, 0),
                         f(cell.cpu["loadgen"] / w * 100, 0), f"{o1:.0f}/{o0:.0f}", cell.errors])
    print()
    print(table(["target", "cell", "requests", "req/s", "p50 ms", "p99 ms", "added p50 ms", "proxy CPU ms/req",
                 "proxy CPU %", "sim CPU %", "loadgen CPU %", "others % c1/c0", "errors"], rows))

    def get(t: str, kind: str, c: int, key: str) -> float:
        return summary.get((t, kind, c), {}).get(key, float("nan"))

    def ratio(a: str, b: str) -> float:  # of the req/s at chat c=64
        x, y = get(a, "chat", 64, "rate"), get(b, "chat", 64, "rate")
        return x / y if y == y and y else float("nan")

    checks = [  # (what, value, goal, passes)
        ("vgate / minimal req/s, chat c=64", ratio("vgate", "minimal"), ">= 0.7", lambda v: v >= 0.7),
        ("vgate / litellm req/s, chat c=64", ratio("vgate", "litellm"), ">= 15", lambda v: v >= 15),
        ("vgate CPU ms per call, chat c=1", get("vgate", "chat", 1, "cpu_ms_per_req"), "< 0.5", lambda v: v < 0.5),
        ("vgate CPU ms per call, chat c=64", get("vgate", "chat", 64, "cpu_ms_per_req"), "< 0.5", lambda v: v < 0.5),
        ("vgate CPU ms per stream, stream c=64", get("vgate", "stream", 64, "cpu_ms_per_req"), "< 1.0",
         lambda v: v < 1.0),
        ("vgate added p50 ms, chat c=1", get("vgate", "chat", 1, "added_p50_ms"), "< 0.5", lambda v: v < 0.5),
        ("minimal / litellm req/s, chat c=64 (context)", ratio("minimal", "litellm"), "–", None),
    ]
    print()
    print(table(["ratio or figure", "value", "goal", "verdict"],
                [[what, f(v, 3 if "CPU" in what else 2), goal,
                  "–" if ok is None else ("no data" if v != v else ("pass" if ok(v) else "FAIL"))]
                 for what, v, goal, ok in checks]))
    return {"cells": {"/".join(map(str, k)): v for k, v in summary.items()},
            "failures": {"/".join(map(str, k)): v for k, v in failures.items()},
            "checks": {what: v for what, v, _, _ in checks}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--targets", default=",".join(ALL_TARGETS), help="comma-separated, from " + ",".join(ALL_TARGETS))
    ap.add_argument("--warmup", type=float, default=2.0, help="seconds per cell before measuring")
    ap.add_argument("--duration", type=float, default=5.0, help="measured seconds per cell and round")
    ap.add_argument("--rounds", type=int, default=1, help="times through the targets, order reversed every round")
    ap.add_argument("--vgate-cmd", default=os.path.join(ROOT, ".venv", "bin", "vgate") + " serve",
                    help="command starting the gateway (--port is appended); another checkout's venv to compare")
    ap.add_argument("--json", default=None, help="also write the results to this file")
    args = ap.parse_args()
    targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    if unknown := set(targets) - set(ALL_TARGETS):
        ap.error(f"unknown targets: {', '.join(sorted(unknown))}")
    if "litellm" in targets and not os.path.exists(LITELLM_BIN):
        print(f"litellm: skipped, {LITELLM_BIN} is missing (bash benchmarks/litellm_env.sh creates it)")
        targets.remove("litellm")

    pin_self("harness")
    print(f"machine: {machine()}\nversions: {versions()}", flush=True)
    started = time.monotonic()
    runs: list[Cell] = []
    sim_port = free_port()
    with tempfile.TemporaryDirectory(prefix="vgate-passthrough-") as tmp, \
            spawn("sim", ["sim", "--port", str(sim_port), "--output-tokens", str(TOKENS), "--model", MODEL,
                          "--log-level", "warning"], sim_port, role="harness") as sim:
        for rnd in range(args.rounds):
            for name in targets if rnd % 2 == 0 else targets[::-1]:
                runs += run_target(name, args, sim, tmp)

    cells, failures = {}, {}
    for t in targets:
        for kind, c in CELLS:
            mine = [r for r in runs if (r.target, r.kind, r.concurrency) == (t, kind, c)]
            cells[(t, kind, c)] = merge(mine)
            if cells[(t, kind, c)] is None:
                failures[(t, kind, c)] = next((r.failure for r in mine if r.failure), "did not run")
    out = report(cells, failures, targets)
    print(f"\n{GOALS}")
    worst = max((max(others_pct(c)) for c in cells.values() if c), default=0.0)
    if worst > 10:
        print(f"WARNING: processes other than ours took up to {worst:.0f}% of a pinned core during a cell: "
              "absolute numbers are depressed and noisy; compare rows of this run only, or rerun when quiet.")
    print(f"{args.rounds} round(s) x ({args.warmup} s warm-up + {args.duration} s measured) per cell; "
          f"total {time.monotonic() - started:.0f} s")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"machine": machine(), "versions": versions(), "args": vars(args), **out}, fh, indent=1)


if __name__ == "__main__":
    main()
