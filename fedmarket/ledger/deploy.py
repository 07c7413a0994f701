"""Deploy FedToken and DataMarket from the packaged artifacts."""

from __future__ import annotations

from typing import Any

from eth_account.signers.local import LocalAccount
from web3 import Web3
from web3.types import TxReceipt

from fedmarket.contracts import load_artifact
from fedmarket.exceptions import InvalidInput, TransactionFailed
from fedmarket.ledger.deployment import Deployment

DEFAULT_SUPPLY = 10**9 * 10**18  # one billion tokens with 18 decimals, all to the deployer
DEFAULT_DELIVERY_WINDOW = 24 * 3600  # seconds a seller has to deliver a bought key
DEFAULT_DISPUTE_WINDOW = 24 * 3600  # seconds a buyer has to prove a delivered key wrong
DEFAULT_CLOSE_GRACE = 24 * 3600  # seconds between a sponsor's close and its refund
DEFAULT_CHALLENGE_WINDOW = 6 * 3600  # seconds after a commit in which a device may challenge it
DEFAULT_RESPONSE_WINDOW = 6 * 3600  # seconds an aggregator has to answer a challenge


def deploy(
    w3: Web3,
    deployer: LocalAccount,
    *,
    supply: int = DEFAULT_SUPPLY,
    delivery_window: int = DEFAULT_DELIVERY_WINDOW,
    dispute_window: int = DEFAULT_DISPUTE_WINDOW,
    close_grace: int = DEFAULT_CLOSE_GRACE,
    challenge_window: int = DEFAULT_CHALLENGE_WINDOW,
    response_window: int = DEFAULT_RESPONSE_WINDOW,
    timeout: float = 120.0,
) -> Deployment:
    """Deploy the token (whole supply to ``deployer``) and the market; return their addresses.

    Windows are in seconds of chain time: ``delivery_window`` for a seller to post a bought key,
    ``dispute_window`` for a buyer to prove it wrong, ``close_grace`` after a sponsor's close
    in which the aggregator may still commit (then acks are paid for another ``close_grace``
    before the unspent refund), ``challenge_window`` after a commit in which a device may
    challenge its rewards root (claims wait for it) and ``response_window`` for the aggregator
    to answer a challenge. ``close_grace`` must be at least ``challenge_window +
    response_window``, so that the last root is settled before the refund.
    """
    windows = (delivery_window, dispute_window, close_grace, challenge_window, response_window)
    if supply <= 0 or min(windows) <= 0:
        raise InvalidInput(
            "supply, delivery_window, dispute_window, close_grace, challenge_window and "
            "response_window must be positive"
        )
    if close_grace < challenge_window + response_window:
        raise InvalidInput(
            f"close_grace ({close_grace} s) must be at least challenge_window + response_window "
            f"({challenge_window + response_window} s): the last root of a closing task must be "
            "settled before its refund opens"
        )
    token_artifact, market_artifact = load_artifact("FedToken"), load_artifact("DataMarket")
    token = deploy_contract(
        w3,
        deployer,
        token_artifact.abi,
        token_artifact.bytecode,
        deployer.address,
        supply,
        timeout=timeout,
    )
    market = deploy_contract(
        w3,
        deployer,
        market_artifact.abi,
        market_artifact.bytecode,
        token,
        delivery_window,
        dispute_window,
        close_grace,
        challenge_window,
        response_window,
        timeout=timeout,
    )
    return Deployment(
        chain_id=w3.eth.chain_id, token=token, market=market, block=w3.eth.block_number
    )


def deploy_contract(
    w3: Web3,
    deployer: LocalAccount,
    abi: list[dict[str, Any]],
    bytecode: str,
    *args: object,
    timeout: float = 120.0,
) -> str:
    """Deploy one contract; return its address."""
    factory = w3.eth.contract(abi=abi, bytecode=bytecode)
    receipt = send_call(w3, deployer, factory.constructor(*args), timeout=timeout)
    if receipt["contractAddress"] is None:
        raise TransactionFailed("the deployment transaction created no contract")
    return str(receipt["contractAddress"])


def send_call(w3: Web3, account: LocalAccount, call: Any, *, timeout: float = 120.0) -> TxReceipt:
    """Sign and send one contract call or constructor; wait for it; raise if it reverted.

    For deployment and tooling; market operations go through :class:`Web3Ledger`, which also
    decodes custom errors and retries safely.
    """
    tx = call.build_transaction(
        {
            "from": account.address,
            "nonce": w3.eth.get_transaction_count(account.address, "pending"),
            "chainId": w3.eth.chain_id,
        }
    )
    signed = account.sign_transaction(tx)
    receipt = w3.eth.wait_for_transaction_receipt(
        w3.eth.send_raw_transaction(signed.raw_transaction), timeout=timeout
    )
    if receipt["status"] != 1:
        raise TransactionFailed(f"transaction 0x{signed.hash.hex()} reverted")
    return receipt
