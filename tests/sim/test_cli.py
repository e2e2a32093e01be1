"""The command line: flags -> SimConfig, and `python -m app.sim` serving."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

import httpx

from app.sim.cli import add_arguments, config_from_args
from tests.sim.helpers import USER, free_port

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def parse(*argv: str):
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(argv)
    return args, config_from_args(args)


def test_defaults_are_zero_latency():
    args, cfg = parse()
    assert (args.host, args.port) == ("127.0.0.1", 8000)
    assert cfg.model == "sim-model" and cfg.max_model_len == 8192 and not cfg.latency_model
    assert cfg.enable_auto_tool_choice and not cfg.reasoning and cfg.fault is None


def test_flags_map_to_config():
    _, cfg = parse("--model", "qwen3", "--model-root", "Qwen/Qwen3-8B", "--max-model-len", "4096", "--seed", "3",
                   "--reasoning", "--no-auto-tool-choice", "--output-tokens", "20", "--fault", "status=503;rate=0.1")
    assert (cfg.model, cfg.model_root, cfg.max_model_len, cfg.seed) == ("qwen3", "Qwen/Qwen3-8B", 4096, 3)
    assert cfg.reasoning and not cfg.enable_auto_tool_choice and cfg.output_tokens == 20
    assert cfg.fault == "status=503;rate=0.1"
    _, cfg = parse("--latency-model")
    assert cfg.latency_model and cfg.max_num_seqs == 256 and cfg.step_base_ms == 8.0
    _, cfg = parse("--step-ms", "5", "--max-num-seqs", "16")  # a latency flag turns the model on
    assert cfg.latency_model and cfg.step_base_ms == 5 and cfg.max_num_seqs == 16


def test_embedding_dim_flag():
    assert parse()[1].embedding_dim == 384
    assert parse("--embedding-dim", "1024")[1].embedding_dim == 1024


def test_python_dash_m_serves():
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "app.sim", "--port", str(port)], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}") as c:
            deadline = time.monotonic() + 20
            while True:
                try:
                    assert c.get("/health").status_code == 200
                    break
                except httpx.ConnectError:
                    assert proc.poll() is None, proc.stderr.read().decode()
                    assert time.monotonic() < deadline, "the simulator did not start"
                    time.sleep(0.05)
            r = c.post("/v1/chat/completions", json={"messages": USER})
            assert r.status_code == 200 and r.json()["object"] == "chat.completion"
    finally:
        proc.terminate()
        assert proc.wait(10) is not None
