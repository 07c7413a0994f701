"""Deploy FedToken and DataMarket from the packaged artifacts."""

from __future__ import annotations

from eth_account.signers.local import LocalAccount
from web3 import Web3

from fedmarket.contracts import load_artifact
from fedmarket.exceptions import InvalidInput, TransactionFailed
from fedmarket.ledger.deployment import Deployment

DEFAULT_SUPPLY = 10**9 * 10**18  # one billion tokens with 18 decimals, all to the deployer
DEFAULT_DELIVERY_WINDOW = 24 * 3600  # seconds a seller has to deliver a bought key


def deploy(
    w3: Web3,
    deployer: LocalAccount,
    *,
    supply: int = DEFAULT_SUPPLY,
    delivery_window: int = DEFAULT_DELIVERY_WINDOW,
    timeout: float = 120.0,
) -> Deployment:
    """Deploy the token (whole supply to ``deployer``) and the market; return their addresses."""
    if supply <= 0 or delivery_window <= 0:
        raise InvalidInput("supply and delivery_window must be positive")
    token = _deploy(w3, deployer, "FedToken", (deployer.address, supply), timeout)
    market = _deploy(w3, deployer, "DataMarket", (token, delivery_window), timeout)
    return Deployment(
        chain_id=w3.eth.chain_id, token=token, market=market, block=w3.eth.block_number
    )


def _deploy(
    w3: Web3, deployer: LocalAccount, name: str, args: tuple[object, ...], timeout: float
) -> str:
    artifact = load_artifact(name)
    factory = w3.eth.contract(abi=artifact.abi, bytecode=artifact.bytecode)
    tx = factory.constructor(*args).build_transaction(
        {
            "from": deployer.address,
            "nonce": w3.eth.get_transaction_count(deployer.address, "pending"),
            "chainId": w3.eth.chain_id,
        }
    )
    signed = deployer.sign_transaction(tx)
    receipt = w3.eth.wait_for_transaction_receipt(
        w3.eth.send_raw_transaction(signed.raw_transaction), timeout=timeout
    )
    if receipt["status"] != 1 or receipt["contractAddress"] is None:
        raise TransactionFailed(f"deploying {name} reverted (transaction {signed.hash.hex()})")
    return str(receipt["contractAddress"])
