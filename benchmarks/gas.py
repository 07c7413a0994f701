"""Gas per market operation on a real anvil node, beside a naive per-update design.

- Every operation's ``gasUsed`` (from its receipt).
- ``gas_per_update``: one ``commitRound`` ÷ devices in the round, for 10, 100 and 1,000 devices,
  next to ``NaiveRewards`` (one storage write and one token transfer per update) in the same run
  (goal: <= 2,000 gas per update at 100 devices).
- ``claim_gas`` for a device claiming 1, 10 or 100 rounds at once from a 100-device tree, as a
  first claim (fresh storage, fresh token holder) and as a later claim (goal: <= 60,000 gas;
  Uniswap's MerkleDistributor: 62.8k-91.6k).

Run: ``python -m benchmarks.gas``.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import Any

from eth_account import Account
from eth_account.signers.local import LocalAccount
from web3 import Web3

from benchmarks.common import write_results
from fedmarket.crypto import AssetKey, Identity, seal_key
from fedmarket.ledger import Web3Ledger, deploy
from fedmarket.ledger.chain import LocalChain, dev_accounts, rpc
from fedmarket.ledger.deploy import deploy_contract, send_call
from fedmarket.market.rewards import RewardTree
from fedmarket.receipts import Receipt, sign_receipt
from fedmarket.types import TaskId

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from chain_helpers import EMPTY_CID, MODEL_CID, commit, helper_artifact
from net import free_port

COHORTS = (10, 100, 1000)
CLAIM_ROUNDS = (1, 10, 100)
TOKEN = 10**18


def last_gas(w3: Web3, address: str) -> int:
    """gasUsed of ``address``'s most recent transaction."""
    block = w3.eth.get_block("latest", full_transactions=True)
    for tx in reversed(block["transactions"]):
        if tx["from"] == address:  # type: ignore[index]
            return int(w3.eth.get_transaction_receipt(tx["hash"])["gasUsed"])  # type: ignore[index]
    raise RuntimeError("no transaction from that address in the latest block")


def addresses(count: int, seed: int) -> list[str]:
    return [
        Account.from_key(((seed << 32) + i + 1).to_bytes(32, "big")).address for i in range(count)
    ]


def commit_gas(aggregator: Web3Ledger, task: TaskId, round_: int, tree: RewardTree) -> int:
    commit(aggregator, task, round_, tree)
    return last_gas(aggregator.w3, aggregator.address)


def naive_gas(w3: Web3, payer: LocalAccount, token: Web3Ledger, devices: int) -> int:
    artifact = helper_artifact("NaiveRewards")
    address = deploy_contract(
        w3, payer, artifact["abi"], artifact["bytecode"], token.deployment.token
    )
    naive = w3.eth.contract(address=address, abi=artifact["abi"])
    token.approve(naive.address, 2**255)
    total, batch = 0, 200  # a block holds ~30M gas: 1,000 naive updates need several blocks
    recipients = addresses(devices, seed=devices)
    for start in range(0, devices, batch):
        chunk = recipients[start : start + batch]
        uploads = [bytes([1]) * 32] * len(chunk)
        receipt = send_call(w3, payer, naive.functions.commitRound(1, chunk, uploads, 1))
        total += int(receipt["gasUsed"])
    return total


def main() -> None:
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="fedmarket-gas-") as tmp:
        chain = LocalChain(Path(tmp), port=free_port())
        chain.up()
        try:
            w3 = Web3(Web3.HTTPProvider(chain.rpc_url, request_kwargs={"timeout": 60}))
            accounts = dev_accounts(6)
            deployment = deploy(w3, accounts[0], delivery_window=3600)
            sponsor = Web3Ledger(w3, deployment, accounts[0])
            aggregator = sponsor.as_account(accounts[1])
            device = sponsor.as_account(accounts[2])
            buyer = sponsor.as_account(accounts[3])
            seller = aggregator

            def op(name: str, who: Web3Ledger, note: str = "") -> None:
                gas = last_gas(w3, who.address)
                rows.append({"kind": "operation", "operation": name, "gas": gas, "note": note})
                print(f"{name:28s} {gas:>9,d} gas  {note}")

            budget = 10**6 * TOKEN
            task = sponsor.create_task(
                aggregator=aggregator.address,
                reward_per_update=TOKEN,
                budget=budget,
                spec_cid=EMPTY_CID,
            )
            op("createTaskWithPermit", sponsor, "permit + escrow in one transaction")

            # Commit cost does not depend on the cohort: measure each size, same contract.
            per_update: dict[int, int] = {}
            for round_, n in enumerate(COHORTS, start=1):
                tree = RewardTree.build(dict.fromkeys(addresses(n, seed=7), TOKEN * round_))
                per_update[n] = commit_gas(aggregator, task, round_, tree)
            naive = {n: naive_gas(w3, accounts[0], sponsor, n) for n in COHORTS}
            for n in COHORTS:
                ours = per_update[n] / n
                theirs = naive[n] / n
                rows.append(
                    {
                        "kind": "per_update",
                        "devices": n,
                        "commit_gas": per_update[n],
                        "gas_per_update": ours,
                        "naive_gas_per_update": theirs,
                        "naive_over_ours": theirs / ours,
                        "goal": 2000 if n == 100 else None,
                    }
                )
                print(f"commitRound n={n:<5d} {ours:>9,.0f} gas/update  naive {theirs:,.0f}")

            # Claims: a device in a 100-device cohort claims after k rounds, once.
            for k in CLAIM_ROUNDS:
                claim_task = sponsor.create_task(
                    aggregator=aggregator.address,
                    reward_per_update=TOKEN,
                    budget=budget,
                    spec_cid=EMPTY_CID,
                )
                cohort = [accounts[2].address, *addresses(99, seed=1000 + k)]
                fresh = Account.from_key((0xBEEF00 + k).to_bytes(32, "big"))
                cohort[1] = fresh.address
                for round_ in range(1, k + 1):
                    tree = RewardTree.build(dict.fromkeys(cohort, TOKEN * round_))
                    commit(aggregator, claim_task, round_, tree)
                proof = tree.proof(fresh.address)
                # anyone may submit a claim: the device pays gas, the tokens go to the account
                device.claim(claim_task, fresh.address, TOKEN * k, proof)
                first = last_gas(w3, device.address)
                tree = RewardTree.build(dict.fromkeys(cohort, TOKEN * (k + 1)))
                commit(aggregator, claim_task, k + 1, tree)
                device.claim(claim_task, fresh.address, TOKEN * (k + 1), tree.proof(fresh.address))
                later = last_gas(w3, device.address)
                rows.append(
                    {
                        "kind": "claim",
                        "rounds": k,
                        "cohort": len(cohort),
                        "proof_length": len(proof),
                        "first_claim_gas": first,
                        "later_claim_gas": later,
                        "goal": 60000,
                    }
                )
                print(f"claim after {k:>3d} rounds     first {first:,} / later {later:,} gas")

            # Sales.
            sponsor.transfer(buyer.address, 1000 * TOKEN)
            key, identity = AssetKey.generate(), Identity.generate()
            listing = seller.list_asset(
                task=task,
                asset_cid=MODEL_CID,
                price=100 * TOKEN,
                key_commitment=key.commitment,
                metadata_cid=EMPTY_CID,
                contributors_bps=2000,
            )
            op("list", seller)
            purchase = buyer.buy(listing, buyer_key=identity.public_key, max_price=100 * TOKEN)
            op("buyWithPermit", buyer, "permit + payment + purchase in one transaction")
            seller.deliver_key(purchase, seal_key(key, identity.public_key))
            op("deliverKey", seller, "80-byte sealed key in the event")
            seller.withdraw()
            op("withdraw", seller)
            refunded = buyer.buy(listing, buyer_key=identity.public_key, max_price=100 * TOKEN)
            rpc(chain.rpc_url, "evm_increaseTime", [3601])
            rpc(chain.rpc_url, "evm_mine")
            buyer.refund(refunded)
            op("refund", buyer)
            sponsor.close_task(task)
            op("closeTask", sponsor, "returns unspent escrow")
            receipt = Receipt.for_update(
                task=1,
                round=1,
                device=accounts[2].address,
                model_cid=MODEL_CID,
                upload_digest=bytes(32),
                weight=100,
                epsilon=1.0,
                delta=1e-5,
            )
            signature = sign_receipt(
                receipt, accounts[2], chain_id=deployment.chain_id, market=deployment.market
            )
            view_gas = sponsor._c.market.functions.receiptSigner(
                tuple(receipt.as_struct().values()), signature
            ).estimate_gas()
            rows.append(
                {
                    "kind": "operation",
                    "operation": "receiptSigner (view)",
                    "gas": view_gas,
                    "note": "EIP-712 recovery, free as a call",
                }
            )
        finally:
            chain.down()
    write_results("gas", rows)


if __name__ == "__main__":
    main()
