"""``vgate`` command line: serve the gateway, the simulator, the local model, or a demo of all."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from app.procs import refuse_taken_port

if TYPE_CHECKING:
    from app.settings import Settings


WORKER_SETTINGS_ENV = "_VGATE_WORKER_SETTINGS"  # the settings `vgate serve --workers N` validated, as JSON
_MULTIPROC_ENV = ("PROMETHEUS_MULTIPROC_DIR", "prometheus_multiproc_dir")  # prometheus_client reads both


def _serve(args: argparse.Namespace) -> None:
    """``vgate serve``: the gateway under uvicorn; flags override the VGATE_* settings."""
    from pydantic import ValidationError

    from app.settings import Settings

    overrides: dict = {"host": args.host, "port": args.port, "workers": args.workers}
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
    if settings.workers > 1 and not (settings.redis_url and settings.redis_url.get_secret_value()):
        sys.exit(f"vgate serve: --workers {settings.workers} (or VGATE_WORKERS) needs VGATE_REDIS_URL: without a "
                 "shared store each worker would keep its own limits, keys, sessions and agent runs.")
    refuse_taken_port(settings.host, settings.port, "--port (or VGATE_PORT)", "vgate serve")
    options = dict(
        host=settings.host,
        port=settings.port,
        loop="uvloop",
        http="httptools",
        log_config=None,  # our structlog setup owns logging
        access_log=False,
        # after the agent streams' grace (they end with a shutting_down event), whatever is left is closed
        timeout_graceful_shutdown=settings.shutdown_grace_s + 2,
    )
    if settings.workers == 1:
        _serve_one(settings, options)
    else:
        _serve_workers(settings, options)


def _serve_one(settings: Settings, options: dict) -> None:
    """One process: the app built here. A PROMETHEUS_MULTIPROC_DIR in the environment is dropped before
    prometheus_client is imported: one process has nothing to merge, and its values stay in memory."""
    for name in _MULTIPROC_ENV:
        os.environ.pop(name, None)
    import uvicorn

    from app.main import create_app

    uvicorn.run(create_app(settings, freeze_gc=True), **options)


def _serve_workers(settings: Settings, options: dict) -> None:
    """``settings.workers`` uvicorn worker processes on the one port, each building its app from the
    settings validated here (``worker_app``), their metrics merged through prometheus-client's
    multiprocess directory: a private one made here and removed at exit, or the operator's
    PROMETHEUS_MULTIPROC_DIR, emptied of an earlier run's files first."""
    import uvicorn

    workers = settings.workers
    settings = settings.model_copy()
    # The cap stands for vLLM's max_num_seqs: shared out, the workers together keep to it (each
    # worker's scheduler sees only its own calls).
    settings.max_inflight_per_upstream = max(1, settings.max_inflight_per_upstream // workers)
    given = next((os.environ[name] for name in _MULTIPROC_ENV if os.environ.get(name)), None)
    for name in _MULTIPROC_ENV:  # this process (prometheus_client imported just now) keeps no metrics files
        os.environ.pop(name, None)
    from app.logging import get_logger
    from app.main import create_app

    payload = _settings_json(settings)
    # Built once here, from what the workers will read, and dropped: a broken program file or key fails
    # the start with its error, instead of every worker dying at start and being restarted forever.
    # It also configures this process's logging (uvicorn's supervisor: a worker died, restarted).
    create_app(_settings_from_json(payload))
    if given:
        if os.path.exists(given) and not os.path.isdir(given):
            sys.exit(f"vgate serve: PROMETHEUS_MULTIPROC_DIR={given} is not a directory")
        os.makedirs(given, exist_ok=True)
        for stale in Path(given).glob("*.db"):  # an earlier run's values would be added to this one's
            stale.unlink(missing_ok=True)
        metrics_dir = given
    else:
        metrics_dir = tempfile.mkdtemp(prefix="vgate-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir  # the workers, started afresh, inherit both
    os.environ[WORKER_SETTINGS_ENV] = payload
    get_logger("vgate").info("workers_start", workers=workers, metrics_dir=metrics_dir,
                             max_inflight_per_upstream=settings.max_inflight_per_upstream)
    try:
        uvicorn.run("app.cli:worker_app", factory=True, workers=workers, **options)
    finally:
        if not given:
            shutil.rmtree(metrics_dir, ignore_errors=True)


def _settings_json(settings: Settings) -> str:
    """The settings as JSON for the workers, secrets included (a dump masks them)."""
    from pydantic import SecretStr

    def plain(value: object) -> object:
        if isinstance(value, SecretStr):
            return value.get_secret_value()
        if isinstance(value, Path):
            return str(value)
        raise TypeError(f"cannot pass a {type(value).__name__} setting to the workers")

    return json.dumps(settings.model_dump(), default=plain)


def _settings_from_json(payload: str) -> Settings:
    """``_settings_json``'s settings, validated again but not read from the environment or the TOML file."""
    from app.settings import Settings

    return Settings.model_validate(json.loads(payload))


def worker_app():
    """The app of one ``vgate serve --workers N`` worker (uvicorn calls this factory in each worker
    process): the settings the command line validated, so that every worker runs the same configuration."""
    from app.main import create_app

    return create_app(_settings_from_json(os.environ[WORKER_SETTINGS_ENV]), freeze_gc=True)


def _sim(args: argparse.Namespace) -> None:
    """``vgate sim``: the vLLM simulator."""
    from app.sim import cli as sim_cli

    sim_cli.run(args)


def _no_sim(args: argparse.Namespace) -> None:
    """``vgate sim`` where the simulator was left out (the gateway image): say where it is."""
    sys.exit("vgate sim: the simulator is not in this installation (the gateway image leaves it out); "
             "use the image's sim target (docker build --target sim) or install vgate from source")


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
    p.add_argument("--workers", type=int, default=None, metavar="N",
                   help="worker processes on the one port (or VGATE_WORKERS; default 1). More than one needs "
                        "VGATE_REDIS_URL; /metrics then adds up all the workers, and max_inflight_per_upstream "
                        "is shared out between them (each gets 1/N of it, rounded down, at least 1), as each "
                        "worker routes on its own view of the upstreams")
    p.set_defaults(func=_serve)

    try:
        from app.sim import cli as sim_cli
    except ImportError:  # the gateway image leaves the simulator out: its own image (target sim) has it
        p = sub.add_parser("sim", help="the vLLM simulator (not in this installation)", add_help=False,
                           prefix_chars="\0")  # every flag a plain word: whatever follows gets the message
        p.add_argument("args", nargs="*")
        p.set_defaults(func=_no_sim)
    else:
        p = sub.add_parser("sim", help="run the vLLM simulator")
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
