# Explainable pneumonia detection — notebook series.   `make help` lists the targets.
#
#   make demo   build .venv if missing, then run notebooks 01..NN offline (demo profile) with papermill;
#               executed copies go to notebooks/executed/ (git-ignored), the sources stay output-free
#   make test   build .venv if missing, then lint (ruff, mypy, the import contract), the unit tests, and the
#               notebook tests: every notebook alone in a fresh temporary project root (nbval, demo profile shrunk
#               by TEST_KNOBS) and the whole series on the official Kaggle layout (full profile). Nothing is
#               written into data/, model/ or assets/ (conftest.py). What CI runs (.ci/run).
#   make test-unit   the fast lane: the unit tests alone (no notebook runs), about 2 CPU-minutes;
#               run it while you work, `make lint test-unit` before a commit, `make test` before a push.
#
# Variables (override on the command line, e.g. `make env TORCH_PIN="torch==2.9.1 torchvision==0.24.1"`):
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

# the Python that creates the venv
PYTHON ?= python3
VENV ?= .venv
# the Python that runs everything; point it elsewhere to use an environment you manage yourself
PY ?= $(VENV)/bin/python
# the torch/torchvision pair installed before the project (pyproject.toml only gives ranges, for Colab)
TORCH_PIN ?= torch==2.14.1 torchvision==0.29.1
KERNEL ?= python3
# extra papermill arguments for `make demo`, e.g. PAPERMILL_ARGS="-p PROFILE full -p DATA_DIR /data/chest_xray"
PAPERMILL_ARGS ?=
# extra pytest arguments for `make test`, e.g. PYTEST_ARGS="-x -k structure"
PYTEST_ARGS ?=
# the knobs the notebook tests run with (CPU minutes, not the demo's scale; `make demo` runs the real thing)
TEST_KNOBS ?= CXR_IMAGE_SIZE=64 CXR_EPOCHS_PHASE1=1 CXR_EPOCHS_PHASE2=1

NB_DIR := notebooks
EXEC_DIR := $(NB_DIR)/executed
NOTEBOOKS = $(filter-out $(NB_DIR)/00_%,$(sort $(wildcard $(NB_DIR)/[0-9][0-9]_*.ipynb)))
STAMP := $(VENV)/.cxr-env.stamp
# import-linter's command (it has no `python -m` entry point): the layer table of docs/DESIGN.md, in pyproject.toml
LINT_IMPORTS = $(PY) -c 'import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())'

# targets that run Python depend on the venv only when PY is the venv's own
ENV := $(if $(filter $(VENV)/bin/python,$(PY)),$(STAMP))

export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: help env demo test test-unit test-notebooks lint nav results record-demo strip bench bench-demo lab clean distclean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F ':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

env: $(STAMP) ## create .venv (if missing) with the pinned torch pair and the project (editable)

# Re-runs only when pyproject.toml changes; pip leaves an already installed torch pair as it is.
$(STAMP): pyproject.toml
	@test -x $(VENV)/bin/python || { echo "creating $(VENV) with $$($(PYTHON) --version)"; $(PYTHON) -m venv $(VENV); }
	$(VENV)/bin/python -m pip install $(TORCH_PIN)
	$(VENV)/bin/python -m pip install -e ".[dev]"
	$(VENV)/bin/python -m ipykernel install --sys-prefix --name $(KERNEL)
	@touch $@

demo: $(ENV) ## run the whole series on the default (demo) profile; executed copies in notebooks/executed/
	@test -n "$(NOTEBOOKS)" || { echo "no numbered notebooks in $(NB_DIR)/"; exit 1; }
	@mkdir -p $(EXEC_DIR)
	@for nb in $(NOTEBOOKS); do \
	  out="$(EXEC_DIR)/$$(basename "$$nb")"; start=$$(date +%s); \
	  echo "==> $$nb"; \
	  $(PY) -m papermill "$$nb" "$$out" --cwd $(NB_DIR) -k $(KERNEL) --no-progress-bar $(PAPERMILL_ARGS) \
	    || { echo "FAILED: $$nb (see $$out)"; exit 1; }; \
	  echo "    ok in $$(( $$(date +%s) - start )) s -> $$out"; \
	done

test: lint test-unit test-notebooks ## lint, unit tests, then the notebook tests (what CI runs)

lint: $(ENV) ## ruff (lint + import order, notebooks included), mypy on utils/, the import contract (layers)
	$(PY) -m ruff check .
	$(PY) -m mypy
	$(LINT_IMPORTS) --no-logo

test-unit: $(ENV) ## the fast lane: the unit tests (tests/, without tests/notebooks/), no notebook runs
	$(PY) -m pytest tests --ignore=tests/notebooks $(PYTEST_ARGS)

test-notebooks: $(ENV) ## every notebook alone in a fresh root (nbval), and the series on the official layout
	$(TEST_KNOBS) $(PY) -m pytest tests/notebooks $(if $(NOTEBOOKS),--nbval-lax --nbval-current-env $(NOTEBOOKS)) $(PYTEST_ARGS)

nav: $(ENV) ## refresh navigation cells, Colab links, the notebook tables and README's results block
	$(PY) scripts/nav.py
	$(PY) scripts/results.py

results: $(ENV) ## regenerate README's results block from the run reports in docs/runs/ (scripts/results.py)
	$(PY) scripts/results.py

record-demo: $(ENV) ## after `make demo`: copy its reports into docs/runs/demo_cpu_128px/ and regenerate README's results
	$(PY) scripts/results.py --record-demo

strip: $(ENV) ## clear outputs of the source notebooks
	$(PY) scripts/nav.py --strip-only

bench: $(ENV) ## training, data, Grad-CAM and inference benchmark (python -m benchmarks.bench)
	$(PY) -m benchmarks.bench

bench-demo: $(ENV) ## time every notebook as `make demo` runs it, in an empty root (python -m benchmarks.demo_time)
	$(PY) -m benchmarks.demo_time --out docs/runs/demo_time.json

lab: $(ENV) ## open JupyterLab at the index notebook
	$(PY) -m jupyterlab $(NB_DIR)/00_index.ipynb

clean: ## remove run-time outputs (executed notebooks, phantoms, cache, checkpoints, assets); keeps .venv
	rm -rf $(EXEC_DIR) data/phantom_chest_xray data/cache .pytest_cache build *.egg-info
	find model -maxdepth 1 -type f ! -name README.md ! -name phantom_resnet18_pretrained.pt ! -name phantom_vit_tiny_pretrained.pt -delete
	find assets -mindepth 1 -maxdepth 1 ! -name README.md -exec rm -rf {} +
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +

distclean: clean ## clean, and remove .venv too
	rm -rf $(VENV)
