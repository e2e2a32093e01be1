"""What an upstream's ``/metrics`` says about its load, and the saturation score routing reads.

vLLM exports ``vllm:num_requests_waiting``, ``vllm:num_requests_running`` and
``vllm:kv_cache_usage_perc`` (older servers: ``vllm:gpu_cache_usage_perc``), one series per engine
and model; the gauges are summed (the KV use: the largest). The score, as llm-d's saturation detector
has it, is the larger of waiting/queue-threshold and KV use/KV-threshold: 1 or more is saturated.
A server without those series (llama.cpp, an old vLLM) is scored on the gateway's own counts alone;
one whose metrics stopped coming (a scrape failing or late) counts as saturated.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

_GAUGES = {
    "vllm:num_requests_waiting": "waiting",
    "vllm:num_requests_running": "running",
    "vllm:kv_cache_usage_perc": "kv",
    "vllm:gpu_cache_usage_perc": "kv_old",
}


@dataclass(frozen=True, slots=True)
class LoadReport:
    """vLLM's load as its /metrics reports it: requests waiting and running, KV-cache use."""
    waiting: float = 0.0
    running: float = 0.0
    kv_usage: float = 0.0


def parse_vllm_metrics(text: str) -> LoadReport | None:
    """The load gauges from Prometheus text, or None when the text has none of vLLM's."""
    found: dict[str, float] = {}
    for line in text.splitlines():
        if not line.startswith("vllm:"):
            continue
        brace = line.find("{")
        space = line.find(" ")
        end = brace if brace != -1 and (space == -1 or brace < space) else space
        key = _GAUGES.get(line[:end])
        if key is None:
            continue
        try:
            value = float(line[line.rindex("}") + 1 if brace == end else end:].split()[0])
        except (ValueError, IndexError):
            continue
        if math.isnan(value):
            continue
        if key in ("kv", "kv_old"):
            found[key] = max(found.get(key, 0.0), value)
        else:
            found[key] = found.get(key, 0.0) + value
    if not found:
        return None
    return LoadReport(waiting=found.get("waiting", 0.0), running=found.get("running", 0.0),
                      kv_usage=found.get("kv", found.get("kv_old", 0.0)))


def saturation(report: LoadReport, queue_threshold: float, kv_threshold: float) -> float:
    """How close an upstream is to saturated: the larger of queue and KV use over their thresholds (1: saturated)."""
    return max(report.waiting / queue_threshold, report.kv_usage / kv_threshold)
