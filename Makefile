PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install test test-fast quickstart bench clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q

# The development lane: everything but the tests that train models or start servers.
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

# The main job on the embedded default (synthetic phantom): synth → preprocess → train.
quickstart: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/mlflow run . -e train -P model=xception --env-manager local --experiment-name medfake-quickstart

clean:
	rm -rf $(VENV) mlruns mlflow.db optuna.journal data .medfake
