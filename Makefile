# Two commands for a newcomer on a fresh machine:
#   make demo   set up, then run the whole pipeline offline on the bundled real sample
#   make test   set up, then lint and run the test suite (exactly what CI runs)

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# The CPU build of torch. Override for a GPU machine, e.g. `make setup TORCH=torch` (CUDA build).
TORCH  ?= torch==2.13.0
PYTEST_ARGS ?=

.PHONY: setup demo test test-fast lint bench clean

setup: $(VENV)/.installed

# The population extra (bagpipes, scikit-learn: ~15 s, ~560 MB) makes the demo's SYNTHETIC galaxy
# population and lets the suite test it.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH)"
	$(BIN)/python -m pip install --quiet -e ".[dev,population]"
	touch $@

demo: setup
	$(BIN)/specetl demo --out demo-out

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: lint
	$(BIN)/pytest -q $(PYTEST_ARGS)

test-fast: setup
	$(BIN)/pytest -q -m "not slow" $(PYTEST_ARGS)

bench: setup
	$(BIN)/python benchmarks/preprocess.py

clean:
	rm -rf $(VENV) demo-out .pytest_cache .ruff_cache
