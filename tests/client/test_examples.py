"""Every example in examples/ runs against a live gateway in front of the simulator, as a user runs
it: `python examples/NAME.py` with VGATE_BASE_URL, in a process of its own."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.support import ROOT


def run_example(name: str, url: str, *args: str) -> str:
    env = {**os.environ, "VGATE_BASE_URL": url}
    env.pop("VGATE_API_KEY", None)
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "examples", name), *args], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"{name} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def test_simple_qa(gateway_url):
    out = run_example("simple_qa.py", gateway_url)
    assert "Predict: 'What is 2 + 3?' -> answer=" in out and "(int)" in out
    assert "ChainOfThought: answer=" in out and "reasoning:" in out
    assert "Program('sentiment').batch: 2 succeeded, 1 failed" in out
    assert "-> error invalid_request" in out
    assert "errors are typed: NotFound 404 program_not_found" in out


def test_multi_step(gateway_url):
    out = run_example("multi_step.py", gateway_url, "Why is the sky blue?")
    assert "research_answer: 'Why is the sky blue?'" in out
    steps = [line for line in out.splitlines() if line.startswith("  step ")]
    assert len(steps) >= 3, out  # sub-questions, their answers, the synthesis
    assert "mapped over" in out  # the sub-questions are answered one per item
    assert "total: " in out and "tokens" in out


def test_streaming_agent(gateway_url):
    out = run_example("streaming_agent.py", gateway_url, "--tools", "calculator", "--force-tool", "calculator",
                      "What is 12 * 7?")
    assert out.startswith("run run_") and "with tools ['calculator']" in out
    assert "-> calculator(" in out and "<- calculator:" in out
    assert "\nanswer: " in out and "stop: answer after 2 steps" in out


def test_tool_calling(gateway_url):
    out = run_example("tool_calling.py", gateway_url)
    assert "Tools:" in out and "calculator(expression)  [available]" in out
    assert "calculator('2 * (3 + 4) ** 2 / sqrt(16)') = 24.5" in out
    assert "calculator('9**9**9**9') -> HTTP 422 tool_error" in out
    assert "current_time(Europe/Paris) =" in out


def test_the_readmes_python_client_snippet_runs_as_written(sim_url, tmp_path):
    """The README's "Python client" block, run as it is (against a gateway whose programs directory is
    a copy, since optimize saves a new version there). Needs /evaluate and /optimize."""
    import re
    import shutil

    from tests.support import live_gateway

    readme = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    section = readme.split("## Python client", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    shutil.copytree(os.path.join(ROOT, "app", "programs"), tmp_path, dirs_exist_ok=True)
    with live_gateway(sim_url, programs_dir=tmp_path) as (url, _):
        code = code.replace('"http://localhost:8080"', repr(url))
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                              env={k: v for k, v in os.environ.items() if not k.startswith("VGATE_")})
    assert proc.returncode == 0, proc.stderr
    assert "final" in proc.stdout
