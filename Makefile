# make train [ARGS="hydra overrides"] | make sample [ARGS=...] | make play [ARGS=...] | make test | make lint | make bench
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
ARGS ?=
TORCH_INDEX ?= # e.g. https://download.pytorch.org/whl/cpu where the default index would give a CUDA build

.PHONY: env train sample play test lint bench clean

env: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found; install Python 3.11 or pass PYTHON=python3"; exit 2; }
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0 $(if $(strip $(TORCH_INDEX)),--index-url $(strip $(TORCH_INDEX)))   # pinned first: a bare `torch` from PyPI pulls a CUDA build (GBs)
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

train: env
	$(BIN)/python train.py $(ARGS)

sample: env
	$(BIN)/python sample.py $(ARGS)

play: env
	$(BIN)/python sample.py mode=serve $(ARGS)

test: env
	$(BIN)/python -m pytest -q $(ARGS)

lint: env
	$(BIN)/ruff check src tests benchmarks train.py sample.py

bench: env
	$(BIN)/python -m benchmarks $(ARGS)

clean:
	rm -rf outputs multirun .pytest_cache
