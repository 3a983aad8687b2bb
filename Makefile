# tfyarn: `make demo` and `make test` each set everything up from scratch (idempotent).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.tfyarn-installed
NATIVE_SRC := $(wildcard native/*.c native/*.h)
PYTEST_ARGS ?=
# pip extras of the venv: `make setup EXTRAS=gpu,dev` on a GPU host (a fresh .venv).
EXTRAS ?= tf,dev

.PHONY: setup demo check test lint bench clean bare-install

$(STAMP): pyproject.toml setup.py scripts/setup-system.sh $(NATIVE_SRC)
	bash scripts/setup-system.sh
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -U pip setuptools wheel
	$(PY) -m pip install -q -e '.[$(EXTRAS)]'
	touch $@

setup: $(STAMP)

demo: setup
	$(VENV)/bin/tfyarn submit --profile local-cluster --workers 2 --ps 1 examples/digits_ps.py

# What a developer runs first (< 3 min): lint, types, and the tests that start no Spark,
# YARN or TensorFlow process cluster (tests/unit: pure planners, codecs, in-process parts).
check: setup
	$(PY) -m ruff check .
	$(PY) -m mypy
	$(PY) -m pytest tests/unit -q $(PYTEST_ARGS)

test: setup
	$(PY) -m ruff check .
	$(PY) -m mypy
	PY=$(PY) bash scripts/test-suite.sh $(PYTEST_ARGS)

lint: setup
	$(PY) -m ruff check .
	$(PY) -m mypy
	$(PY) -m ruff format --check tfyarn tests benchmarks examples

bench: setup
	$(VENV)/bin/tfyarn bench all

# The quick start in a bare Debian bookworm root (debootstrap; as root, ~15 min): proves
# scripts/setup-system.sh installs every system package. `scripts/bare-install.sh test`
# runs `make test` there too.
bare-install:
	bash scripts/bare-install.sh demo

clean:
	rm -rf build *.egg-info tfyarn/*.so .pytest_cache
