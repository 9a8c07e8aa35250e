# Every target creates the virtual environment first if it is missing or stale.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: help venv test lint demo clean-demo

help:
	@echo "make demo   - run the whole CluP pipeline on the embedded synthetic-faces benchmark"
	@echo "make test   - lint and run the test suite"

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check clup tests

test: lint
	$(BIN)/pytest -q

demo: $(STAMP)
	$(BIN)/clup run experiments/demo.yaml

clean-demo:
	rm -rf lightning_logs/demo
