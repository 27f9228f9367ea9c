# The README's two commands. Each creates .venv with python3 if it is missing and
# installs the package (with its dev extra) into it; nothing else is assumed on the machine.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench clean

# Only the folders that exist: git does not keep empty ones, so a fresh clone may lack some.
LINT_DIRS := $(wildcard drift_jax tests experiments benchmarks notebooks)

$(BIN)/python:
	$(PY) -m venv $(VENV)

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m drift_jax.demo
	$(BIN)/python experiments/monte_carlo_regimes.py --quick --out demo_output/monte_carlo
	$(BIN)/python experiments/market_making.py --quick --out demo_output/market_making

# The tests keep compiled programs in .jax_cache (tests/conftest.py); the notebooks share it.
test: $(STAMP)
	$(BIN)/ruff check $(LINT_DIRS)
	$(BIN)/python -m pytest -n 2 --dist loadgroup -q --doctest-modules drift_jax tests
	JAX_COMPILATION_CACHE_DIR=$(CURDIR)/.jax_cache JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=0 \
		$(BIN)/python -m pytest -q --nbmake notebooks

lint: $(STAMP)
	$(BIN)/ruff check $(LINT_DIRS)
	$(BIN)/ruff format --check drift_jax tests

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_kalman.py
	$(BIN)/python benchmarks/bench_imm.py
	$(BIN)/python benchmarks/bench_montecarlo.py
	$(BIN)/python benchmarks/bench_fit.py

clean:
	rm -rf $(VENV)
