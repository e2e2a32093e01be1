"""Every example in examples/ runs against a live gateway in front of the simulator, as a user runs
it: `python examples/NAME.py` with VGATE_BASE_URL, in a process of its own. The test is parametrized
over the directory itself, so a new example without a check here fails (see CHECKS)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Callable

import pytest

from tests.support import ROOT

EXAMPLES_DIR = os.path.join(ROOT, "examples")


def run_example(name: str, url: str, *args: str) -> str:
    env = {**os.environ, "VGATE_BASE_URL": url}
    env.pop("VGATE_API_KEY", None)
    proc = subprocess.run([sys.executable, os.path.join(EXAMPLES_DIR, name), *args], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"{name} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc.stdout


def check_simple_qa(out: str) -> None:
    # the answer is an int, as the signature declares, and the usage line has real numbers
    assert re.search(r"Predict: 'What is 2 \+ 3\?' -> answer=-?\d+ \(int\)\n", out), out
    assert re.search(r"  [1-9]\d* tokens, \$\d+\.\d{5}, \d+ ms on \S+", out), out
    assert "ChainOfThought: answer=" in out and "reasoning: '" in out
    assert re.search(r"Program\('sentiment'\)\.batch: 2 succeeded, 1 failed, [1-9]\d* tokens", out), out
    assert "{'review': 'the wrong field'} -> error invalid_request" in out
    assert re.search(r"\{'text': 'I love it'\} -> (positive|negative|neutral) \(", out), out
    assert "errors are typed: NotFound 404 program_not_found; available: [" in out and "'sentiment'" in out


def check_multi_step(out: str) -> None:
    assert "research_answer: 'Why is the sky blue?'" in out
    steps = [line for line in out.splitlines() if line.startswith("  step ")]
    assert len(steps) >= 3, out  # sub-questions, their answers, the synthesis
    assert re.search(r"trace \((\d+) steps\)", out).group(1) == str(len(steps)), out
    assert "mapped over" in out  # the sub-questions are answered one per item
    assert re.search(r"total: [1-9]\d* tokens, \$\d+\.\d{5}, \d+ ms", out), out


def check_streaming_agent(out: str) -> None:
    assert out.startswith("run run_") and "with tools ['calculator']" in out
    assert re.search(r"-> calculator\(\{\"expression\": \".+\"\}\)", out), out
    assert re.search(r"<- calculator: .+\(\d+(\.\d+)? ms\)", out), out
    assert "\nanswer: " in out
    assert re.search(r"stop: answer after 2 steps, [1-9]\d* tokens, \$\d+\.\d{5}, \d+ ms", out), out


def check_tool_calling(out: str) -> None:
    assert "Tools:" in out and "calculator(expression)  [available]" in out
    assert "calculator('2 * (3 + 4) ** 2 / sqrt(16)') = 24.5  (" in out  # computed, not made up
    assert "calculator('9**9**9**9') -> HTTP 422 tool_error" in out
    assert re.search(r"current_time\(Europe/Paris\) = \{.*\"timezone\": \"Europe/Paris\"", out), out


# Every file in examples/ has an entry: the arguments it runs with and what its output must show.
CHECKS: dict[str, tuple[tuple[str, ...], Callable[[str], None]]] = {
    "simple_qa.py": ((), check_simple_qa),
    "multi_step.py": (("Why is the sky blue?",), check_multi_step),
    "streaming_agent.py": (("--tools", "calculator", "--force-tool", "calculator", "What is 12 * 7?"),
                           check_streaming_agent),
    "tool_calling.py": ((), check_tool_calling),
}

EXAMPLES = sorted(f for f in os.listdir(EXAMPLES_DIR) if f.endswith(".py"))


@pytest.mark.parametrize("name", EXAMPLES)
def test_example_runs_and_prints_real_results(name, gateway_url):
    assert name in CHECKS, f"examples/{name} has no check: add it to CHECKS in {__file__}"
    args, check = CHECKS[name]
    check(run_example(name, gateway_url, *args))


def test_every_check_names_an_example():
    assert sorted(CHECKS) == EXAMPLES


def test_the_readmes_python_client_snippet_runs_as_written(sim_url, tmp_path):
    """The README's "Python client" block, run as it is (against a gateway whose programs directory is
    a copy, since optimize saves a new version there). Needs /evaluate and /optimize."""
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
