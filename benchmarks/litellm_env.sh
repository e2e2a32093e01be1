#!/usr/bin/env bash
# Creates benchmarks/.litellm-venv with LiteLLM's proxy, the reference that benchmarks/passthrough.py
# compares against. Its own virtualenv: LiteLLM's pins must never leak into the project's .venv.
#
#   bash benchmarks/litellm_env.sh            # pinned version below
#   LITELLM_VERSION=1.108.6 bash benchmarks/litellm_env.sh   # another version
#
# Pinned to 1.108.7, the version in shared/notes/performance.md, and the newest whose [proxy] extra resolved
# from this workplace's registry (2026-12): 1.108.14-1.109.x pin litellm-proxy-extras releases it does not
# have, 1.110.x a `litellm-proxy` package it does not have. Never 1.107.0: that release was compromised.
set -euo pipefail
VERSION="${LITELLM_VERSION:-1.108.7}"
PY="${PYTHON:-python3}"
DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/.litellm-venv"

if [ "$VERSION" = "1.107.0" ]; then
    echo "refusing litellm 1.107.0 (compromised release)" >&2
    exit 1
fi
"$PY" -m venv "$DIR"
"$DIR/bin/python" -m pip install --quiet --upgrade pip
"$DIR/bin/python" -m pip install --quiet "litellm[proxy]==$VERSION"
LITELLM_LOCAL_MODEL_COST_MAP=True "$DIR/bin/litellm" --version  # local: no price map download
echo "LiteLLM $VERSION in $DIR"
