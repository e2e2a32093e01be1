#!/usr/bin/env bash
# Creates benchmarks/.dspy-venv with DSPy, the in-process reference that benchmarks/compare.py runs
# (benchmarks/dspy_batch.py) against vgate's POST /predict batch. Its own virtualenv: DSPy and its
# litellm must never leak into the project's .venv.
#
#   bash benchmarks/dspy_env.sh                       # the version below
#   DSPY_VERSION=3.4.1 bash benchmarks/dspy_env.sh
#
# 3.4.1: the version measured in shared/notes/performance.md and BENCHMARKS.md.
set -euo pipefail
VERSION="${DSPY_VERSION:-3.4.1}"
PY="${PYTHON:-python3}"
DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/.dspy-venv"
"$PY" -m venv "$DIR"
"$DIR/bin/python" -m pip install --quiet --upgrade pip
"$DIR/bin/python" -m pip install --quiet "dspy==$VERSION"
LITELLM_LOCAL_MODEL_COST_MAP=True "$DIR/bin/python" -c "import dspy; print('DSPy', dspy.__version__, 'in $DIR')"
