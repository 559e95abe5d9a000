# Industrial visual inspection with a VAE. `make help` lists the targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# PyTorch's CPU build keeps the install small: pip gets PyTorch's CPU wheel index beside its own and takes
# the CPU build from it; where that index cannot be reached within TORCH_INDEX_TIMEOUT seconds, setup says
# so and installs TORCH_SPEC from pip's configured index alone (scripts/install_torch.py). TORCH_INDEX= (empty)
# installs the configured index's default build (CUDA on Linux), TORCH_INDEX=https://download.pytorch.org/whl/cu128 a CUDA one.
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?= https://download.pytorch.org/whl/cpu
TORCH_INDEX_TIMEOUT ?= 10
CATEGORIES ?= fabric bracket
ARGS ?=
PORT ?= 5000
STAMP := $(VENV)/.installed

.PHONY: help setup data train score inspect report sweep ui test audit clean clean-all promote review e2e browser bench screenshot

help: ## list the targets
	@grep -E '^[a-zA-Z0-9_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml scripts/install_torch.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) scripts/install_torch.py "$(TORCH_SPEC)" "$(TORCH_INDEX)" --timeout $(TORCH_INDEX_TIMEOUT)
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

setup: $(STAMP) ## create .venv and install the project (CPU-only torch by default)

data: $(STAMP) ## generate the built-in dataset into data/builtin (and digits into data/digits)
	$(PY) -m pipeline data $(ARGS)
	$(PY) -m pipeline data data=digits

train: $(STAMP) ## train one detector per built-in category (ARGS=overrides, CATEGORIES=...)
	@set -e; for c in $(CATEGORIES); do $(PY) -m pipeline train data.category=$$c $(ARGS); done

score: $(STAMP) ## score each category's test split with its newest detector; results in outputs/score/
	@set -e; for c in $(CATEGORIES); do $(PY) -m pipeline score data.category=$$c $(ARGS); done

inspect: $(STAMP) ## judge new images in data/inbox with the champion model; results in data/inspection/ (ARGS=overrides)
	$(PY) -m pipeline inspect $(ARGS)

bench: $(STAMP) ## speed, memory and detection quality -> BENCHMARKS.md (QUICK=1: a few minutes)
	$(PY) -m pipeline bench $(if $(QUICK),bench.quick=true) $(ARGS)

report: $(STAMP) ## latent-space report of each category's newest detector; in outputs/report/
	@set -e; for c in $(CATEGORIES); do $(PY) -m pipeline report data.category=$$c $(ARGS); done

sweep: $(STAMP) ## beta x latent-size sweep (sweep.params, ARGS=overrides), MLflow experiment vae-sweep
	$(PY) -m pipeline sweep $(ARGS)

ui: $(STAMP) ## MLflow UI over the local store on http://127.0.0.1:$(PORT); prints each experiment's link first
	mkdir -p mlruns
	@$(PY) -m pipeline links tracking.local_ui_url=http://127.0.0.1:$(PORT)
	$(VENV)/bin/mlflow ui --backend-store-uri "sqlite:///$(CURDIR)/mlruns/mlflow.db" --host 127.0.0.1 --port $(PORT)

test: $(STAMP) ## run the test suite (the browser test too when chromium is installed)
	$(VENV)/bin/pytest -q

audit: $(STAMP) ## audit installed dependencies for known vulnerabilities (says so when the database is unreachable)
	$(PY) scripts/audit.py

browser: ## install Debian's chromium for the browser test (apt-get; needs root or sudo)
	scripts/install-browser.sh

e2e: $(STAMP) browser ## browser test: headless chromium checks the flagged-sample gallery in the MLflow UI
	PIPELINE_REQUIRE_BROWSER=1 E2E_SCREENSHOT_DIR=$(CURDIR)/outputs/e2e $(VENV)/bin/pytest -q -m e2e tests/e2e

screenshot: $(STAMP) browser ## README's review-page picture from `make score`'s fabric run (SCORED=outputs/score/<dataset>)
	$(PY) scripts/review_screenshot.py $(if $(SCORED),--scored $(SCORED))

promote: $(STAMP) ## give a registered version the alias champion (ARGS="3 data.category=bracket"; default: newest)
	$(PY) -m pipeline promote $(ARGS)

review: $(STAMP) ## show a scoring run's flagged samples and record verdicts (ARGS="<run id> review.set=[id:verdict]")
	$(PY) -m pipeline review $(ARGS)

clean: ## remove outputs/ and caches (keeps data/ and the MLflow store)
	rm -rf outputs .pytest_cache
	find . -name __pycache__ -not -path "./$(VENV)/*" -prune -exec rm -rf {} +

clean-all: clean ## also remove generated datasets and the local MLflow store (mlruns/)
	rm -rf data/builtin data/digits mlruns
