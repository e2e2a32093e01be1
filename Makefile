# The two commands that matter:
#   make demo   start the gateway in front of the embedded local model (fetched on first run)
#   make test   run the whole test suite (starts and stops the simulator and the local model itself)
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin

.PHONY: demo test install system-deps serve sim lint bench clean

$(BIN)/vgate: pyproject.toml clients/python/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[local,test]'
	$(BIN)/pip install --quiet -e clients/python   # the Python client (import vgate): its tests and the examples use it
	@touch $@

install: $(BIN)/vgate

demo: install
	$(BIN)/vgate demo

# What the tests run for real, from Debian's packages: redis-server (shared state), promtool (package prometheus:
# the Prometheus config and alert rules in deploy/), chromium (the playground's browser test).
SYSTEM_DEPS = redis-server:redis-server promtool:prometheus chromium:chromium
system-deps:
	@missing=""; for dep in $(SYSTEM_DEPS); do \
	  command -v $${dep%%:*} >/dev/null || missing="$$missing $${dep#*:}"; done; \
	[ -z "$$missing" ] || { \
	  echo "installing$$missing (Debian) for the tests"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get install -y -qq --no-install-recommends $$missing >/dev/null 2>&1 || \
	  { $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq --no-install-recommends $$missing; }; }

test: install system-deps
	$(BIN)/python -m pytest

serve: install
	$(BIN)/vgate serve

sim: install
	$(BIN)/vgate sim

lint: install
	$(BIN)/pip install --quiet ruff
	$(BIN)/ruff check app tests examples benchmarks clients/python

bench: install
	$(BIN)/python benchmarks/lm_client.py
	$(BIN)/python benchmarks/gateway.py

clean:
	rm -rf $(VENV) .pytest_cache
