"""Shared test helpers: small constructors, no fixture webs."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from chain_helpers import Chain, start_chain
from ipfs_daemon import IpfsDaemon

os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")
os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")


@pytest.fixture(scope="session")
def ipfs_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[IpfsDaemon]:
    """A real IPFS daemon (js-ipfs) on loopback, shared by the session's integration tests."""
    with IpfsDaemon(tmp_path_factory.mktemp("ipfs") / "repo") as daemon:
        yield daemon


@pytest.fixture(scope="session")
def anvil_chain(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Chain]:
    """A real anvil node with the compiled market deployed, shared by the session."""
    yield from start_chain(tmp_path_factory.mktemp("anvil"))


@pytest.fixture
def chain(anvil_chain: Chain) -> Iterator[Chain]:
    """The session's chain, rolled back to a snapshot after the test."""
    snapshot = anvil_chain.snapshot()
    yield anvil_chain
    anvil_chain.revert(snapshot)
