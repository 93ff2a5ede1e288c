# Two commands on a fresh machine with Python 3.10+: `make demo` and `make test`.
# Each bootstraps .venv itself; nothing needs to be installed first.

SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# pip repeats a warning for every package when an extra index folder is missing; drop that noise only.
PIP := $(BIN)/python -m pip install --disable-pip-version-check -q
QUIET := sed -u '/is ignored: it is neither a file nor a directory/d'

.PHONY: demo engine-demo test lint typecheck unit bench reliability install-check clean

$(BIN)/python:
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 10), "Python 3.10+ is needed, found " + sys.version'
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed-base: pyproject.toml | $(BIN)/python
	$(PIP) -e . 2>&1 | $(QUIET)
	touch $@

$(VENV)/.installed-test: pyproject.toml constraints-test.txt | $(BIN)/python
	$(PIP) -e '.[test]' -c constraints-test.txt 2>&1 | $(QUIET)
	touch $@ $(VENV)/.installed-base

$(VENV)/.installed-bench: $(VENV)/.installed-test
	$(PIP) -e '.[test,bench]' -c constraints-test.txt 2>&1 | $(QUIET)
	touch $@

demo: $(VENV)/.installed-base
	$(BIN)/python examples/airflow_demo.py

engine-demo: $(VENV)/.installed-base
	$(BIN)/python examples/engine_demo.py

lint: $(VENV)/.installed-test
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(VENV)/.installed-test
	$(BIN)/mypy

# Two workers, each file on one of them (a module's live stack starts once): most tests wait on an Airflow
# start-up, a retry delay or a lease, so two share the 2 cores of CI. TEST_JOBS=0 runs them in this process.
TEST_JOBS ?= 2
unit: $(VENV)/.installed-test
	$(BIN)/python -m pytest -n $(TEST_JOBS) --dist loadfile

test: lint typecheck unit

# Benchmarks (not part of `make test`; a smoke run of each script is). PostgreSQL joins when its URL is set.
# bench.targets first: issue 15's targets side by side, each with PASS/FAIL (README "Performance").
BENCH_POSTGRES = CHECKMATE_BENCH_POSTGRES_URL="$${CHECKMATE_BENCH_POSTGRES_URL-$${CHECKMATE_TEST_POSTGRES_URL-}}"
bench: $(VENV)/.installed-bench
	$(BENCH_POSTGRES) $(BIN)/python -m bench.targets
	$(BENCH_POSTGRES) $(BIN)/python -m bench.backends
	$(BIN)/python -m bench.overhead --stages 10 100 1000  # 10000 by hand: 4 of the 10 minutes
	$(BIN)/python -m bench.resume
	$(BIN)/python -m bench.large_state
	$(BIN)/python -m bench.airflow_chain
	$(BIN)/python -m bench.startup

# Fresh virtualenvs, `pip install` of the built wheel with [s3], [postgres], alone, and on the lowest
# Airflow declared, without a constraints file, timed (limit 3 min each). Needs the package index and
# several minutes, so it is not part of `make test`; its test skips, with the reason, when not asked for.
install-check: $(VENV)/.installed-test
	CHECKMATE_INSTALL_CHECK=1 $(BIN)/python -m pytest -p no:cacheprovider -s tests/test_fresh_install.py

# Reliability campaigns at full size (a seeded subset of each runs in `make test`); PostgreSQL as in .ci/run.
reliability: $(VENV)/.installed-test
	CHECKMATE_RELIABILITY_POSTGRES_URL="$${CHECKMATE_RELIABILITY_POSTGRES_URL-$${CHECKMATE_TEST_POSTGRES_URL-postgresql://postgres@127.0.0.1:5432/test}}" \
		$(BIN)/python -m reliability

clean:
	rm -rf $(VENV) .demo .pytest_cache .mypy_cache .ruff_cache
