# Two commands a new user needs:  make run   (pipeline, embedded defaults)
#                                 make test  (whole test suite)
# Everything else here is what those two call.

SHELL := /bin/bash
PYTHON ?= python3
PIPENV_VERSION ?= 2026.10.3
SHARED_DATA ?= ../shared/data
DATASETS := taiwan_credit credit_risk lending_club risk_flag

export PIPENV_VENV_IN_PROJECT := 1
export PIPENV_NOSPIN := 1
export PIPENV_YES := 1
export PIPENV_IGNORE_VIRTUALENVS := 1
export DVC_NO_ANALYTICS := 1
export MLFLOW_DISABLE_TELEMETRY ?= true
PIPENV := $(PYTHON) -m pipenv

.DEFAULT_GOAL := help
.PHONY: help run test docs pipenv install install-dev data data-download repro metrics lint bench clean mlflow-ui registry serve checkov infra-check retrain image score demo-db snapshot flows

help:  ## list the targets (this)
	@echo "make run   and   make test   are all a new user needs; the others:"
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/^([a-zA-Z_-]+):.*## (.*)/  \1\t\2/' | expand -t 16

run: install data repro metrics serve  ## install, link data, run the pipeline, print the metrics, serve the model

test: install-dev data checkov  ## install dev dependencies (and checkov, in its own venv) and run every test
	$(PIPENV) run pytest $(PYTEST_ARGS)

pipenv:
	@$(PYTHON) -m pipenv --version >/dev/null 2>&1 || $(PYTHON) -m pip install --quiet "pipenv==$(PIPENV_VERSION)"

install: pipenv  ## install the locked runtime packages (pipenv sync)
	$(PIPENV) sync

install-dev: pipenv  ## install runtime and dev packages
	$(PIPENV) sync --dev

# Link the public datasets from ../shared/data when that folder exists; otherwise
# see docs/datasets.md for where to download each file into data/external/<dataset>/.
data:  ## link ../shared/data into data/external/
	@for ds in $(DATASETS); do \
	  mkdir -p data/external/$$ds; \
	  if [ -d "$(SHARED_DATA)/$$ds" ]; then \
	    for f in "$(SHARED_DATA)/$$ds"/*; do \
	      [ -e "data/external/$$ds/$$(basename "$$f")" ] || ln -s "$$(cd "$$(dirname "$$f")" && pwd)/$$(basename "$$f")" "data/external/$$ds/"; \
	    done; \
	  fi; \
	done
	@ls data/external/*/ 2>/dev/null | sed 's/^/  /'

data-download: install  ## fetch the original UCI file by URL (sha256-checked)
	$(PIPENV) run python -m src.data.ingest --download

TAIWAN_DB_URL ?= sqlite:///data/demo/lender.db
demo-db: install data  ## the taiwan_db demo: applicants into a database (TAIWAN_DB_URL, default a SQLite file), payments into a CSV, snapshot
	@mkdir -p data/demo
	TAIWAN_DB_URL='$(TAIWAN_DB_URL)' $(PIPENV) run python -m src.data.demo_db

snapshot: install  ## copy the current profile's SQL source into its raw file (what `dvc repro` then reads)
	TAIWAN_DB_URL='$(TAIWAN_DB_URL)' $(PIPENV) run python -m src.data.snapshot

PREFECT_PORT ?= 4200
flows: install  ## a local Prefect server (SQLite under .prefect/, UI on PREFECT_PORT) serving the scheduled flows
	PREFECT_HOME='$(CURDIR)/.prefect' $(PIPENV) run python -m src.flows serve --with-server --port $(PREFECT_PORT)

repro:  ## dvc repro: run what changed
	$(PIPENV) run dvc repro

metrics:  ## print a summary of the last run
	@$(PIPENV) run python -m src.report

# The scoring service (web form + JSON API) under gunicorn, serving the champion.
SERVE_BIND ?= 127.0.0.1:8000
serve: install  ## serve the champion under gunicorn (SERVE_BIND, default 127.0.0.1:8000)
	@echo "Serving the champion at http://$(SERVE_BIND)/  (API: /api/v1/predict, docs: /api/v1/openapi.json; Ctrl-C stops)"
	SERVE_BIND=$(SERVE_BIND) $(PIPENV) run gunicorn -c gunicorn.conf.py "flask_api:create_app()"

# The MLflow UI and REST server on the embedded store (sqlite + local artifacts).
MLFLOW_PORT ?= 5000
mlflow-ui: install  ## the MLflow UI on the embedded store (MLFLOW_PORT, default 5000)
	$(PIPENV) run mlflow server --backend-store-uri sqlite:///$(CURDIR)/mlflow.db \
	  --default-artifact-root $(CURDIR)/mlartifacts --host 127.0.0.1 --port $(MLFLOW_PORT) --workers 1

# The retraining loop (docs/retraining.md): dvc pull -> dvc repro (gate, promote) ->
# dvc push -> reload the service at retrain.reload_url ($API_KEY, admin scope) onto the new champion.
retrain: install data  ## pull, rerun the pipeline through the quality gate, push, reload the running service
	$(PIPENV) run python -m src.modeling.retrain $(RETRAIN_ARGS)

# Batch scoring example (docs/batch.md): the DVC stage `score` scores the test split with the
# champion into data/scored/ and metrics/score_summary.json (after the stages it depends on).
score: install data  ## dvc repro score: the held-out test split scored as a "new batch"
	$(PIPENV) run dvc repro score

registry: install  ## versions, aliases and gate decisions of the current profile's model
	@$(PIPENV) run python -m src.modeling.registry list

docs: install-dev  ## build the manual (docs/) into site/ with mkdocs --strict
	NO_MKDOCS_2_WARNING=1 $(PIPENV) run mkdocs build --strict

lint: install-dev  ## ruff check
	$(PIPENV) run ruff check .

# checkov (security scan of infra/terraform) pins dependencies that conflict with
# dvc's, so it lives in its own venv, outside the Pipfile. The tests run
# .tools/checkov/bin/checkov (or $$CHECKOV_BIN); .ci/run calls this target first.
CHECKOV_VERSION ?= 3.3.30
CHECKOV_VENV := .tools/checkov
checkov:  ## install checkov==$(CHECKOV_VERSION) into .tools/checkov (no-op when it is there)
	@if [ "$$($(CHECKOV_VENV)/bin/checkov --version 2>/dev/null)" != "$(CHECKOV_VERSION)" ]; then \
	  echo "installing checkov $(CHECKOV_VERSION) into $(CHECKOV_VENV)"; \
	  rm -rf $(CHECKOV_VENV) && $(PYTHON) -m venv $(CHECKOV_VENV) && \
	  $(CHECKOV_VENV)/bin/python -m pip install --quiet --disable-pip-version-check "checkov==$(CHECKOV_VERSION)" 2>&1 \
	    | grep -v "is ignored: it is neither a file nor a directory" || true; \
	fi
	@$(CHECKOV_VENV)/bin/checkov --version >/dev/null && echo "checkov $(CHECKOV_VERSION): $(CHECKOV_VENV)/bin/checkov"

infra-check: checkov  ## checkov over infra/terraform (what tests/integration/test_terraform.py asserts)
	$(CHECKOV_VENV)/bin/checkov -d infra/terraform --framework terraform --compact --quiet --skip-download

# The service image (Dockerfile): the model behind IMAGE_MODEL_URI (models:/<name>@<alias> or
# models:/<name>/<version>; empty = the profile's champion) is exported at build time from the MLflow
# server at MLFLOW_TRACKING_URI. docker when its daemon answers, else ../shared/tools/container-sandbox.sh
# (buildah, no daemon). --network host lets the build reach a registry on 127.0.0.1.
IMAGE ?= credit-default:dev
IMAGE_MODEL_URI ?=
CONTAINER_SANDBOX ?= ../shared/tools/container-sandbox.sh
IMAGE_BUILD_ARGS = --network host --build-arg "MLFLOW_TRACKING_URI=$(MLFLOW_TRACKING_URI)" --build-arg "MODEL_URI=$(IMAGE_MODEL_URI)"
image:  ## build the service image as $(IMAGE); needs MLFLOW_TRACKING_URI=http://<mlflow server>
	@if [ -z "$(MLFLOW_TRACKING_URI)" ]; then \
	  echo "make image: set MLFLOW_TRACKING_URI=http://<mlflow server> (the registry the model is exported from;" \
	    "the embedded mlflow.db stores artifacts as local paths a build cannot read)" >&2; exit 2; fi
	@if docker info >/dev/null 2>&1; then \
	  echo "docker build -t $(IMAGE)"; docker build $(IMAGE_BUILD_ARGS) -t "$(IMAGE)" . ; \
	else \
	  echo "no Docker daemon: $(CONTAINER_SANDBOX) build . $(IMAGE)"; \
	  $(CONTAINER_SANDBOX) build . "$(IMAGE)" -- $(IMAGE_BUILD_ARGS); \
	fi

bench: install-dev data  ## pipeline and model-quality benchmarks (figures: docs/performance.md)
	$(PIPENV) sync --categories="packages dev-packages bench"
	$(PIPENV) run python bench/pipeline.py
	$(PIPENV) run python bench/model_quality.py

clean:  ## remove the pipeline's data and model outputs
	rm -rf data/raw data/interim data/processed models
