"""Gas per market operation on a real anvil node, beside a naive per-update design.

- Every operation's ``gasUsed`` (from its receipt).
- ``gas_per_update``: one ``commitRound`` ÷ devices in the round, for 10, 100 and 1,000 devices,
  next to ``NaiveRewards`` (one storage write and one token transfer per update) in the same run
  (goal: <= 2,000 gas per update at 100 devices).
- ``claim_gas`` for a device claiming 1, 10 or 100 rounds at once from a 100-device tree, as a
  first claim (fresh storage, fresh token holder) and as a later claim (goal: <= 60,000 gas;
  Uniswap's MerkleDistributor: 62.8k-91.6k).
- the challenge game: ``challenge`` (with an earlier leaf), ``challengeWithAck``, ``answer`` and
  ``voidRound``, on 100-device Merkle-sum trees.
- v2's other payouts and the sale's steps: ``claimAcknowledged``, ``creditAck``,
  ``claimSaleShare``, ``buyWithPermit`` and ``deliverKey`` with a one-time alt_bn128 key,
  ``dispute`` (two ``ecMul`` precompile calls), ``settle``, ``closeTask`` and ``refundUnspent``.

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
from fedmarket.acks import Ack, sign_ack
from fedmarket.crypto import AssetKey, OneTimeKey, deliver_key
from fedmarket.ledger import Web3Ledger, deploy
from fedmarket.ledger.chain import LocalChain, dev_accounts, rpc
from fedmarket.ledger.deploy import deploy_contract, send_call
from fedmarket.market.rewards import RewardTree
from fedmarket.receipts import Receipt, sign_receipt
from fedmarket.types import TaskId

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from chain_helpers import (
    CHALLENGE_WINDOW,
    CLOSE_GRACE,
    DELIVERY_WINDOW,
    DISPUTE_WINDOW,
    EMPTY_CID,
    MODEL_CID,
    MODEL_COMMITMENT,
    RESPONSE_WINDOW,
    commit,
    helper_artifact,
)
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


def advance(rpc_url: str, seconds: int) -> None:
    rpc(rpc_url, "evm_increaseTime", [seconds])
    rpc(rpc_url, "evm_mine")


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
            deployment = deploy(
                w3,
                accounts[0],
                delivery_window=DELIVERY_WINDOW,
                dispute_window=DISPUTE_WINDOW,
                close_grace=CLOSE_GRACE,
                challenge_window=CHALLENGE_WINDOW,
                response_window=RESPONSE_WINDOW,
            )
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
                advance(chain.rpc_url, CHALLENGE_WINDOW + 1)  # the roots are final
                # anyone may submit a claim: the device pays gas, the tokens go to the account
                device.claim(claim_task, k, fresh.address, TOKEN * k, proof)
                first = last_gas(w3, device.address)
                tree = RewardTree.build(dict.fromkeys(cohort, TOKEN * (k + 1)))
                commit(aggregator, claim_task, k + 1, tree)
                later_proof = tree.proof(fresh.address)
                advance(chain.rpc_url, CHALLENGE_WINDOW + 1)
                device.claim(claim_task, k + 1, fresh.address, TOKEN * (k + 1), later_proof)
                later = last_gas(w3, device.address)
                rows.append(
                    {
                        "kind": "claim",
                        "rounds": k,
                        "cohort": len(cohort),
                        "first_proof_length": len(proof),
                        "first_claim_gas": first,
                        "later_proof_length": len(later_proof),
                        "later_claim_gas": later,
                        "goal": 60000,
                    }
                )
                print(f"claim after {k:>3d} rounds     first {first:,} / later {later:,} gas")

            # The challenge game on 100-device trees: a device whose earlier leaf the next root
            # keeps is answered; one the root leaves out despite an ack voids it, then is paid.
            market = deployment.market
            game = sponsor.create_task(
                aggregator=aggregator.address,
                reward_per_update=TOKEN,
                budget=budget,
                spec_cid=EMPTY_CID,
            )
            watcher = sponsor.as_account(accounts[4])
            others = addresses(98, seed=4242)
            first_root = RewardTree.build(dict.fromkeys([device.address, *others], TOKEN))
            commit(aggregator, game, 1, first_root)
            advance(chain.rpc_url, CHALLENGE_WINDOW + 1)
            second = {**dict.fromkeys([device.address, *others], 2 * TOKEN)}
            second_root = RewardTree.build({**second, addresses(1, seed=5)[0]: TOKEN})
            commit(aggregator, game, 2, second_root)
            device.challenge(
                game,
                2,
                evidence_round=1,
                account=device.address,
                cumulative_amount=TOKEN,
                proof=first_root.proof(device.address),
            )
            op("challenge", device, "with the caller's leaf in an earlier root (proof length 7)")
            aggregator.answer(game, 2, device.address, 2 * TOKEN, second_root.proof(device.address))
            op("answer", aggregator, "the challenger's leaf in the challenged root")
            acked = Ack(game, 2, watcher.address, bytes(32), 5 * TOKEN)
            signature = sign_ack(acked, accounts[1], chain_id=deployment.chain_id, market=market)
            watcher.challenge_with_ack(game, 2, acked, signature)
            op("challengeWithAck", watcher, "EIP-712 ack recovered on chain")
            advance(chain.rpc_url, RESPONSE_WINDOW + 1)
            watcher.void_round(game, 2, watcher.address)
            op("voidRound", watcher, "unanswered: root voided, task frozen, total rolled back")
            watcher.claim_acknowledged(acked, signature)
            op(
                "claimAcknowledged",
                watcher,
                "frozen task, from unreserved escrow: fresh storage, fresh token holder",
            )

            # An ack claimed before its device's leaf, then that leaf credited (100-device root).
            credit_task = sponsor.create_task(
                aggregator=aggregator.address,
                reward_per_update=TOKEN,
                budget=budget,
                spec_cid=EMPTY_CID,
            )
            credit_root = RewardTree.build(dict.fromkeys([device.address, *others], TOKEN))
            commit(aggregator, credit_task, 1, credit_root)
            advance(chain.rpc_url, CHALLENGE_WINDOW + 1)
            sponsor.close_task(credit_task)
            advance(chain.rpc_url, CLOSE_GRACE + 1)  # commits are over: acks pay
            early = Ack(credit_task, 2, device.address, bytes(32), 2 * TOKEN)
            watcher.claim_acknowledged(
                early, sign_ack(early, accounts[1], chain_id=deployment.chain_id, market=market)
            )
            leaf_proof = credit_root.proof(device.address)
            watcher.credit_ack(credit_task, device.address, TOKEN, leaf_proof)
            op(
                "creditAck",
                watcher,
                f"its leaf in the final committed root, proof {len(leaf_proof)}",
            )

            # Sales: round 2 (100 devices, final) sold with 20 % to its devices.
            sponsor.transfer(buyer.address, 1000 * TOKEN)
            key = AssetKey.generate()
            listing = seller.list_asset(
                task=task,
                round=2,
                asset_cid=MODEL_CID,
                price=100 * TOKEN,
                key_commitment=key.commitment,
                metadata_cid=EMPTY_CID,
                contributors_bps=2000,
            )
            op("list", seller)

            def bought(note: str = "") -> tuple[int, OneTimeKey]:
                one_time = OneTimeKey.generate()
                purchase = buyer.buy(listing, buyer_key=one_time.public, max_price=100 * TOKEN)
                if note:
                    op("buyWithPermit", buyer, note)
                return purchase, one_time

            def delivered(purchase: int, asset_key: AssetKey, note: str = "") -> None:
                delivery = deliver_key(
                    asset_key,
                    buyer.buyer_key(purchase),
                    purchase=purchase,
                    chain_id=deployment.chain_id,
                    market=market,
                )
                seller.deliver_key(purchase, delivery)
                if note:
                    op("deliverKey", seller, note)

            sold, _ = bought("permit + payment + one-time alt_bn128 key, one transaction")
            delivered(sold, key, "ephemeral point checked on the curve + 32-byte masked key")
            wrong, one_time = bought()
            wrong_delivery = deliver_key(
                AssetKey.generate(),
                buyer.buyer_key(wrong),
                purchase=wrong,
                chain_id=deployment.chain_id,
                market=market,
            )
            seller.deliver_key(wrong, wrong_delivery)
            buyer.dispute(wrong, one_time, wrong_delivery)
            op("dispute", buyer, "wrong key proven: 2 ecMul precompile calls + sha256, refund")
            unsent, _ = bought()
            advance(chain.rpc_url, DISPUTE_WINDOW + 1)
            seller.settle(sold)
            op("settle", seller, "seller share to owed, contributors' share to the round")
            seller.withdraw()
            op("withdraw", seller)
            buyer.refund(unsent)
            op("refund", buyer, "no key within the delivery window")
            member = addresses(100, seed=7)[0]
            round2 = RewardTree.build(dict.fromkeys(addresses(100, seed=7), TOKEN * 2))
            device.claim_sale_share(task, 2, member, 2 * TOKEN, round2.proof(member))
            op("claimSaleShare", device, "100-device round, first share: fresh storage and holder")
            sponsor.close_task(task)
            op("closeTask", sponsor, "starts the close grace")
            advance(chain.rpc_url, 2 * CLOSE_GRACE + 1)  # the close grace, then the acks' grace
            sponsor.refund_unspent(task)
            op(
                "refundUnspent",
                sponsor,
                "a grace after commits stop: escrow above committed + ack-paid (or paid)",
            )
            receipt = Receipt.for_update(
                task=1,
                round=1,
                device=accounts[2].address,
                trained_from=MODEL_COMMITMENT,
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
