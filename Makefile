# spindel-jupyter: `make demo` runs a live Jupyter Lab with the demos; `make test` runs every check.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
ROOT_FLAG := $(if $(filter 0,$(shell id -u)),--allow-root,)
# Kernels and hubs started by the tests must not inherit a hub or a mesh from the shell they run in.
CLEAN_ENV := env -u SPINDEL_HUB_URL -u SPINDEL_TOKEN -u SPINDEL_PEER -u JPY_SESSION_NAME -u SPINDEL_NATS_URL
NBVAL := --nbval --nbval-sanitize-with demo_notebooks/sanitize.cfg

.PHONY: install demo demo-hub test lint clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# A link left by an earlier develop step would make pip write into the build output: drop it.
	if [ -L $(VENV)/share/jupyter/labextensions/spindel-jupyter ]; then rm $(VENV)/share/jupyter/labextensions/spindel-jupyter; fi
	rm -f spindel_jupyter/labextension/install.json
	$(BIN)/python -m pip install --quiet -e ".[test]"
	$(BIN)/jupyter-builder develop --overwrite .
	touch $(STAMP)

# The JupyterLab extension: `pip install -e` builds it (jlpm install, tsc, jupyter-builder) and the
# develop step above links it into the venv; this rebuilds it when its sources change.
LAB_BUILT := spindel_jupyter/labextension/package.json
LAB_SOURCES := $(wildcard labextension/src/*.ts labextension/style/*.* labextension/style/icons/*.svg) \
	labextension/package.json labextension/tsconfig.json
$(LAB_BUILT): $(LAB_SOURCES) | $(STAMP)
	cd labextension && PATH="$(abspath $(BIN)):$$PATH" jlpm install && PATH="$(abspath $(BIN)):$$PATH" jlpm build

# JupyterHub's proxy (npm), for `make demo-hub` and its test: next to the venv's Python, where
# spindel_jupyter.demo_hub looks for it.
CHP := $(BIN)/configurable-http-proxy
$(CHP): | $(STAMP)
	npm install --global --silent --no-fund --no-audit --prefix $(VENV) configurable-http-proxy@5.3.0

install: $(STAMP) $(LAB_BUILT) $(CHP)

# The lab serves copies of the demo notebooks from $(DEMO_DIR) (ignored by git), never the tracked ones:
# running a notebook there saves its outputs into it, and the files the demos write and the hub's store
# go there too (rm -rf $(DEMO_DIR) starts afresh). A copy is made again only when its tracked notebook
# changed since (make's rule: the tracked one is newer), so what you did in a copy stays until then.
DEMO_DIR ?= .demo
DEMO_COPIES := $(patsubst demo_notebooks/%,$(DEMO_DIR)/%,$(wildcard demo_notebooks/*.ipynb))
$(DEMO_DIR)/%.ipynb: demo_notebooks/%.ipynb
	@mkdir -p $(@D)
	cp $< $@

.PHONY: demo-notebooks
demo-notebooks: $(DEMO_COPIES)

demo: install demo-notebooks
	$(BIN)/jupyter lab $(ROOT_FLAG) --ServerApp.root_dir=$(DEMO_DIR) --SpindelHub.store_dir=$(DEMO_DIR)/.spindel $(LAB_ARGS)

# JupyterHub with users teacher and student (passwords printed), each with a single-user server whose
# hub joins one mesh over a nats-server; their folders and JupyterHub's state are in $(HUB_DIR). Each
# gets copies of the demo notebooks, and of demo_hub/USER/ (a lesson for the teacher, homework for the
# student).
HUB_DIR ?= .demo-hub
HUB_PORT ?= 8000
demo-hub: install
	$(CLEAN_ENV) $(BIN)/python -m spindel_jupyter.demo_hub --dir $(HUB_DIR) --port $(HUB_PORT) --notebooks demo_notebooks --notebooks demo_hub $(HUB_ARGS)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports --no-logo --no-cache

test: lint
	$(CLEAN_ENV) $(BIN)/pytest $(NBVAL) tests demo_notebooks

# Benchmarks against raw WebSockets, ipyparallel, jupyter_client and pycrdt-websocket; see bench/.
.PHONY: bench
BENCH_STAMP := $(VENV)/.bench-installed
$(BENCH_STAMP): $(STAMP) pyproject.toml
	$(BIN)/python -c 'import tomllib; print(*tomllib.load(open("pyproject.toml", "rb"))["project"]["optional-dependencies"]["bench"], sep="\n")' > $(VENV)/bench-requirements.txt
	$(BIN)/python -m pip install --quiet -r $(VENV)/bench-requirements.txt
	touch $(BENCH_STAMP)

bench: $(BENCH_STAMP)
	$(CLEAN_ENV) $(BIN)/python -m bench $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
	rm -rf labextension/lib labextension/tsconfig.tsbuildinfo spindel_jupyter/labextension

# The stress suite at full size (fuzzing, load, crashes, auth, limits); figures in tests/stress/figures.json.
.PHONY: stress
stress: install
	$(CLEAN_ENV) SPINDEL_STRESS=full $(BIN)/pytest tests/stress -q -s
