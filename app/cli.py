"""``vgate`` command line: serve the gateway, the simulator, the local model, or a demo of all."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from app.procs import refuse_taken_port


def _serve(args: argparse.Namespace) -> None:
    """``vgate serve``: the gateway under uvicorn; flags override the VGATE_* settings."""
    import uvicorn
    from pydantic import ValidationError

    from app.main import create_app
    from app.settings import Settings

    overrides: dict = {"host": args.host, "port": args.port}
    if args.upstream and len(args.upstream) == 1:
        overrides["upstream_url"] = args.upstream[0]
    elif args.upstream:
        overrides["upstreams"] = [{"url": url} for url in args.upstream]
    if args.model:
        overrides["default_model"] = args.model
    try:
        settings = Settings(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as exc:  # a bad or contradictory setting: say which, without a traceback
        sys.exit("vgate serve: invalid settings:\n" + "\n".join(
            f"  {'.'.join(map(str, e['loc'])) or 'settings'}: {e['msg']}" for e in exc.errors()))
    refuse_taken_port(settings.host, settings.port, "--port (or VGATE_PORT)", "vgate serve")
    uvicorn.run(
        create_app(settings, freeze_gc=True),
        host=settings.host,
        port=settings.port,
        loop="uvloop",
        http="httptools",
        log_config=None,  # our structlog setup owns logging
        access_log=False,
        # after the agent streams' grace (they end with a shutting_down event), whatever is left is closed
        timeout_graceful_shutdown=settings.shutdown_grace_s + 2,
    )


def _sim(args: argparse.Namespace) -> None:
    """``vgate sim``: the vLLM simulator."""
    from app.sim import cli as sim_cli

    sim_cli.run(args)


def _local_llm(args: argparse.Namespace) -> None:
    """``vgate local-llm``: the real local model on llama.cpp; exits 1 first if its port is taken."""
    from app import local_llm

    refuse_taken_port(args.host, args.port, "--port", "vgate local-llm")
    local_llm.run(args.host, args.port, model_path=Path(args.model_path) if args.model_path else None,
                  n_parallel=args.parallel, n_ctx=args.ctx)


def _demo(args: argparse.Namespace) -> None:
    """``vgate demo``: see app.demo."""
    from app import demo

    demo.run(args)


def build_parser() -> argparse.ArgumentParser:
    """The ``vgate`` parser: one subcommand each, its handler in ``func``."""
    parser = argparse.ArgumentParser(prog="vgate", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("serve", help="run the gateway (settings also from VGATE_* env)")
    p.add_argument("--host", default=None)
    p.add_argument("--port", type=int, default=None)
    p.add_argument("--upstream", action="append", default=None, metavar="URL",
                   help="vLLM base URL, e.g. http://127.0.0.1:8000; repeat it for several (or VGATE_UPSTREAMS)")
    p.add_argument("--model", default=None, help="default model name (else the upstream's first)")
    p.set_defaults(func=_serve)

    p = sub.add_parser("sim", help="run the vLLM simulator")
    from app.sim import cli as sim_cli

    sim_cli.add_arguments(p)
    p.set_defaults(func=_sim)

    p = sub.add_parser("local-llm", help="run the real local model (llama.cpp, SmolLM2-135M, CPU)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--model-path", default=None, help="a GGUF file (default: fetched into ~/.cache/vgate)")
    p.add_argument("--parallel", type=int, default=4, help="concurrent sequences (llama.cpp slots)")
    p.add_argument("--ctx", type=int, default=8192, help="total context, split between the slots")
    p.set_defaults(func=_local_llm)

    p = sub.add_parser("demo", help="start the local model and the gateway together",
                       description="Start the local model (llama.cpp) and the gateway in front of it, until "
                                   "Ctrl-C, SIGTERM or SIGHUP stops both, or one of them dies (then exit 1).")
    p.add_argument("--host", default="127.0.0.1", help="the gateway's host (default %(default)s)")
    p.add_argument("--port", type=int, default=8080, help="the gateway's port (default %(default)s)")
    p.add_argument("--llm-port", type=int, default=8000,
                   help="the local model server's port, on 127.0.0.1 (default %(default)s)")
    p.set_defaults(func=_demo)
    return parser


def main(argv: list[str] | None = None) -> None:
    """The ``vgate`` entry point: parse ``argv`` (default sys.argv) and run the subcommand."""
    args = build_parser().parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main()
