# spindel-jupyter: `make demo` runs a live Jupyter Lab with the demos; `make test` runs every check.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
ROOT_FLAG := $(if $(filter 0,$(shell id -u)),--allow-root,)
# Kernels started by the tests must not inherit a hub from the shell they run in.
CLEAN_ENV := env -u SPINDEL_HUB_URL -u SPINDEL_TOKEN -u SPINDEL_PEER -u JPY_SESSION_NAME
NBVAL := --nbval --nbval-sanitize-with demo_notebooks/sanitize.cfg

.PHONY: install demo test lint clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(BIN)/jupyter lab $(ROOT_FLAG) --ServerApp.root_dir=demo_notebooks $(LAB_ARGS)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

test: lint
	$(CLEAN_ENV) $(BIN)/pytest $(NBVAL) tests demo_notebooks

# Benchmarks against raw WebSockets, ipyparallel, jupyter_client and pycrdt-websocket; see bench/.
.PHONY: bench
BENCH_STAMP := $(VENV)/.bench-installed
$(BENCH_STAMP): $(STAMP) pyproject.toml
	$(BIN)/python -m pip install --quiet -e ".[bench]"
	touch $(BENCH_STAMP)

bench: $(BENCH_STAMP)
	$(CLEAN_ENV) $(BIN)/python -m bench $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
