# Thin wrappers: `make repro` runs the pipeline, `make test` runs the tests. Both set up .venv first.
# `make browser` installs Debian's chromium for the MLflow UI test (which skips without it).
PYTHON ?= python3.11
VENV := .venv
PROFILE ?=
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: setup repro seeds test browser mlflow-ui clean-checkpoints

$(VENV)/.installed: pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found (Python 3.11 is needed)"; exit 2; }
	@echo "setting up $(VENV): pinned dependencies, PyTorch included (several GB the first time)"
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -e '.[test,bench]'
	touch $@

setup: $(VENV)/.installed

# JOBS=2: `trilemma repro`, DVC's stages two at a time where independent (faster, but each
# stage's train seconds and images/s then include its neighbour's load; README "Speed").
# sync-mlflow: stages DVC skipped logged nothing; this puts their current reports in MLflow too
JOBS ?= 1
repro: setup
ifneq ($(JOBS),1)
	@[ -z "$(PROFILE)" ] || { echo "error: PROFILE runs as a DVC experiment, one stage at" \
	  "a time; for JOBS=$(JOBS) set profile in params.yaml instead"; exit 2; }
	trilemma repro --jobs $(JOBS)
else ifeq ($(PROFILE),)
	dvc repro
else
	dvc exp run -S profile=$(PROFILE)
endif
	trilemma sync-mlflow

# Training noise: the generator stages once per seed as queued DVC experiments (each in its own
# temporary copy: the workspace stays as it is), one after the other, then the mean ± std table
# of the profile (PROFILE, or params.yaml's)
SEEDS ?= 0,1,2
seeds: setup
	dvc exp run --queue $(if $(PROFILE),-S profile=$(PROFILE)) -S seed=$(SEEDS) evaluate
	dvc exp run --run-all
	trilemma seed-spread $(if $(PROFILE),--profile $(PROFILE))

# a worker per CPU, each running whole test files (tests/conftest.py: files that share a session
# fixture stay together, the slowest start first)
test: setup
	pytest -q -n logical --dist loadfile

# Not a prerequisite of `test`: it needs root (or sudo) and Debian's package servers. CI runs it.
CHROMIUM := /usr/bin/chromium
browser:
	@if [ -x $(CHROMIUM) ]; then echo "browser: $(CHROMIUM) is installed already"; exit 0; fi; \
	command -v apt-get >/dev/null || { echo "error: apt-get not found: install chromium at $(CHROMIUM) by hand"; exit 2; }; \
	if [ "$$(id -u)" = 0 ]; then sudo=; else sudo=sudo; fi; \
	echo "browser: installing Debian's chromium to $(CHROMIUM) for the MLflow UI test ($${sudo:+sudo }apt-get update && apt-get install chromium)"; \
	$$sudo apt-get update && $$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends chromium

# prints the link to the scores view first (read from mlflow.db with sqlite: no start-up cost)
MLFLOW_PORT ?= 5000
mlflow-ui: setup
	@python -m trilemma.tracking_view $(CURDIR)/mlflow.db $(MLFLOW_PORT) || true
	mlflow ui --backend-store-uri sqlite:///$(CURDIR)/mlflow.db --port $(MLFLOW_PORT)

clean-checkpoints:
	rm -rf checkpoints
