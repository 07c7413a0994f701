# Two commands for users: `make demo` and `make test`. Both set up .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export FLWR_DISABLE_UPDATE_CHECK := 1
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: setup demo test test-fast lint bench clean

setup: $(STAMP)

# torch first, pinned: an unpinned torch would pull several GB of CUDA wheels.
$(STAMP): pyproject.toml requirements.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -c requirements.lock -e ".[dev]"
	$(BIN)/pip check
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/fedmarket demo $(ARGS)

test: $(STAMP)
	$(BIN)/pytest $(ARGS)

test-fast: $(STAMP)
	$(BIN)/pytest -m "not slow and not integration" $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check fedmarket strategies tests benchmarks
	$(BIN)/ruff format --check fedmarket strategies tests benchmarks
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/python -m benchmarks.dp_overhead
	$(BIN)/python -m benchmarks.dp_utility
	$(BIN)/python -m benchmarks.secagg
	$(BIN)/python -m benchmarks.readme_table

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
