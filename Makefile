# mmaif-pl: every target sets up .venv itself when it is missing or older than pyproject.toml.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PYTEST_ARGS ?=

.DEFAULT_GOAL := help
.PHONY: help setup test data ablation sweep report tensorboard push pull bench clean

help:  ## list the targets
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN{FS=":.*?## "}{printf "  %-12s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)  ## create .venv and install the project (editable) with its test tools

test: $(STAMP)  ## run the test suite (CPU, minutes)
	$(BIN)/python -m pytest $(PYTEST_ARGS); rc=$$?; if [ $$rc -eq 5 ]; then echo "no tests collected"; exit 1; fi; exit $$rc

data: $(STAMP)  ## build the embedded default dataset into data/ when it is missing (and cache it in DVC)
	@if [ -d data ]; then echo "data/ exists (remove it to rebuild)"; else \
	  $(BIN)/mmaif data build --out data && $(BIN)/dvc commit -q -f data.dvc && \
	  { git diff --quiet -- data.dvc 2>/dev/null || { echo "error: the built data differs from the committed data.dvc"; exit 1; }; }; fi

clean:  ## remove caches (not data, runs or .venv)
	rm -rf .pytest_cache build *.egg-info
	find . -name __pycache__ -not -path './.venv/*' -prune -exec rm -rf {} +
