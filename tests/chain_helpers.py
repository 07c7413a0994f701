"""A real anvil chain for tests: started once per session, each test on a fresh snapshot."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from eth_account.signers.local import LocalAccount
from net import free_port
from web3 import Web3

from fedmarket.ledger import Deployment, Web3Ledger, deploy
from fedmarket.ledger.chain import LocalChain, dev_accounts, rpc
from fedmarket.market.bundle import SignedReceipt
from fedmarket.market.publisher import RoundPublisher
from fedmarket.market.rewards import RewardTree
from fedmarket.market.sealed_models import model_commitment
from fedmarket.receipts import Receipt, sign_receipt
from fedmarket.store import LocalStore
from fedmarket.types import TaskId

HELPERS = Path(__file__).resolve().parents[1] / "contracts" / "test-artifacts"
EMPTY_CID = "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku"
MODEL_CID = "bafybeigdyrzt5sfp7udm7hu76uh7y26nf3efuylqabf3oclgtqy55fbzdi"
# A fixed hiding commitment (as sealed_models.model_commitment makes) for the model at MODEL_CID.
MODEL_COMMITMENT = model_commitment(bytes(32), b"fedmarket test model")
DELIVERY_WINDOW = DISPUTE_WINDOW = CLOSE_GRACE = 3600  # short windows: tests move chain time
CHALLENGE_WINDOW = RESPONSE_WINDOW = 600


def commit(aggregator: Web3Ledger, task: TaskId, round_: int, tree: RewardTree) -> bool:
    """The aggregator commits ``tree`` as round ``round_`` (a fixed model commitment, ciphertext
    CID and bundle CID)."""
    return aggregator.commit_round(
        task,
        round_,
        model_commitment=MODEL_COMMITMENT,
        model_cid=MODEL_CID,
        bundle_cid=EMPTY_CID,
        rewards_root=tree.root,
        cumulative_total=tree.total,
    )


def open_publisher(chain: Chain, task: TaskId, folder: Path) -> RoundPublisher:
    """The aggregator's (account 1) publisher for ``task``, its store and state in ``folder``."""
    return RoundPublisher(
        store=LocalStore(folder / "store"),
        ledger=chain.ledger(1),
        task=task,
        chain_id=chain.deployment.chain_id,
        market=chain.deployment.market,
        state_path=folder / "publisher.json",
    )


def signed_receipt(
    chain: Chain,
    device: LocalAccount,
    task: TaskId,
    round_: int,
    trained_from: bytes,
    *,
    claimed_round: int = 0,
    weight: int = 100,
    epsilon: float = 1.5,
) -> SignedReceipt:
    """``device``'s signed receipt for one update of ``round_`` trained from ``trained_from``;
    ``claimed_round`` makes it name another round (a replay)."""
    receipt = Receipt.for_update(
        task=task,
        round=claimed_round or round_,
        device=device.address,
        trained_from=trained_from,
        upload_digest=hashlib.sha256(f"{device.address}/{task}/{round_}".encode()).digest(),
        weight=weight,
        epsilon=epsilon,
        delta=1e-5,
    )
    signature = sign_receipt(
        receipt, device, chain_id=chain.deployment.chain_id, market=chain.deployment.market
    )
    return SignedReceipt(receipt, signature)


def helper_artifact(name: str) -> dict[str, Any]:
    document: dict[str, Any] = json.loads((HELPERS / f"{name}.json").read_text())
    return document


@dataclass
class Chain:
    """A deployed market on anvil with funded dev accounts (0 = deployer/treasury)."""

    local: LocalChain
    w3: Web3
    deployment: Deployment
    accounts: list[LocalAccount]

    def ledger(self, index: int) -> Web3Ledger:
        return Web3Ledger(self.w3, self.deployment, self.accounts[index], receipt_timeout=30)

    def snapshot(self) -> str:
        return str(rpc(self.local.rpc_url, "evm_snapshot"))

    def revert(self, snapshot: str) -> None:
        assert rpc(self.local.rpc_url, "evm_revert", [snapshot]) is True

    def advance(self, seconds: int) -> None:
        rpc(self.local.rpc_url, "evm_increaseTime", [seconds])
        rpc(self.local.rpc_url, "evm_mine")

    def finalize(self) -> None:
        """Let the challenge window of every root committed so far pass: they pay claims."""
        self.advance(CHALLENGE_WINDOW + 1)


def start_chain(folder: Path) -> Iterator[Chain]:
    local = LocalChain(folder, port=free_port())
    local.up()
    try:
        w3 = Web3(Web3.HTTPProvider(local.rpc_url, request_kwargs={"timeout": 30}))
        accounts = dev_accounts(10)
        deployment = deploy(
            w3,
            accounts[0],
            delivery_window=DELIVERY_WINDOW,
            dispute_window=DISPUTE_WINDOW,
            close_grace=CLOSE_GRACE,
            challenge_window=CHALLENGE_WINDOW,
            response_window=RESPONSE_WINDOW,
        )
        yield Chain(local, w3, deployment, accounts)
    finally:
        local.down()
