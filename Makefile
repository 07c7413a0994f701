# Two commands for users: `make demo` and `make test`. Both set up .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export FLWR_DISABLE_UPDATE_CHECK := 1
export PIP_DISABLE_PIP_VERSION_CHECK := 1

IPFS_STAMP := tests/ipfs/node_modules/.installed
CONTRACTS_STAMP := contracts/node_modules/.installed

.PHONY: setup ipfs chain contracts demo test test-fast lint bench clean

setup: $(STAMP)

# torch first, pinned: an unpinned torch would pull several GB of CUDA wheels.
$(STAMP): pyproject.toml requirements.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -c requirements.lock -e ".[dev]"
	$(BIN)/pip check
	touch $(STAMP)

# A real IPFS daemon for the IpfsStore tests and benchmark: js-ipfs from npm (kubo's binary
# cannot be fetched offline), pinned by its lock file (`npm ci` trips over an optional peer of
# js-ipfs, so `npm install`). ~4 min and ~290 MB the first time.
$(IPFS_STAMP): tests/ipfs/package.json tests/ipfs/package-lock.json
	cd tests/ipfs && npm install --no-audit --no-fund --loglevel=error
	touch $(IPFS_STAMP)

ipfs: $(IPFS_STAMP)

# solc-js, OpenZeppelin, anvil (a native binary in its npm package) and the Merkle-tree oracle,
# pinned by contracts/package-lock.json. ~15 s.
$(CONTRACTS_STAMP): contracts/package.json contracts/package-lock.json
	cd contracts && npm install --no-audit --no-fund --loglevel=error
	touch $(CONTRACTS_STAMP)

chain: $(CONTRACTS_STAMP)

# Recompile the contracts into fedmarket/contracts/ (committed; a test checks they match).
contracts: $(CONTRACTS_STAMP)
	cd contracts && node build.mjs

demo: $(STAMP) $(CONTRACTS_STAMP)
	$(BIN)/fedmarket demo $(ARGS)

test: $(STAMP) $(IPFS_STAMP) $(CONTRACTS_STAMP)
	$(BIN)/pytest $(ARGS)

test-fast: $(STAMP)
	$(BIN)/pytest -m "not slow and not integration" $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check fedmarket strategies tests benchmarks
	$(BIN)/ruff format --check fedmarket strategies tests benchmarks
	$(BIN)/mypy

bench: $(STAMP) $(IPFS_STAMP) $(CONTRACTS_STAMP)
	$(BIN)/python -m benchmarks.dp_overhead
	$(BIN)/python -m benchmarks.dp_randomness
	$(BIN)/python -m benchmarks.dp_utility
	$(BIN)/python -m benchmarks.privacy_audit
	$(BIN)/python -m benchmarks.secagg
	$(BIN)/python -m benchmarks.store
	$(BIN)/python -m benchmarks.gas
	$(BIN)/python -m benchmarks.round_overhead
	$(BIN)/python -m benchmarks.deploy
	$(BIN)/python -m benchmarks.readme_table

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache tests/ipfs/node_modules contracts/node_modules
