# Two commands for a newcomer on a fresh machine:
#   make demo   set up, then run the whole pipeline offline on the bundled real sample
#   make test   set up, then lint and run the test suite (exactly what CI runs)

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# The CPU build of torch. Override for a GPU machine, e.g. `make setup TORCH=torch` (CUDA build).
TORCH  ?= torch==2.13.0
PYTEST_ARGS ?=

.PHONY: setup check-python demo test test-fast lint browser fits-tools bench clean

setup: $(VENV)/.installed

# A fresh Debian/Ubuntu has python3 without venv's ensurepip (package python3-venv): say so here
# instead of letting `python3 -m venv` fail half-way with a traceback.
check-python:
	@$(PYTHON) -c 'import sys, venv, ensurepip; ensurepip.version(); sys.exit(sys.version_info < (3, 10))' \
	  2>/dev/null || { echo "make setup: $(PYTHON) must be Python >= 3.10 with venv and ensurepip;" \
	  "on Debian/Ubuntu: sudo apt install python3-venv (or: make setup PYTHON=python3.X)" >&2; exit 1; }

# The population extra (bagpipes, scikit-learn: ~15 s, ~560 MB) makes the demo's SYNTHETIC galaxy
# population and lets the suite test it.
$(VENV)/.installed: pyproject.toml | check-python
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH)"
	$(BIN)/python -m pip install --quiet -e ".[dev,population]"
	touch $@

demo: setup
	$(BIN)/specetl demo --out demo-out

# ruff, then the house's import rules (no circular imports, etl/model/shardio one-way, nothing
# of the product imports benchmarks/ or tests/): .ci/import_check.py
lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python .ci/import_check.py

# The explorer page's test drives a real headless Chromium (Debian's chromium + chromium-driver).
# Installed here when missing and apt is usable (CI runs as root on Debian); elsewhere the test
# skips and says why.
browser:
	@if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then :; \
	elif command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
			chromium chromium-driver >/dev/null) \
		|| echo "make browser: could not install chromium; the browser test will skip"; \
	else echo "make browser: chromium/chromedriver missing; the browser test will skip"; fi

# The FITS outputs' test runs the field's own tools on them: NASA's fitsverify and STILTS (the
# command-line TOPCAT), Debian's fitsverify and stilts. Installed like chromium; else it skips.
fits-tools:
	@if command -v fitsverify >/dev/null && command -v stilts >/dev/null; then :; \
	elif command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
			fitsverify stilts >/dev/null) \
		|| echo "make fits-tools: could not install fitsverify/stilts; the FITS checks will skip"; \
	else echo "make fits-tools: fitsverify/stilts missing; the FITS checks will skip"; fi

test: lint browser fits-tools
	$(BIN)/pytest -q $(PYTEST_ARGS)

test-fast: setup
	$(BIN)/pytest -q -m "not slow" $(PYTEST_ARGS)

bench: setup
	$(BIN)/python benchmarks/preprocess.py

clean:
	rm -rf $(VENV) demo-out .pytest_cache .ruff_cache
