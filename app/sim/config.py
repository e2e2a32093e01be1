"""Simulator configuration: every option of the simulated vLLM server in one dataclass."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class SimConfig:
    """Options of the simulated vLLM 0.33 server.

    The latency model is off by default: every request is answered as fast as
    the process can build it (zero-latency mode, for overhead benchmarks).
    """

    # Served model, as `vllm serve <root> --served-model-name <model> --max-model-len N` would.
    model: str = "sim-model"
    model_root: str | None = None  # `root` in /v1/models; defaults to `model`
    max_model_len: int = 8192
    version: str = "0.33.0"

    # Generation.
    seed: int = 0  # default sampling seed; a request's `seed` replaces it
    reasoning: bool = False  # like `--reasoning-parser qwen3`: think first, in `reasoning`
    enable_auto_tool_choice: bool = True  # like `--enable-auto-tool-choice --tool-call-parser hermes`
    output_tokens: int | None = None  # fixed length of plain-text answers (benchmarks)
    embedding_dim: int = 384  # length of /v1/embeddings vectors (the largest `dimensions` a request may ask)

    # Continuous-batching latency model (engine.py).
    latency_model: bool = False
    max_num_seqs: int = 256
    max_num_batched_tokens: int = 2048
    step_base_ms: float = 8.0  # decode step time at batch 1 ...
    step_per_seq_ms: float = 0.06  # ... plus this per running sequence (~2.9x at 256)
    prefill_base_ms: float = 22.0  # extra time of a step that prefills anything ...
    prefill_per_token_ms: float = 0.25  # ... plus this per prefilled prompt token
    kv_cache_tokens: int = 262_144  # KV capacity behind vllm:kv_cache_usage_perc

    # Fault injection: a spec in the `x-sim-fault` syntax applied to requests without that header.
    fault: str | None = None

    def __post_init__(self) -> None:
        positive = {
            "max_model_len": self.max_model_len,
            "max_num_seqs": self.max_num_seqs,
            "max_num_batched_tokens": self.max_num_batched_tokens,
            "kv_cache_tokens": self.kv_cache_tokens,
            "embedding_dim": self.embedding_dim,
        }
        if self.output_tokens is not None:
            positive["output_tokens"] = self.output_tokens
        for name, value in positive.items():
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        for name in ("step_base_ms", "step_per_seq_ms", "prefill_base_ms", "prefill_per_token_ms"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not self.model:
            raise ValueError("model must not be empty")
        if self.fault:
            from app.sim.faults import FaultSpec

            FaultSpec.parse(self.fault)  # fail at start-up, not on the first request
