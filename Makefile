# Industrial visual inspection with a VAE. `make help` lists the targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# A CPU build of torch on machines without a GPU keeps the install small; set TORCH_SPEC=torch for CUDA.
TORCH_SPEC ?= torch==2.13.0
CATEGORIES ?= fabric bracket
ARGS ?=
PORT ?= 5000
STAMP := $(VENV)/.installed

.PHONY: help setup data train score inspect report sweep ui test audit clean clean-all promote review e2e browser bench screenshot

help: ## list the targets
	@grep -E '^[a-zA-Z0-9_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

setup: $(STAMP) ## create .venv and install the project (CPU torch by default)

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
