"""Helpers for the fleet tests: several simulators at once (each one's process at hand, to kill it
mid-run), a transport that puts ``x-sim-fault`` on chosen upstream calls and records every attempt,
a live gateway with such a transport, and sums over a metric's labels.

The gateway does not pass a client's ``x-sim-fault`` header on (nor should it): faults are put on
the gateway's upstream calls by :class:`FaultTransport`, keyed by the client's ``X-Request-Id``
(each upstream attempt carries ``<request id>-<n>``).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
from collections import defaultdict
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass

import httpx
from httpx_aiohttp import AiohttpTransport

from app.procs import die_with_parent, stop_processes, wait_healthy
from tests.support import ROOT, free_port, live_gateway, make_settings  # noqa: F401 - live_gateway re-exported

MODEL = "sim-model"


@dataclass
class Sim:
    """One ``vgate sim`` process."""

    url: str
    proc: subprocess.Popen
    args: list[str]
    stderr: object = None

    def kill(self) -> None:
        """SIGKILL, as a crashed vLLM: no goodbye on any connection."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    async def stats(self) -> dict:
        async with httpx.AsyncClient(timeout=10) as c:
            r = await c.get(f"{self.url}/sim/stats")
            r.raise_for_status()
            return r.json()

    async def reset(self) -> None:
        async with httpx.AsyncClient(timeout=10) as c:
            (await c.post(f"{self.url}/sim/reset")).raise_for_status()

    async def requests(self) -> int:
        return (await self.stats())["requests_total"]


@contextmanager
def sims(*argsets: list[str], timeout: float = 60) -> Iterator[list[Sim]]:
    """One simulator per argument list (``["--latency-model"]``, ``[]``, ...), started together, each
    on its own free port; all stopped when the block ends (and killed with this process, on Linux)."""
    with ExitStack() as stack:
        started: list[Sim] = []
        procs: list[subprocess.Popen] = []
        stack.callback(lambda: stop_processes(procs, grace_s=5))
        for args in argsets:
            port = free_port()
            err = stack.enter_context(tempfile.TemporaryFile())
            full = ["sim", *args, "--port", str(port)]
            proc = subprocess.Popen([sys.executable, "-m", "app.cli", *full], cwd=ROOT,
                                    stdout=subprocess.DEVNULL, stderr=err, preexec_fn=die_with_parent())
            procs.append(proc)
            started.append(Sim(f"http://127.0.0.1:{port}", proc, full, err))
        for sim in started:
            try:
                wait_healthy(sim.url, timeout, sim.proc)
            except (RuntimeError, TimeoutError) as e:
                err = sim.stderr
                err.seek(max(0, err.seek(0, os.SEEK_END) - 3000))  # type: ignore[attr-defined]
                tail = err.read().decode(errors="replace")  # type: ignore[attr-defined]
                raise type(e)(f"vgate {' '.join(sim.args)}: {e}\n--- its stderr, last lines:\n{tail}") from None
        yield started


def upstreams(*sims_: Sim | str) -> list[dict]:
    return [{"url": s if isinstance(s, str) else s.url} for s in sims_]


def dead_url() -> str:
    """A local URL nothing listens on (connection refused)."""
    return f"http://127.0.0.1:{free_port()}"


# --------------------------------------------------------------------------- faults on upstream calls


@dataclass
class Rule:
    """Put ``x-sim-fault: fault`` on the upstream calls of one client request: on every upstream, or
    only on ``upstream`` (a URL); only its first ``times`` attempts there (counted across the fleet,
    unlike the simulator's own ``times``, which each simulator counts for itself)."""

    fault: str
    upstream: str | None = None
    times: int | None = None
    fired: int = 0


@dataclass
class Attempt:
    request_id: str  # the client's X-Request-Id
    upstream: str  # the URL it went to
    path: str
    fault: str | None


class FaultTransport(httpx.AsyncBaseTransport):
    """The gateway's upstream transport (aiohttp's, as in production) with faults put on chosen calls
    and every model call recorded: ``attempts_of(request_id)`` is where each attempt of that client
    request went."""

    def __init__(self) -> None:
        self.inner = AiohttpTransport(limits=httpx.Limits(max_connections=512, max_keepalive_connections=512,
                                                          keepalive_expiry=30))
        self.rules: dict[str, Rule] = {}
        self.attempts: list[Attempt] = []
        self._by_request: defaultdict[str, list[Attempt]] = defaultdict(list)
        self._closed = False

    def fault(self, request_id: str, fault: str, *, upstream: str | None = None, times: int | None = None) -> None:
        self.rules[request_id] = Rule(fault, upstream.rstrip("/") if upstream else None, times)

    def attempts_of(self, request_id: str) -> list[Attempt]:
        return list(self._by_request.get(request_id, ()))

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.method == "POST" and request.url.path.startswith("/v1/"):
            upstream_id = request.headers.get("x-request-id", "")
            base = upstream_id.rsplit("-", 1)[0] if "-" in upstream_id else upstream_id
            origin = f"{request.url.scheme}://{request.url.host}:{request.url.port}"
            rule = self.rules.get(base)
            fault = None
            if rule is not None and rule.upstream in (None, origin):
                if rule.times is None or rule.fired < rule.times:
                    rule.fired += 1
                    fault = rule.fault
                    request.headers["x-sim-fault"] = fault
            attempt = Attempt(base, origin, request.url.path, fault)
            self.attempts.append(attempt)
            self._by_request[base].append(attempt)
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        if not self._closed:  # every upstream's client closes the shared transport
            self._closed = True
            await self.inner.aclose()


# --------------------------------------------------------------------------- a live gateway


# --------------------------------------------------------------------------- metrics and streams


def metric_sum(registry, name: str, **match: str) -> float:
    """The sum of ``name``'s samples over the labels not given in ``match``."""
    total = 0.0
    for family in registry.collect():
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in match.items()):
                total += s.value
    return total


def metric(registry, name: str, **labels: str) -> float:
    return registry.get_sample_value(name, labels) or 0.0


def sse_data(text: str) -> list[str]:
    """The ``data:`` payloads of an SSE body, in order."""
    out = []
    for block in text.replace("\r\n", "\n").split("\n\n"):
        lines = [line[5:].lstrip(" ") for line in block.split("\n") if line.startswith("data:")]
        if lines:
            out.append("\n".join(lines))
    return out


def sse_events(text: str) -> list[dict]:
    """``{"event", "data"}`` per event of an SSE body (data decoded as JSON where it is JSON)."""
    out = []
    for block in text.replace("\r\n", "\n").split("\n\n"):
        event, data = "message", []
        for line in block.split("\n"):
            if line.startswith("event:"):
                event = line[6:].strip()
            elif line.startswith("data:"):
                data.append(line[5:].lstrip(" "))
        if data:
            raw = "\n".join(data)
            try:
                value = json.loads(raw)
            except ValueError:
                value = raw
            out.append({"event": event, "data": value})
    return out
