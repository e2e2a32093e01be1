# syntax=docker/dockerfile:1
# vgate's images. Targets:
#   gateway (default, the last stage)  docker build -t vgate .
#   sim     the vLLM simulator, for the compose stack without a GPU (docker compose --profile sim)
# The gateway image holds the installed package and its dependencies only: no pip, no compiler, no
# source tree, no local model (app/local_llm.py, app/demo.py) and no simulator (app/sim: `vgate sim`
# there says which image has it).

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# --- build: resolve and install into a prefix (every dependency has a manylinux wheel) ------------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY app ./app
RUN pip install --prefix=/install . \
 && cp -a /install /install-gateway \
 && cd /install-gateway/lib/python3.11/site-packages/app \
 && rm -f local_llm.py demo.py \
 && rm -rf sim \
 && find /install /install-gateway -name __pycache__ -type d -prune -exec rm -rf {} + \
 && python -m compileall -q /install/lib /install-gateway/lib

# --- runtime base: a non-root user, no pip/setuptools/wheel -------------------------------------
FROM ${PYTHON_IMAGE} AS runtime
RUN python -m pip uninstall -y -q pip setuptools wheel 2>/dev/null; \
    rm -rf /usr/local/lib/python3.11/ensurepip \
 && useradd --system --uid 10001 --home-dir /var/lib/vgate --create-home --shell /usr/sbin/nologin vgate
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
WORKDIR /var/lib/vgate

# --- sim: the simulator (vgate sim), healthy on /health like vLLM --------------------------------
FROM runtime AS sim
COPY --from=build /install /usr/local
USER 10001
EXPOSE 8000
HEALTHCHECK --interval=5s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=2)"]
ENTRYPOINT ["vgate", "sim", "--host", "0.0.0.0", "--port", "8000"]

# --- gateway (default target) --------------------------------------------------------------------
FROM runtime AS gateway
COPY --from=build /install-gateway /usr/local
USER 10001
# VGATE_WORKERS: uvicorn worker processes (more than one needs VGATE_REDIS_URL).
# Program versions saved by /optimize without Redis go to a volume-friendly path, not the package.
ENV VGATE_HOST=0.0.0.0 \
    VGATE_PORT=8080 \
    VGATE_WORKERS=1 \
    VGATE_LOG_FORMAT=json \
    VGATE_PROGRAM_VERSIONS_DIR=/var/lib/vgate/programs
EXPOSE 8080
# Exits non-zero on a refused connection, a timeout or a non-2xx answer.
HEALTHCHECK --interval=10s --timeout=3s --start-period=15s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('VGATE_PORT', '8080'), timeout=2)"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["vgate", "serve"]
