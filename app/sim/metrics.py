"""Counters of the simulator, served as vLLM-style Prometheus metrics and as JSON.

The numbers live in plain attributes (cheap to bump on the hot path) and a
custom collector renders them on scrape, in the simulator's own registry.
`reset()` zeroes the counters and sets the peak to the current running count.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from app.sim.engine import Engine

FINISHED_REASONS = ("stop", "length", "abort")


class SimStats:
    """The simulator's counters and its vLLM-style /metrics (requests, queue, KV cache, prefix cache, faults)."""
    def __init__(self, engine: Engine, model: str) -> None:
        self.engine = engine
        self.model = model
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_Collector(self))
        self.reset()

    def reset(self) -> None:
        """Zero every counter."""
        self.requests_total = 0
        self.requests_aborted = 0
        self.prompt_tokens = 0
        self.generation_tokens = 0
        self.success = dict.fromkeys(FINISHED_REASONS, 0)
        self.faults: dict[str, int] = {}
        self.engine.reset_peak()
        self.engine.prefix_cache.queries = self.engine.prefix_cache.hits = 0

    def finished(self, reason: str, prompt_tokens: int, generation_tokens: int) -> None:
        """An engine request (one prompt) ended: `reason` is stop, length or abort (tool_calls counts
        as stop, as in vLLM). `requests_aborted` counts HTTP requests and is the server's to bump."""
        self.success["stop" if reason == "tool_calls" else reason] += 1
        self.prompt_tokens += prompt_tokens
        self.generation_tokens += generation_tokens

    def fault(self, kind: str) -> None:
        """Count an injected fault of a kind."""
        self.faults[kind] = self.faults.get(kind, 0) + 1

    def snapshot(self) -> dict[str, Any]:
        """The counters and the engine's state as a dict (the simulator's /sim/stats)."""
        return {
            "num_requests_running": self.engine.running,
            "num_requests_waiting": self.engine.waiting,
            "peak_num_requests_running": self.engine.peak_running,
            "kv_cache_usage_perc": self.engine.kv_cache_usage(),
            "requests_total": self.requests_total,
            "requests_aborted_total": self.requests_aborted,
            "prompt_tokens_total": self.prompt_tokens,
            "generation_tokens_total": self.generation_tokens,
            "prefix_cache_queries_total": self.engine.prefix_cache.queries,
            "prefix_cache_hits_total": self.engine.prefix_cache.hits,
            "request_success_total": dict(self.success),
            "faults_injected_total": dict(self.faults),
        }

    def render(self) -> bytes:
        """The /metrics text, in vLLM's metric names."""
        return generate_latest(self.registry)


class _Collector:
    def __init__(self, stats: SimStats) -> None:
        self.stats = stats

    def collect(self) -> Iterator[Metric]:
        s = self.stats
        labels = ["model_name", "engine"]
        values = [s.model, "0"]

        def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
            family = GaugeMetricFamily(name, doc, labels=labels)
            family.add_metric(values, value)
            return family

        def counter(name: str, doc: str, value: float) -> CounterMetricFamily:
            family = CounterMetricFamily(name, doc, labels=labels)
            family.add_metric(values, value)
            return family

        yield gauge("vllm:num_requests_running", "Requests in model execution batches.", s.engine.running)
        yield gauge("vllm:num_requests_waiting", "Requests waiting to be processed.", s.engine.waiting)
        yield gauge("vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage.",
                    s.engine.kv_cache_usage())
        yield counter("vllm:prompt_tokens", "Number of prefill tokens processed.", s.prompt_tokens)
        yield counter("vllm:generation_tokens", "Number of generation tokens processed.", s.generation_tokens)
        yield counter("vllm:prefix_cache_queries", "Prefix cache queries, in tokens.", s.engine.prefix_cache.queries)
        yield counter("vllm:prefix_cache_hits", "Prefix cache hits, in tokens.", s.engine.prefix_cache.hits)
        success = CounterMetricFamily("vllm:request_success", "Count of finished requests by reason.",
                                      labels=[*labels, "finished_reason"])
        for reason, count in s.success.items():
            success.add_metric([*values, reason], count)
        yield success
        yield GaugeMetricFamily("sim:peak_num_requests_running",
                                "Most requests running at once since start or /sim/reset.",
                                value=s.engine.peak_running)
        yield CounterMetricFamily("sim:requests", "Requests received by the model endpoints (chat, completions, "
                                  "responses, embeddings).", value=s.requests_total)
        yield CounterMetricFamily("sim:requests_aborted", "Requests whose client left before the response ended.",
                                  value=s.requests_aborted)
        faults = CounterMetricFamily("sim:faults_injected", "Faults injected, by kind.", labels=["kind"])
        for kind, count in sorted(s.faults.items()):
            faults.add_metric([kind], count)
        yield faults
