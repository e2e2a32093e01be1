"""The Dockerfile, read without a container engine: its stages, and that the gateway image's
package, pruned as the Dockerfile prunes it, still serves."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys

import httpx

from app.procs import stop_process, wait_healthy
from tests.deploy.support import ROOT, dockerfile_stages
from tests.support import free_port

STAGES = dockerfile_stages()
BY_NAME = {s["name"]: s for s in STAGES}


def run_lines(stage) -> str:
    return "\n".join(rest for word, rest in stage["instructions"] if word == "RUN")


def test_stages_and_default_target():
    assert [s["name"] for s in STAGES] == ["build", "runtime", "sim", "gateway"]
    assert STAGES[-1]["name"] == "gateway"  # `docker build .` gives the gateway


def test_runtime_images_run_as_a_user_with_a_healthcheck():
    for name in ("sim", "gateway"):
        words = [w for w, _ in BY_NAME[name]["instructions"]]
        user = [rest for w, rest in BY_NAME[name]["instructions"] if w == "USER"]
        assert user and user[-1] not in ("root", "0"), name
        assert "HEALTHCHECK" in words and "ENTRYPOINT" in words, name
    health = next(rest for w, rest in BY_NAME["gateway"]["instructions"] if w == "HEALTHCHECK")
    assert "/healthz" in health and "VGATE_PORT" in health


def test_no_build_tools_in_the_runtime_images():
    """The runtime stages copy an installed prefix; they install nothing, and drop pip itself."""
    for name in ("runtime", "sim", "gateway"):
        text = run_lines(BY_NAME[name])
        assert not re.search(r"pip install|apt-get|apk add|gcc|build-essential", text), name
    assert "pip uninstall" in run_lines(BY_NAME["runtime"])
    assert BY_NAME["sim"]["base"] == BY_NAME["gateway"]["base"] == "runtime"
    copies = [rest for w, rest in BY_NAME["gateway"]["instructions"] if w == "COPY"]
    assert copies == ["--from=build /install-gateway /usr/local"]


def test_dockerignore_keeps_the_context_small():
    ignored = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")}
    assert {".git", ".venv", "tests", "**/__pycache__", ".pytest_cache"} <= ignored
    for copied in ("app", "pyproject.toml", "README.md"):  # what the build stage COPYs
        assert copied not in ignored


def test_the_pruned_gateway_package_serves(tmp_path, sim_url):
    """The gateway image's app/ (no local model, no simulator) starts `vgate serve` and answers; `vgate
    --help` still builds every subcommand's parser, and `vgate sim` says where the simulator is."""
    build = run_lines(BY_NAME["build"])
    removed = re.search(r"rm -f ([^&]+)&&", build)[1].split()
    assert removed == ["local_llm.py", "demo.py"] and "rm -rf sim " in build
    app = tmp_path / "app"
    shutil.copytree(ROOT / "app", app, ignore=shutil.ignore_patterns("__pycache__"))
    for name in removed:
        (app / name).unlink()
    shutil.rmtree(app / "sim")
    # What the image left out is as absent here as there: an editable install's finder would otherwise
    # supply it from the checkout whatever the copy lacks.
    absent = "import sys; sys.modules.update(dict.fromkeys(['app.sim', 'app.local_llm', 'app.demo']))"

    def vgate(*args: str) -> list[str]:
        run = f"{absent}; sys.argv = ['vgate', *{list(args)!r}]; import app.cli; app.cli.main()"
        return [sys.executable, "-c", run]

    sim = subprocess.run(vgate("sim", "--port", "9"), cwd=tmp_path, capture_output=True, text=True,
                         env={"PATH": "/usr/bin:/bin"}, timeout=60)
    assert sim.returncode == 1 and "docker build --target sim" in sim.stderr, sim.stderr
    help_ = subprocess.run(vgate("serve", "--help"), cwd=tmp_path, capture_output=True, text=True,
                           env={"PATH": "/usr/bin:/bin"}, timeout=60)
    assert help_.returncode == 0 and "--workers" in help_.stdout, help_.stderr
    port = free_port()
    proc = subprocess.Popen(vgate("serve", "--port", str(port), "--upstream", sim_url),
                            cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    try:
        wait_healthy(f"http://127.0.0.1:{port}", 60, proc, path="/healthz")
        r = httpx.post(f"http://127.0.0.1:{port}/predict", timeout=30,
                       json={"signature": "question -> answer", "inputs": {"question": "hi"}})
        assert r.status_code == 200, r.text
    finally:
        stop_process(proc)
    modules = subprocess.run([sys.executable, "-c", f"{absent}; import app.main, app.cli; app.cli.build_parser(); "
                              "print(sorted(m for m in sys.modules if m.startswith('app.sim') and sys.modules[m]))"],
                             cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert modules.returncode == 0 and modules.stdout.strip() == "[]", modules.stderr
