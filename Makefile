# Thin wrappers: `make repro` runs the pipeline, `make test` runs the tests. Both set up .venv first.
PYTHON ?= python3.11
VENV := .venv
PROFILE ?=
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: setup repro test mlflow-ui clean-checkpoints

$(VENV)/.installed: pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found (Python 3.11 is needed)"; exit 2; }
	@echo "setting up $(VENV): pinned dependencies, PyTorch included (several GB the first time)"
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -e '.[test]'
	touch $@

setup: $(VENV)/.installed

repro: setup
ifeq ($(PROFILE),)
	dvc repro
else
	dvc exp run -S profile=$(PROFILE)
endif

test: setup
	pytest -q

mlflow-ui: setup
	mlflow ui --backend-store-uri sqlite:///$(CURDIR)/mlflow.db --port 5000

clean-checkpoints:
	rm -rf checkpoints
