# Two entry points for a fresh machine: `make demo` and `make test` (each installs first).
VENV ?= .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
# Dataset archives are taken from a local mirror when one exists (CI and offline machines), else downloaded.
export FRUITLAB_DATA_MIRROR ?= $(wildcard $(abspath ../shared/datasets))

.PHONY: install demo test test-fast lint format ui browser bench

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[dev]'
	touch $@

demo: install
	$(BIN)/fruitlab data fetch fruits_fresh_rotten
	$(BIN)/fruitlab fit --experiment quickstart

lint: install
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/lint-imports

test: lint browser
	$(BIN)/pytest

# The real-browser tests drive Debian's chromium through chromedriver; install them once if they are missing.
browser:
	@test -x /usr/bin/chromedriver || { echo "installing Debian's chromium + chromium-driver for the browser tests"; \
	  apt-get install -y -q chromium chromium-driver >/dev/null || \
	  { apt-get update -q >/dev/null && apt-get install -y -q chromium chromium-driver >/dev/null; }; }

test-fast: install
	$(BIN)/pytest -m "not slow"

# Every benchmark of benchmarks/performance.py (about 50 minutes on 2 CPU cores); the results name the machine.
bench: install
	$(PY) benchmarks/performance.py all --out benchmarks/performance.md

format: install
	$(BIN)/ruff check --fix src tests benchmarks
	$(BIN)/ruff format src tests benchmarks

ui: install
	$(BIN)/fruitlab ui
