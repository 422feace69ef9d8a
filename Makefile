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

# DVC stages call `mmaif`: put the project's virtualenv first on PATH for them.
export PATH := $(CURDIR)/$(BIN):$(PATH)
export DVC_NO_ANALYTICS := 1

ablation: $(STAMP)  ## the main job: build the data if missing, `dvc repro` every stage, print the table
	@test -d data || $(MAKE) --no-print-directory data
	$(BIN)/dvc repro
	@cat reports/ablation.md

report: $(STAMP)  ## rebuild reports/ablation.md from the metrics that exist
	$(BIN)/mmaif report --metrics metrics --runs runs --out reports/ablation.md

sweep: $(STAMP)  ## queue a small learning-rate x steps grid of the regression model (dvc exp), then run it
	$(BIN)/dvc exp run --queue -S 'experiments/scale/cpu.yaml:train.lr=5e-4,1e-3,2e-3' -S 'experiments/scale/cpu.yaml:train.max_steps=300,600'
	$(BIN)/dvc queue start -j 1
	@echo "compare with: .venv/bin/dvc exp show --only-changed --md"

tensorboard: $(STAMP)  ## serve runs/ (one run per variant; HPARAMS tab compares them)
	$(BIN)/tensorboard --logdir runs --port 6006

push: $(STAMP)  ## store data, codec and every checkpoint in the default DVC remote
	$(BIN)/dvc push

pull: $(STAMP)  ## fetch them back (then `dvc repro` retrains nothing)
	@url=$$($(BIN)/dvc config remote.$$($(BIN)/dvc remote default).url); case "$$url" in *://*) ;; *) test -d "$$url" || { \
	  echo "error: the DVC remote $$url is not on this machine: point it at your copy" \
	       "(.venv/bin/dvc remote modify storage url PATH) or rebuild everything with 'make ablation'"; exit 1; };; esac
	$(BIN)/dvc pull

clean:  ## remove caches (not data, runs or .venv)
	rm -rf .pytest_cache build *.egg-info
	find . -name __pycache__ -not -path './.venv/*' -prune -exec rm -rf {} +
