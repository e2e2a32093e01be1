"""Prometheus metrics, one registry per app (so tests can build many apps).

Labels are bounded: routes are route templates, models are the configured or
served names (anything else is reported as ``other``), statuses are codes or a
small set of outcome words. Nothing per user or per request.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
FAST_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)


class Metrics:
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
        self.requests_in_flight = Gauge(
            "vgate_requests_in_flight", "HTTP requests being handled", registry=r
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
        self.upstream_in_flight = Gauge(
            "vgate_upstream_in_flight", "Requests in flight to the upstream", ["upstream"], registry=r
        )
        self.upstream_up = Gauge(
            "vgate_upstream_up", "1 while the upstream's circuit breaker is closed", ["upstream"], registry=r
        )
        self.upstream_saturation = Gauge(
            "vgate_upstream_saturation", "vLLM's saturation as routing sees it (1 or more: saturated)",
            ["upstream"], registry=r,
        )
        self.upstream_breaker = Counter(
            "vgate_upstream_breaker_transitions", "Circuit breaker state changes", ["upstream", "state"], registry=r
        )
        self.upstream_picks = Counter(
            "vgate_upstream_picks", "Calls sent to each upstream, by how it was chosen "
            "(affinity, spill: its prefix's upstream was busy, or the routing policy)",
            ["upstream", "how"], registry=r,
        )
        self.queued = Gauge(
            "vgate_queued", "Calls waiting in the gateway's queue for a slot", ["model", "priority"], registry=r
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

        # tools and agent
        self.tool_calls = Counter(
            "vgate_tool_calls", "Tool executions", ["tool", "status"], registry=r
        )
        self.tool_duration = Histogram(
            "vgate_tool_duration_seconds", "Tool execution duration", ["tool"],
            buckets=LATENCY_BUCKETS, registry=r,
        )
        self.tools_in_flight = Gauge(
            "vgate_tools_in_flight", "Tool executions running", registry=r
        )
        self.agent_runs = Counter(
            "vgate_agent_runs", "Agent runs by outcome", ["outcome"], registry=r
        )
        self.agent_steps = Histogram(
            "vgate_agent_steps", "Steps (model turns) per agent run", buckets=(1, 2, 3, 4, 6, 8, 12, 16, 24, 32),
            registry=r,
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
        self.store_up = Gauge(
            "vgate_store_up", "1 while the shared store (Redis) answers", registry=r
        )
        self.store_up.set(1)
        self.store_errors = Counter(
            "vgate_store_errors", "Failed shared-store (Redis) operations", ["op"], registry=r
        )
