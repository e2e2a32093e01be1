"""``vgate`` command line: serve the gateway, the simulator, the local model, or a demo of all."""

from __future__ import annotations

import argparse
import contextlib
import errno
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

DEMO_CURLS = """
vgate is up on http://{host}:{port} in front of the local model (SmolLM2-135M on llama.cpp, CPU)
on http://127.0.0.1:{llm_port}. Other ports: vgate demo --port GATEWAY_PORT --llm-port MODEL_PORT.

The demo model is tiny (135M parameters): its answers are often wrong, but their types are always
right (an int is an int, a label is one of the labels), which is what vgate guarantees.

  curl -s http://{host}:{port}/predict -H 'content-type: application/json' \\
    -d '{{"signature": "question -> answer: int", "inputs": {{"question": "What is 2 + 3?"}}}}'

  curl -s http://{host}:{port}/predict -H 'content-type: application/json' \\
    -d '{{"signature": "question -> answer", "module": "chain_of_thought",
         "inputs": {{"question": "Why is the sky blue?"}}}}'

  curl -s http://{host}:{port}/predict -H 'content-type: application/json' \\
    -d '{{"program": "sentiment", "batch": [{{"text": "I love it"}}, {{"text": "Awful service"}}]}}'

  curl -s http://{host}:{port}/predict/programs
  curl -s http://{host}:{port}/metrics | grep ^vgate_

Ctrl-C (or SIGTERM, SIGHUP) stops both.
"""

# Signals that stop the demo, its local model and its gateway: Ctrl-C, and how make, systemd,
# Docker and CI runners stop a process (SIGTERM), and a closed terminal (SIGHUP).
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def _serve(args: argparse.Namespace) -> None:
    import uvicorn

    from app.main import create_app
    from app.settings import Settings

    overrides = {"host": args.host, "port": args.port}
    if args.upstream:
        overrides["upstream_url"] = args.upstream
    if args.model:
        overrides["default_model"] = args.model
    settings = Settings(**{k: v for k, v in overrides.items() if v is not None})
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        loop="uvloop",
        http="httptools",
        log_config=None,  # our structlog setup owns logging
        access_log=False,
        timeout_graceful_shutdown=10,
    )


def _sim(args: argparse.Namespace) -> None:
    from app.sim import cli as sim_cli

    sim_cli.run(args)


def _local_llm(args: argparse.Namespace) -> None:
    from app import local_llm

    refuse_taken_port(args.host, args.port, "--port", "vgate local-llm")
    local_llm.run(args.host, args.port, model_path=Path(args.model_path) if args.model_path else None,
                  n_parallel=args.parallel, n_ctx=args.ctx)


# --- ports and processes -------------------------------------------------------------------------


def port_in_use(host: str, port: int) -> bool:
    """Whether a server could not bind ``host:port`` now because something else holds it.

    Binds with SO_REUSEADDR as uvicorn and llama.cpp do, so a socket left in TIME_WAIT does not count.
    Other bind errors (a host that is not local, a privileged port) are left for the server to report."""
    try:
        family, kind, proto, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                          flags=socket.AI_PASSIVE)[0]
    except socket.gaierror:
        return False
    with socket.socket(family, kind, proto) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(addr)
        except OSError as e:
            return e.errno == errno.EADDRINUSE
    return False


def refuse_taken_port(host: str, port: int, flag: str, what: str) -> None:
    """Exit 1 with a message naming the port and the flag that changes it, if the port is taken."""
    if port_in_use(host, port):
        sys.exit(f"{what}: port {port} on {host} is already in use (an earlier vgate demo or another "
                 f"server still running?). Stop that, or choose another port with {flag}.")


def _listening_inodes(port: int) -> set[str] | None:
    """Inodes of the TCP sockets listening on ``port`` (Linux /proc); None where /proc cannot tell."""
    inodes: set[str] = set()
    readable = False
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        readable = True
        for row in rows:
            f = row.split()
            if len(f) > 9 and f[3] == "0A" and int(f[1].rsplit(":", 1)[1], 16) == port:  # 0A: LISTEN
                inodes.add(f[9])
    return inodes if readable else None


def serves_port(pid: int, port: int) -> bool | None:
    """Whether process ``pid`` itself holds the socket listening on ``port``; None where that cannot be
    told (no /proc: not Linux)."""
    inodes = _listening_inodes(port)
    if inodes is None:
        return None
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except FileNotFoundError:
        return False
    except OSError:
        return None
    for fd in fds:
        with contextlib.suppress(OSError):
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
            if link.startswith("socket:[") and link[8:-1] in inodes:
                return True
    return False


def how_it_ended(returncode: int) -> str:
    if returncode < 0:
        with contextlib.suppress(ValueError):
            return f"was killed by {signal.Signals(-returncode).name}"
        return f"was killed by signal {-returncode}"
    return f"exited with code {returncode}"


def wait_healthy(base_url: str, timeout: float, proc: subprocess.Popen | None = None, path: str = "/health") -> None:
    """Wait until ``base_url + path`` answers 200 (llama.cpp opens its port before the model is loaded).

    Given ``proc``, the process that should be serving there, an answer counts only while ``proc`` is
    alive and (on Linux) itself holds the listening port: a server left on that port by an earlier run
    answers at once, while ``proc`` is still starting and about to fail to bind."""
    import httpx

    port = httpx.URL(base_url).port
    deadline = time.monotonic() + timeout
    someone_else = False
    while True:
        if proc is not None and proc.poll() is not None:
            hint = f" (another server answers there: port {port} is taken)" if someone_else else ""
            raise RuntimeError(f"process {proc.pid} {how_it_ended(proc.returncode)} "
                               f"before {base_url} was healthy{hint}")
        if time.monotonic() >= deadline:
            break
        try:
            ok = httpx.get(base_url + path, timeout=2).status_code == 200
        except httpx.HTTPError:
            ok = False
        if ok:
            if proc is None:
                return
            owner = serves_port(proc.pid, port) if port is not None else None
            if proc.poll() is None and owner is not False:
                return
            someone_else = owner is False
        time.sleep(0.2)
    if someone_else:
        raise RuntimeError(f"{base_url}{path} answers, but not from process {proc.pid}: something else "
                           f"holds port {port}")
    raise TimeoutError(f"{base_url}{path} not healthy after {timeout}s")


def die_with_parent() -> Callable[[], None] | None:
    """A ``preexec_fn`` that has Linux SIGKILL the child when the process that started it dies, even by
    SIGKILL (prctl PR_SET_PDEATHSIG), so a server never outlives its demo or test run. None elsewhere.

    Linux sends it when the *thread* that started the child exits: start children from the main thread."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def preexec() -> None:  # runs in the child, between fork and exec
        pr_set_pdeathsig = 1
        if prctl(pr_set_pdeathsig, ctypes.c_ulong(signal.SIGKILL), ctypes.c_ulong(0), ctypes.c_ulong(0),
                 ctypes.c_ulong(0)) == 0 and os.getppid() != parent:
            os._exit(1)  # the parent died before prctl took effect: do not start orphaned

    return preexec


def stop_process(proc: subprocess.Popen, grace_s: float = 10) -> None:
    """SIGTERM, then SIGKILL if it has not exited within ``grace_s``."""
    stop_processes([proc], grace_s)


def stop_processes(procs: list[subprocess.Popen], grace_s: float = 10) -> None:
    """SIGTERM all at once, then SIGKILL those not exited within ``grace_s`` (one deadline for all)."""
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
    deadline = time.monotonic() + grace_s
    for proc in procs:
        try:
            proc.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# --- the demo --------------------------------------------------------------------------------------


class _Stop(BaseException):
    """A stop signal arrived: unwinds the demo into its one shutdown path (like KeyboardInterrupt)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


class DemoError(Exception):
    """The demo cannot go on; the message says why."""


class _Demo:
    """The demo's children, its signal handling and its one way to stop."""

    def __init__(self) -> None:
        self.children: list[tuple[str, subprocess.Popen]] = []
        self._spawning = False
        self._pending: int | None = None
        self._preexec = die_with_parent()

    def on_signal(self, signum: int, _frame: object) -> None:
        if self._spawning:  # a child is being created: raise once it is tracked, not half-way
            self._pending = signum
            return
        raise _Stop(signum)

    def spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> subprocess.Popen:
        self._spawning = True
        try:
            proc = subprocess.Popen(argv, env=env, preexec_fn=self._preexec)  # the demo runs no threads
            self.children.append((name, proc))
        finally:
            self._spawning = False
        if self._pending is not None:
            raise _Stop(self._pending)
        return proc

    def wait_up(self, name: str, proc: subprocess.Popen, base_url: str, timeout: float, path: str) -> None:
        try:
            wait_healthy(base_url, timeout, proc, path=path)
        except (RuntimeError, TimeoutError) as e:
            raise DemoError(f"{name} did not come up: {e}") from None

    def watch(self) -> None:
        """Until a child dies: then stop, naming it."""
        while True:
            for name, proc in self.children:
                if proc.poll() is not None:
                    others = " and ".join(n for n, p in self.children if p is not proc) or "the demo"
                    raise DemoError(f"{name} (pid {proc.pid}) {how_it_ended(proc.returncode)} "
                                    f"while the demo ran; stopping {others}")
            time.sleep(0.2)

    def shutdown(self) -> None:
        for s in STOP_SIGNALS:  # a second Ctrl-C must not abort the cleanup; it is bounded anyway
            signal.signal(s, signal.SIG_IGN)
        stop_processes([proc for _, proc in reversed(self.children)])


def _check_serves_alias(llm_url: str, alias: str, llm_port: int) -> None:
    import httpx

    try:
        ids = [m.get("id") for m in httpx.get(f"{llm_url}/v1/models", timeout=5).json().get("data", [])]
    except (httpx.HTTPError, ValueError, AttributeError) as e:
        raise DemoError(f"{llm_url}/v1/models did not answer properly ({e})") from None
    if alias not in ids:
        raise DemoError(f"{llm_url} serves {ids}, not {alias}: is another server on --llm-port {llm_port}?")


def _demo(args: argparse.Namespace) -> None:
    from app import local_llm

    refuse_taken_port(args.host, args.port, "--port", "vgate demo: the gateway")
    refuse_taken_port("127.0.0.1", args.llm_port, "--llm-port", "vgate demo: the local model")
    llm_url, gw_url = f"http://127.0.0.1:{args.llm_port}", f"http://{args.host}:{args.port}"
    llm_name, gw_name = "the llama.cpp server", "the gateway"
    demo = _Demo()
    for s in STOP_SIGNALS:
        signal.signal(s, demo.on_signal)
    stopped_by: int | None = None
    failure: str | None = None
    try:
        local_llm.ensure_xllamacpp()
        local_llm.ensure_model()
        llm = demo.spawn(llm_name, [sys.executable, "-m", "app.cli", "local-llm", "--host", "127.0.0.1",
                                    "--port", str(args.llm_port)])
        demo.wait_up(llm_name, llm, llm_url, 300, "/health")
        _check_serves_alias(llm_url, local_llm.MODEL_ALIAS, args.llm_port)
        env = {**os.environ, "VGATE_UPSTREAM_URL": llm_url,
               "VGATE_LOG_FORMAT": os.environ.get("VGATE_LOG_FORMAT", "console")}
        gw = demo.spawn(gw_name, [sys.executable, "-m", "app.cli", "serve", "--host", args.host,
                                  "--port", str(args.port)], env)
        demo.wait_up(gw_name, gw, gw_url, 60, "/healthz")
        print(DEMO_CURLS.format(host=args.host, port=args.port, llm_port=args.llm_port), flush=True)
        demo.watch()
    except _Stop as e:
        stopped_by = e.signum
        running = " and ".join(n for n, p in demo.children if p.poll() is None) or "nothing started yet"
        print(f"vgate demo: {signal.Signals(stopped_by).name}: stopping {running}", file=sys.stderr, flush=True)
    except DemoError as e:
        failure = str(e)
    finally:
        demo.shutdown()
    if failure is not None:
        sys.exit(f"vgate demo: {failure}")
    if stopped_by is not None:
        # Die by the same signal, as a well-behaved child of a shell, make or systemd does.
        sys.stdout.flush()
        sys.stderr.flush()
        signal.signal(stopped_by, signal.SIG_DFL)
        os.kill(os.getpid(), stopped_by)
        sys.exit(128 + stopped_by)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vgate", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("serve", help="run the gateway (settings also from VGATE_* env)")
    p.add_argument("--host", default=None)
    p.add_argument("--port", type=int, default=None)
    p.add_argument("--upstream", default=None, help="vLLM base URL, e.g. http://127.0.0.1:8000")
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
    args = build_parser().parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main()
