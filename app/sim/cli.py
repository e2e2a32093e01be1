"""Command line of the simulator: `python -m app.sim` or `vgate sim`."""

from __future__ import annotations

import argparse

from app.sim.config import SimConfig

# Latency-model flags: giving any of them turns the latency model on.
_LATENCY_FLAGS = {
    "max_num_seqs": ("--max-num-seqs", int, "slots of the batch (vLLM's --max-num-seqs)"),
    "max_num_batched_tokens": ("--max-num-batched-tokens", int, "token budget of one engine step"),
    "step_base_ms": ("--step-ms", float, "decode step time at batch 1, ms"),
    "step_per_seq_ms": ("--step-per-seq-ms", float, "extra step time per running sequence, ms"),
    "prefill_base_ms": ("--prefill-ms", float, "extra time of a step that prefills, ms"),
    "prefill_per_token_ms": ("--prefill-per-token-ms", float, "prefill time per uncached prompt token, ms"),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the simulator's flags (address, model, latency model, faults) to a parser."""
    defaults = SimConfig()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--model", default=defaults.model, help="served model name (default %(default)s)")
    parser.add_argument("--model-root", default=None, help="`root` reported by /v1/models (default: --model)")
    parser.add_argument("--max-model-len", type=int, default=defaults.max_model_len)
    parser.add_argument("--seed", type=int, default=defaults.seed, help="default sampling seed")
    parser.add_argument("--reasoning", action="store_true", help="think first, like --reasoning-parser qwen3")
    parser.add_argument("--no-auto-tool-choice", action="store_true",
                        help='refuse tool_choice "auto" like a vLLM started without --enable-auto-tool-choice')
    parser.add_argument("--output-tokens", type=int, default=None, help="fixed length of plain-text answers")
    parser.add_argument("--embedding-dim", type=int, default=defaults.embedding_dim,
                        help="length of /v1/embeddings vectors (default %(default)s)")
    parser.add_argument("--latency-model", action="store_true",
                        help="simulate continuous batching and its latency (default: zero latency)")
    for dest, (flag, kind, text) in _LATENCY_FLAGS.items():
        parser.add_argument(flag, dest=dest, type=kind, default=None,
                            help=f"{text} (default {getattr(defaults, dest)}; implies --latency-model)")
    parser.add_argument("--kv-cache-tokens", type=int, default=defaults.kv_cache_tokens,
                        help="KV cache capacity in tokens: prefix cache size and kv_cache_usage_perc")
    parser.add_argument("--fault", default=None, help="fault spec applied to every request, e.g. 'status=503;rate=0.1'")
    parser.add_argument("--log-level", default="warning", choices=["critical", "error", "warning", "info", "debug"])


def config_from_args(args: argparse.Namespace) -> SimConfig:
    """The simulator's configuration from parsed flags."""
    latency = {dest: getattr(args, dest) for dest in _LATENCY_FLAGS if getattr(args, dest) is not None}
    return SimConfig(
        model=args.model,
        model_root=args.model_root,
        max_model_len=args.max_model_len,
        seed=args.seed,
        reasoning=args.reasoning,
        enable_auto_tool_choice=not args.no_auto_tool_choice,
        output_tokens=args.output_tokens,
        embedding_dim=args.embedding_dim,
        kv_cache_tokens=args.kv_cache_tokens,
        latency_model=args.latency_model or bool(latency),
        fault=args.fault,
        **latency,
    )


def run(args: argparse.Namespace) -> None:
    """Serve the simulator with uvicorn (uvloop + httptools) until interrupted."""
    import uvicorn

    from app.sim.server import create_sim_app

    uvicorn.run(create_sim_app(config_from_args(args)), host=args.host, port=args.port, loop="uvloop",
                http="httptools", log_level=args.log_level, access_log=False, lifespan="on",
                timeout_graceful_shutdown=3)  # hung (fault) requests must not block shutdown
