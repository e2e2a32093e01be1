"""Prometheus metrics, one registry per app (so tests can build many apps).

Labels are bounded: routes are route templates, models are the configured or
served names (anything else is reported as ``other``), statuses are codes or a
small set of outcome words. Nothing per user or per request.

Several worker processes (``vgate serve --workers N``): prometheus-client's multiprocess mode. With
PROMETHEUS_MULTIPROC_DIR set when prometheus_client is first imported, every metric of every
registry, the private one of each app included, keeps its value in a file of that directory, one per
process and kind; ``/metrics`` then merges the files of all the workers (``exposition``), so a counter
is the total of all of them. Without the variable (one process, and the tests, which build many apps
in one process) nothing here changes: each app's registry is its own.
"""

from __future__ import annotations

import os
import re
import struct
import threading
import time
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, values
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
FAST_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)


def multiprocess_dir() -> str | None:
    """The directory the metrics live in when prometheus_client runs in multiprocess mode, else None.

    The mode is fixed when prometheus_client is imported (its value class), so that decides, not the
    variable as it is now."""
    if values.ValueClass is values.MutexValue:
        return None
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or os.environ.get("prometheus_multiproc_dir")


# Gauges whose value is a function (Gauge.set_function), in multiprocess mode: the collector reads only
# the files, never the function, so this process writes the functions' values into its file: every
# REFRESH_S in a background thread, and at once before this process answers a scrape.
REFRESH_S = 1.0
_functions: dict[Gauge, Callable[[], float]] = {}
_refresher_pid: int | None = None
_lock = threading.Lock()


def refresh_function_gauges() -> None:
    """Write each function gauge's current value into this process's file (multiprocess mode)."""
    with _lock:
        functions = list(_functions.items())
    for gauge, f in functions:
        try:
            gauge.set(float(f()))
        except Exception:  # a function that fails now keeps its last value; the scrape goes on
            pass


def _refresh_forever() -> None:
    while True:
        time.sleep(REFRESH_S)
        refresh_function_gauges()


class _Gauge(Gauge):
    """A Gauge whose ``set_function`` also works in multiprocess mode (see ``refresh_function_gauges``)."""

    def set_function(self, f: Callable[[], float]) -> None:
        if multiprocess_dir() is None:
            super().set_function(f)
            return
        global _refresher_pid
        with _lock:
            _functions[self] = f
            if _refresher_pid != os.getpid():  # one thread per process (a forked child has none)
                _refresher_pid = os.getpid()
                threading.Thread(target=_refresh_forever, name="vgate-metrics-refresh", daemon=True).start()
        self.set(float(f()))


_LIVE_GAUGE_FILE = re.compile(r"gauge_live[a-z]+_(\d+)\.db")


def _process_gone(pid: int) -> bool:
    """Whether process ``pid`` has exited (a zombie, exited but not yet reaped by uvicorn, counts)."""
    if os.path.isdir("/proc/self"):
        try:
            with open(f"/proc/{pid}/stat") as f:
                return f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
        except FileNotFoundError:
            return True
        except (OSError, IndexError):
            pass
    try:  # no /proc: ask the kernel
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass
    return False


def sweep_dead_processes(path: str) -> None:
    """Drop the live gauges of processes that have exited (uvicorn replaces a worker that dies): their
    in-flight counts would stay in the sums forever. Their counters and histograms stay: totals
    include what a dead worker counted."""
    pids = {int(m[1]) for name in os.listdir(path) if (m := _LIVE_GAUGE_FILE.fullmatch(name))}
    for pid in pids - {os.getpid()}:
        if _process_gone(pid):
            try:
                mark_process_dead(pid, path)
            except FileNotFoundError:
                pass  # another worker, answering a scrape at the same moment, removed it first


class Metrics:
    """The gateway's Prometheus metrics, registered in one registry per app (see the README's metrics table)."""
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        r = self.registry

        # HTTP layer
        self.requests = Counter(
            "vgate_requests", "HTTP requests handled", ["route", "method", "status"], registry=r
        )
        self.request_duration = Histogram(
            "vgate_request_duration_seconds", "HTTP request duration", ["route"],
            buckets=LATENCY_BUCKETS, registry=r,
        )
        # Multiprocess modes (several workers): counts of things in progress are summed over the live
        # workers (livesum); a dead worker's share is dropped (sweep_dead_processes).
        self.requests_in_flight = _Gauge(
            "vgate_requests_in_flight", "HTTP requests being handled", registry=r, multiprocess_mode="livesum"
        )
        self.overhead = Histogram(
            "vgate_overhead_seconds", "Gateway time not spent waiting on the upstream", ["route"],
            buckets=FAST_BUCKETS, registry=r,
        )

        # Upstream (LM client)
        self.upstream_requests = Counter(
            "vgate_upstream_requests", "Upstream calls by outcome", ["model", "outcome"], registry=r
        )
        self.upstream_duration = Histogram(
            "vgate_upstream_request_duration_seconds", "Upstream call duration (retries included)",
            ["model"], buckets=LATENCY_BUCKETS, registry=r,
        )
        self.upstream_ttft = Histogram(
            "vgate_upstream_ttft_seconds", "Upstream time to first token", ["model"],
            buckets=LATENCY_BUCKETS, registry=r,
        )
        self.upstream_in_flight = _Gauge(
            "vgate_upstream_in_flight", "Requests in flight to the upstream", ["upstream"], registry=r,
            multiprocess_mode="livesum",
        )
        # Each worker has its own breaker per upstream: up (1) only while every live worker's is closed
        # (livemin), so one worker that stopped sending it calls shows, as it would with one process.
        self.upstream_up = _Gauge(
            "vgate_upstream_up", "1 while the upstream's circuit breaker is closed", ["upstream"], registry=r,
            multiprocess_mode="livemin",
        )
        # Each worker scrapes vLLM itself, so the values differ by timing only; the highest (livemax) is
        # the one at which some worker starts refusing interactive calls.
        self.upstream_saturation = _Gauge(
            "vgate_upstream_saturation", "vLLM's saturation as routing sees it (1 or more: saturated)",
            ["upstream"], registry=r, multiprocess_mode="livemax",
        )
        self.upstream_breaker = Counter(
            "vgate_upstream_breaker_transitions", "Circuit breaker state changes", ["upstream", "state"], registry=r
        )
        self.upstream_picks = Counter(
            "vgate_upstream_picks", "Calls sent to each upstream, by how it was chosen "
            "(affinity, spill: its prefix's upstream was busy, or the routing policy)",
            ["upstream", "how"], registry=r,
        )
        self.queued = _Gauge(
            "vgate_queued", "Calls waiting in the gateway's queue for a slot", ["model", "priority"], registry=r,
            multiprocess_mode="livesum",
        )
        self.queue_time = Histogram(
            "vgate_queue_seconds", "Time a call waited in the gateway's queue for a slot", ["model", "priority"],
            buckets=(0.001, 0.005, 0.025, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300), registry=r,
        )
        self.shed = Counter(
            "vgate_shed", "Calls refused at once with a 429, by reason: saturated, queue_full, deadline",
            ["model", "priority", "reason"], registry=r,
        )
        self.upstream_errors = Counter(
            "vgate_upstream_errors", "Failed upstream attempts", ["model", "type"], registry=r
        )
        self.upstream_retries = Counter(
            "vgate_upstream_retries", "Upstream retries", ["model", "reason"], registry=r
        )
        self.prompt_tokens = Counter(
            "vgate_prompt_tokens", "Prompt tokens", ["model", "route"], registry=r
        )
        self.completion_tokens = Counter(
            "vgate_completion_tokens", "Completion tokens", ["model", "route"], registry=r
        )
        self.cost = Counter("vgate_cost_usd", "Cost in USD", ["model", "route"], registry=r)

        # /predict
        self.predictions = Counter(
            "vgate_predictions", "Predictions by outcome", ["module", "outcome"], registry=r
        )
        # Repair calls (config.repair): fixed when the repair's reply matched the signature, else failed.
        self.predict_repairs = Counter(
            "vgate_predict_repairs", "Repair calls after a reply that did not match the signature, by outcome",
            ["outcome"], registry=r,
        )
        # Samples of voting predictions (module majority, n > 1): valid ones vote, invalid ones are dropped.
        self.predict_samples = Counter(
            "vgate_predict_samples", "Samples drawn for majority votes, by whether they matched the signature",
            ["outcome"], registry=r,
        )
        for outcome in ("fixed", "failed"):
            self.predict_repairs.labels(outcome=outcome)
        for outcome in ("valid", "invalid"):
            self.predict_samples.labels(outcome=outcome)

        # tools and agent
        self.tool_calls = Counter(
            "vgate_tool_calls", "Tool executions", ["tool", "status"], registry=r
        )
        self.tool_duration = Histogram(
            "vgate_tool_duration_seconds", "Tool execution duration", ["tool"],
            buckets=LATENCY_BUCKETS, registry=r,
        )
        self.tools_in_flight = _Gauge(
            "vgate_tools_in_flight", "Tool executions running", registry=r, multiprocess_mode="livesum"
        )
        self.agent_runs = Counter(
            "vgate_agent_runs", "Agent runs by outcome", ["outcome"], registry=r
        )
        self.agent_steps = Histogram(
            "vgate_agent_steps", "Steps (model turns) per agent run", buckets=(1, 2, 3, 4, 6, 8, 12, 16, 24, 32),
            registry=r,
        )

        # jobs (kind: evaluate, optimize; status: succeeded, failed, cancelled)
        self.jobs = Counter("vgate_jobs", "Jobs finished, by kind and status", ["kind", "status"], registry=r)
        self.jobs_running = _Gauge(
            "vgate_jobs_running", "Jobs running", ["kind"], registry=r, multiprocess_mode="livesum"
        )

        # Access, limits, shared state. key: the key's alias (or id) with metrics_key_alias, else "all"
        self.limit_refusals = Counter(
            "vgate_limit_refusals", "Calls refused by a key's limit", ["limit"], registry=r
        )
        self.key_requests = Counter(
            "vgate_key_requests", "Upstream calls per API key", ["key", "model"], registry=r
        )
        self.key_tokens = Counter(
            "vgate_key_tokens", "Tokens per API key (prompt and completion)", ["key", "model", "kind"], registry=r
        )
        self.key_cost = Counter(
            "vgate_key_cost_usd", "Cost in USD per API key", ["key", "model"], registry=r
        )
        # 0 while any live worker cannot reach the store (that worker's answers are 503s): livemin.
        self.store_up = _Gauge(
            "vgate_store_up", "1 while the shared store (Redis) answers", registry=r, multiprocess_mode="livemin"
        )
        self.store_up.set(1)
        self.store_errors = Counter(
            "vgate_store_errors", "Failed shared-store (Redis) operations", ["op"], registry=r
        )

    def exposition(self) -> bytes:
        """The text ``/metrics`` serves: this app's registry; in multiprocess mode, every worker's
        files merged over a fresh registry (this app's registry would show this worker alone)."""
        path = multiprocess_dir()
        if path is None:
            return generate_latest(self.registry)
        refresh_function_gauges()
        try:
            sweep_dead_processes(path)
            registry = CollectorRegistry()
            MultiProcessCollector(registry, path)
            return generate_latest(registry)
        except (OSError, ValueError, struct.error) as exc:  # the directory gone, a file cut short
            from app.errors import VGateError

            raise VGateError("the workers' metrics could not be read; see the gateway's log", status_code=503,
                             type="metrics_unavailable", retry_after_s=1.0) from exc
