"""The whole story on one machine: chain, store, task, private paid rounds, claims, a sale.

:func:`run_demo` starts a local anvil and a LocalStore under ``out``, deploys the market, lets a
sponsor open a task, runs the federation under DP + SecAgg+ with every round's model stored
encrypted and committed by a hiding commitment, has every device check the rewards roots against
its acknowledgements while their challenge window passes (anvil time travel), lists the final
model encrypted, has a buyer buy,
decrypt, verify the lineage and evaluate it, lets the dispute window pass (anvil time travel) so
the sale settles, has every device verify its rewards and claim them with its share of the sale,
and closes the task. It returns what happened and stops what it started. ``out`` is laid out as
a ``$FEDMARKET_HOME`` (``chain/`` with the saved anvil state and the deployment, ``store/``,
``privacy/``, ``server/``, ``market/``), so the CLI can inspect a finished run:
``FEDMARKET_HOME=<out> fedmarket chain up``, then ``fedmarket verify --task 1``.

Roles are anvil's development accounts (local chain only): 0 is the treasury and the sponsor,
1 the aggregator and seller, 2 the buyer. Devices' payout keys are simulated from a seed.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from eth_utils.address import to_checksum_address
from web3 import Web3

from fedmarket.config import TaskConfig
from fedmarket.contracts import load_artifact
from fedmarket.crypto.key_delivery import OneTimeKey
from fedmarket.device.acks import AckBook
from fedmarket.ledger import Deployment, Web3Ledger, deploy
from fedmarket.ledger.chain import LocalChain, dev_accounts, rpc
from fedmarket.ledger.deploy import (
    DEFAULT_CHALLENGE_WINDOW,
    DEFAULT_CLOSE_GRACE,
    DEFAULT_DISPUTE_WINDOW,
)
from fedmarket.market.amounts import to_tokens
from fedmarket.market.bundle import canonical_json
from fedmarket.market.claims import claim_all, rewards_of
from fedmarket.market.lineage import verify_lineage
from fedmarket.market.publisher import PublishedRound, RoundPublisher
from fedmarket.market.sales import (
    Keyring,
    buy_model,
    list_model,
    model_metadata,
    serve,
    settle_due,
)
from fedmarket.market.watch import watch
from fedmarket.models.evaluation import evaluate
from fedmarket.models.registry import build_model
from fedmarket.models.weights import set_weights, weights_from_bytes
from fedmarket.processes import free_port
from fedmarket.server.paid import run_paid_federation
from fedmarket.server.plan import FederationPlan
from fedmarket.server.results import FederationResult
from fedmarket.server.rounds import RoundObserver
from fedmarket.simulation import SimulatedFleet, run_federation, simulated_account
from fedmarket.store import LocalStore
from strategies import make_strategy

Step = Callable[[str], None]
_GAS_ETHER = 10**18  # test ether given to each device for its claim (local chain only)


@dataclass(frozen=True)
class DemoOutcome:
    """The federation's result and, with the market on, what happened on chain and in store."""

    result: FederationResult
    fleet: SimulatedFleet
    market: dict[str, Any] | None


def run_demo(
    config: TaskConfig,
    out: Path,
    *,
    on_round: RoundObserver | None = None,
    on_step: Step | None = None,
    verbose: bool = False,
) -> DemoOutcome:
    """Run the story ``config`` describes, with every file under ``out``."""
    step = on_step or (lambda _: None)
    fleet = SimulatedFleet.from_config(config, out)
    fleet.split()  # fails here, not mid-run, if the data cannot be partitioned
    strategy = make_strategy(config.federation.strategy)
    if not config.market.enabled:
        plan = FederationPlan.from_config(config)
        result = run_federation(fleet, plan, strategy, on_round=on_round, verbose=verbose)
        return DemoOutcome(result, fleet, None)

    step("starting a local chain (anvil)")
    chain = LocalChain(out / "chain", port=free_port())
    chain.up()
    try:
        return _paid_story(config, out, fleet, chain, on_round, step, verbose)
    finally:
        chain.down()


def _paid_story(
    config: TaskConfig,
    out: Path,
    fleet: SimulatedFleet,
    chain: LocalChain,
    on_round: RoundObserver | None,
    step: Step,
    verbose: bool,
) -> DemoOutcome:
    w3 = Web3(Web3.HTTPProvider(chain.rpc_url, request_kwargs={"timeout": 60}))
    treasury, aggregator_key, buyer_key = dev_accounts(3)
    deployment = deploy(w3, treasury)
    deployment.save(out / "chain" / "deployments" / f"{deployment.chain_id}.json")
    sponsor = Web3Ledger(w3, deployment, treasury)
    aggregator, buyer = sponsor.as_account(aggregator_key), sponsor.as_account(buyer_key)
    store = LocalStore(out / "store")

    step("sponsor opens the task and escrows its budget")
    spec_cid = store.put_bytes(canonical_json(config.model_dump(mode="json", exclude={"base"})))
    task = sponsor.create_task(
        aggregator=aggregator.address,
        reward_per_update=config.reward_per_update,
        budget=config.budget,
        spec_cid=spec_cid,
        contributors_bps=config.contributors_bps,
    )
    publisher = RoundPublisher(
        store=store,
        ledger=aggregator,
        task=task,
        chain_id=deployment.chain_id,
        market=deployment.market,
        state_path=out / "server" / "publisher.json",
    )
    plan = FederationPlan.from_config(config, market=publisher.terms)
    step(f"{fleet.num_devices} devices train task {task} under DP + SecAgg+")
    result = run_paid_federation(
        fleet,
        plan,
        make_strategy(config.federation.strategy),
        publisher,
        on_round=on_round,
        verbose=verbose,
    )
    rounds = publisher.rounds
    final = rounds[-1]
    names: dict[str, str] = {
        simulated_account(config.market.payout_seed, i).address: f"device-{i}"
        for i in range(fleet.num_devices)
    }

    step("devices check every root against their acknowledgements; the challenge window passes")
    objections = _watch_for_devices(config, fleet, sponsor, store, out, chain.rpc_url)
    _advance(chain.rpc_url, DEFAULT_CHALLENGE_WINDOW + 1)

    step("the aggregator lists the final model, encrypted (its plaintext is nowhere public)")
    sealed = publisher.sealed_model(final.round)
    lineage = verify_lineage(
        aggregator,
        store,
        task,
        final.round,
        chain_id=deployment.chain_id,
        market=deployment.market,
        model=sealed,
    )
    keyring = Keyring(out / "market" / f"{deployment.chain_id}-{deployment.market}" / "seller-keys")
    final_accuracy = result.rounds[-1].accuracy
    listing = list_model(
        aggregator,
        store,
        keyring,
        task=task,
        round=final.round,
        model=sealed,
        price=config.price,
        metadata=model_metadata(lineage, accuracy=final_accuracy),
        contributors_bps=config.contributors_bps,
    )

    step("a buyer buys it in one transaction; the seller delivers the key by ECDH on chain")
    sponsor.transfer(buyer.address, config.price)
    stop = threading.Event()
    seller = threading.Thread(target=_serve_until, args=(aggregator, keyring, stop), daemon=True)
    seller.start()
    try:
        bought = buy_model(
            buyer,
            store,
            listing,
            OneTimeKey.generate(),
            timeout=config.market.key_timeout,
            poll=0.2,
        )
    finally:
        stop.set()
        seller.join()
    assert bought.lineage is not None  # buy_model verifies it after decryption
    decrypted_accuracy = _evaluate(fleet, plan, bought.model)

    step("the dispute window passes (local chain: time travel); the sale settles")
    _advance(chain.rpc_url, DEFAULT_DISPUTE_WINDOW + 1)
    settle_due(aggregator)
    seller_share = aggregator.owed(aggregator.address)
    withdrawn = aggregator.withdraw()
    contributors_share, _ = sponsor.sales_revenue(task, final.round)

    step("devices verify their rewards from chain and store, then claim them and their sale share")
    devices = _claim_for_devices(config, fleet, sponsor, store, out)

    step("the sponsor closes the task; after the grace and the acks' grace, unspent escrow returns")
    sponsor.close_task(task)
    _advance(chain.rpc_url, 2 * DEFAULT_CLOSE_GRACE + 1)  # last commits, then acks are paid
    state = sponsor.task(task)
    refunded = sponsor.refund_unspent(task) if state.escrow > state.reserved else 0
    sale_paid = sum(d["sale_share"] for d in devices)

    market = {
        "task": {
            "id": task,
            "spec_cid": spec_cid,
            "reward_per_update": to_tokens(config.reward_per_update),
            "budget": to_tokens(config.budget),
        },
        "chain": {
            "rpc_url": chain.rpc_url,
            "chain_id": deployment.chain_id,
            "token": deployment.token,
            "market": deployment.market,
            "rounds_committed": len(rounds),
            "objections": objections,  # roots that paid a device less than it was owed
            "gas_per_update": _gas_per_update(w3, deployment, rounds),
        },
        "rounds_published": [
            {
                "round": r.round,
                "model_commitment": r.model_commitment,
                "model_cid": r.model_cid,
                "bundle_cid": r.bundle_cid,
                "evidence_cid": r.evidence_cid,
                "paid": len(r.paid),
                "cumulative_total": to_tokens(r.cumulative_total),
            }
            for r in rounds
        ],
        "rewards": [{**d, "sale_share": to_tokens(d["sale_share"])} for d in devices],
        "reward_history": _reward_history(rounds, names, config.reward_per_update),
        "escrow": {
            "budget": to_tokens(config.budget),
            "committed": to_tokens(state.committed),
            "refunded": to_tokens(refunded),
        },
        "purchase": {
            "listing": listing,
            "purchase": bought.purchase,
            "task": task,
            "round": final.round,
            "price": to_tokens(bought.price),
            "seller_share": to_tokens(seller_share),
            "withdrawn": to_tokens(withdrawn),
            "contributors_share": to_tokens(contributors_share),
            "contributors_share_paid_to_devices": to_tokens(sale_paid),
            "model_commitment": bought.sealed.commitment.hex(),
            "decrypted_accuracy": decrypted_accuracy,
            "server_accuracy": final_accuracy,
            "verified": bought.lineage.model_opened,
            "metadata": bought.metadata,
        },
    }
    return DemoOutcome(result, fleet, market)


def _watch_for_devices(
    config: TaskConfig,
    fleet: SimulatedFleet,
    any_ledger: Web3Ledger,
    store: LocalStore,
    home: Path,
    rpc_url: str,
) -> int:
    """Each device checks the task's roots against its acknowledgements and earlier roots (and
    would challenge one that pays it less); return how many roots paid someone too little."""
    found = 0
    for index in range(fleet.num_devices):
        account = simulated_account(config.market.payout_seed, index)
        rpc(rpc_url, "anvil_setBalance", [account.address, hex(_GAS_ETHER)])  # gas for claims
        device = any_ledger.as_account(account)
        found += len(watch(device, store, account.address, acks=AckBook(home, account.address)))
    return found


def _claim_for_devices(
    config: TaskConfig,
    fleet: SimulatedFleet,
    any_ledger: Web3Ledger,
    store: LocalStore,
    home: Path,
) -> list[dict[str, Any]]:
    """Each device rebuilds its rewards from chain, store and its acknowledgements (verified)
    and claims them with its share of the sales."""
    rows = []
    for index in range(fleet.num_devices):
        account = simulated_account(config.market.payout_seed, index)
        device = any_ledger.as_account(account)
        rewards = rewards_of(device, store, account.address, acks=AckBook(home, account.address))
        paid = claim_all(device, rewards)
        rows.append(
            {
                "device": f"device-{index}",
                "address": account.address,
                "rounds_paid": sum(r.rounds for r in rewards),
                "earned": to_tokens(sum(r.owed for r in rewards)),
                "sale_share": sum(s.claimable for r in rewards for s in r.sale_shares),
                "claimed": to_tokens(sum(paid.values())),
                "balance": to_tokens(device.balance(account.address)),
            }
        )
    return rows


def _reward_history(
    rounds: list[PublishedRound], names: dict[str, str], reward: int
) -> dict[str, Any]:
    """Cumulative tokens per device after each committed round (for the rewards plot)."""
    totals = dict.fromkeys(names.values(), 0)
    history: dict[str, list[float]] = {name: [] for name in totals}
    for r in rounds:
        for address in r.paid:
            totals[names[address]] += reward
        for name, total in totals.items():
            history[name].append(float(to_tokens(total)))
    return {"rounds": [r.round for r in rounds], "devices": history}


def _advance(rpc_url: str, seconds: int) -> None:
    """Move the local chain's clock (anvil only): windows of hours pass in an instant."""
    rpc(rpc_url, "evm_increaseTime", [seconds])
    rpc(rpc_url, "evm_mine")


def _serve_until(seller: Web3Ledger, keyring: Keyring, stop: threading.Event) -> None:
    while not stop.wait(0.2):
        serve(seller, keyring)


def _evaluate(fleet: SimulatedFleet, plan: FederationPlan, model: bytes) -> float:
    """The buyer's own evaluation of the decrypted model on the held-out split."""
    _, held_out = fleet.split()
    net = build_model(plan.model, held_out.feature_shape, held_out.num_classes, seed=plan.seed)
    set_weights(net, weights_from_bytes(model))
    return evaluate(net, held_out).accuracy


def _gas_per_update(w3: Web3, deployment: Deployment, rounds: list[PublishedRound]) -> float:
    """Gas of every commitRound transaction divided by the updates they paid."""
    market = w3.eth.contract(
        address=to_checksum_address(deployment.market), abi=load_artifact("DataMarket").abi
    )
    logs = market.events.RoundCommitted.get_logs(from_block=deployment.block)
    gas = sum(
        int(w3.eth.get_transaction_receipt(log["transactionHash"])["gasUsed"]) for log in logs
    )
    updates = sum(len(r.paid) for r in rounds)
    return gas / updates if updates else float("nan")
