"""``vgate demo``: the local model (llama.cpp) and the gateway in front of it, started together.

Both run as children of the demo. It stops both on Ctrl-C, SIGTERM or SIGHUP (then dies by that
signal), or when one of them dies (then exits 1 naming it); the children are SIGKILLed by Linux
if the demo itself is killed hard.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time

from app.procs import die_with_parent, how_it_ended, refuse_taken_port, stop_processes, wait_healthy

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
        """The handler for STOP_SIGNALS: raise _Stop, or hold it while a child is being created."""
        if self._spawning:  # a child is being created: raise once it is tracked, not half-way
            self._pending = signum
            return
        raise _Stop(signum)

    def spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> subprocess.Popen:
        """Start ``argv`` as a tracked child named ``name`` that dies with the demo."""
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
        """Wait until ``proc`` itself serves ``base_url + path``; a DemoError naming it if not."""
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
        """Stop the children, the last started first, ignoring further stop signals meanwhile."""
        for s in STOP_SIGNALS:  # a second Ctrl-C must not abort the cleanup; it is bounded anyway
            signal.signal(s, signal.SIG_IGN)
        stop_processes([proc for _, proc in reversed(self.children)])


def _check_serves_alias(llm_url: str, alias: str, llm_port: int) -> None:
    """Fail unless the server on ``llm_url`` serves ``alias`` (not some other server left on that port)."""
    import httpx

    try:
        ids = [m.get("id") for m in httpx.get(f"{llm_url}/v1/models", timeout=5).json().get("data", [])]
    except (httpx.HTTPError, ValueError, AttributeError) as e:
        raise DemoError(f"{llm_url}/v1/models did not answer properly ({e})") from None
    if alias not in ids:
        raise DemoError(f"{llm_url} serves {ids}, not {alias}: is another server on --llm-port {llm_port}?")


def run(args: argparse.Namespace) -> None:
    """Run the demo with the parsed ``vgate demo`` arguments (``host``, ``port``, ``llm_port``) until stopped."""
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
