"""The data market on chain: the Ledger interface, Web3Ledger, deployment and a local chain."""

from fedmarket.ledger.base import Ledger, ListingState, PurchaseRecord, PurchaseState, TaskState
from fedmarket.ledger.deploy import deploy
from fedmarket.ledger.deployment import Deployment
from fedmarket.ledger.web3_ledger import Web3Ledger

__all__ = [
    "Deployment",
    "Ledger",
    "ListingState",
    "PurchaseRecord",
    "PurchaseState",
    "TaskState",
    "Web3Ledger",
    "deploy",
]
