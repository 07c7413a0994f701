"""A full private round (DP + SecAgg+ + receipts + store + chain commit) ÷ a plain Flower FedAvg
round, with the same model, data and cohort, at 10 and 20 devices; and the share of each part.

Four federations run one after another in this process for each cohort size, adding one part
at a time: plain (no DP, sum in the clear), + DP-SGD, + SecAgg+, + market (receipts signed over
masked uploads, model/bundle/evidence stored by CID, round committed on a real anvil chain).
A round's time is what the ServerApp measures from sampling to the new global model, plus, for
the full round, the publishing that follows it. Round 1 pays Flower's actor start-up, so rounds
2..R are averaged. Run: ``python -m benchmarks.round_overhead [--rounds R]``.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from web3 import Web3

from benchmarks.common import write_results
from fedmarket.ledger import Web3Ledger, deploy
from fedmarket.ledger.chain import LocalChain, dev_accounts
from fedmarket.market.publisher import RoundPublisher
from fedmarket.privacy import DpConfig, TrainConfig
from fedmarket.processes import free_port
from fedmarket.server.paid import run_paid_federation
from fedmarket.server.plan import FederationPlan
from fedmarket.server.results import RoundResult
from fedmarket.simulation import SimulatedFleet, run_federation
from fedmarket.store import LocalStore
from strategies import FedAvg

TRAIN = TrainConfig(
    learning_rate=2.5, momentum=0.5, sample_rate=0.33, local_steps=12, batch_size=64
)
PLAIN_TRAIN = TrainConfig(
    learning_rate=0.5, momentum=0.5, sample_rate=0.33, local_steps=12, batch_size=64
)
DP = DpConfig(noise_multiplier=2.3, max_grad_norm=0.5)
STAGES = ("plain", "dp", "dp_secagg", "full")


def timed(call: Callable[..., Any], bucket: list[float]) -> Callable[..., Any]:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        began = time.perf_counter()
        try:
            return call(*args, **kwargs)
        finally:
            bucket.append(time.perf_counter() - began)

    return wrapper


def steady(rounds: list[float]) -> float:
    """Mean of rounds 2..R (round 1 starts Flower's actors)."""
    return statistics.fmean(rounds[1:] if len(rounds) > 1 else rounds)


def run_stage(stage: str, devices: int, rounds: int, folder: Path) -> dict[str, float]:
    fleet = SimulatedFleet(
        num_devices=devices,
        home=folder / stage,
        epsilon_cap=1e6,  # never binding: this measures time, not utility
        private=stage != "plain",
        require_secagg=stage in ("dp_secagg", "full"),
        payout_seed="bench" if stage == "full" else None,
    )
    times: list[float] = []

    def on_round(r: RoundResult) -> None:
        times.append(r.seconds)

    secagg_on = stage in ("dp_secagg", "full")
    base = {
        "rounds": rounds,
        "train": TRAIN if stage != "plain" else PLAIN_TRAIN,
        "dp": DP,
        "min_devices": 3 if secagg_on else 1,
    }
    if stage != "full":
        plan = FederationPlan(**base, secagg=None if not secagg_on else FederationPlan().secagg)
        run_federation(fleet, plan, FedAvg(), on_round=on_round)
        return {"round_s": steady(times)}

    chain = LocalChain(folder / "chain", port=free_port())
    chain.up()
    try:
        w3 = Web3(Web3.HTTPProvider(chain.rpc_url))
        sponsor_key, aggregator_key = dev_accounts(2)
        deployment = deploy(w3, sponsor_key)
        sponsor = Web3Ledger(w3, deployment, sponsor_key)
        aggregator = sponsor.as_account(aggregator_key)
        task = sponsor.create_task(
            aggregator=aggregator.address,
            reward_per_update=1,
            budget=devices * rounds,
            spec_cid="bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku",
        )
        store = LocalStore(folder / "store")
        publisher = RoundPublisher(
            store=store,
            ledger=aggregator,
            task=task,
            chain_id=deployment.chain_id,
            market=deployment.market,
            state_path=folder / "publisher.json",
        )
        publish_s: list[float] = []
        store_s: list[float] = []
        commit_s: list[float] = []
        store.put_bytes = timed(store.put_bytes, store_s)  # type: ignore[method-assign]
        aggregator.commit_round = timed(aggregator.commit_round, commit_s)  # type: ignore[method-assign]
        publisher.publish = timed(publisher.publish, publish_s)  # type: ignore[method-assign]
        plan = FederationPlan(**base, market=publisher.terms)
        run_paid_federation(fleet, plan, FedAvg(), publisher, on_round=on_round)
    finally:
        chain.down()
    store_per_round = [sum(store_s[i * 3 : i * 3 + 3]) for i in range(rounds)]  # 3 puts a round
    return {
        "round_s": steady([t + p for t, p in zip(times, publish_s, strict=True)]),
        "in_round_s": steady(times),
        "store_s": steady(store_per_round),
        "commit_s": steady(commit_s),
        "publish_other_s": steady(publish_s) - steady(store_per_round) - steady(commit_s),
    }


def measure(devices: int, rounds: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="fm-round-overhead-") as tmp:
        folder = Path(tmp)
        results = {stage: run_stage(stage, devices, rounds, folder / stage) for stage in STAGES}
    plain, dp, secagg, full = (results[s] for s in STAGES)
    total = full["round_s"]
    parts = {
        "plain_flower_round": plain["round_s"],
        "dp_sgd": dp["round_s"] - plain["round_s"],
        "secagg": secagg["round_s"] - dp["round_s"],
        "receipts": full["in_round_s"] - secagg["round_s"],
        "store": full["store_s"],
        "chain_commit": full["commit_s"],
        "publish_other": full["publish_other_s"],
    }
    row = {
        "devices": devices,
        "rounds_averaged": rounds - 1,
        "plain_round_s": plain["round_s"],
        "dp_round_s": dp["round_s"],
        "dp_secagg_round_s": secagg["round_s"],
        "full_round_s": total,
        "full_round_ratio": total / plain["round_s"],
        "shares": {name: seconds / total for name, seconds in parts.items()},
        "seconds": parts,
    }
    biggest = max((k for k in parts if k != "plain_flower_round"), key=lambda k: parts[k])
    row["biggest_added_cost"] = biggest
    print(
        f"{devices} devices: plain {plain['round_s']:.2f} s, full {total:.2f} s "
        f"({row['full_round_ratio']:.2f}x); biggest added cost: {biggest}"
    )
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--devices", type=int, nargs="+", default=[10, 20])
    args = parser.parse_args()
    rows = [measure(n, args.rounds) for n in args.devices]
    write_results("round_overhead", rows, goal_full_round_ratio=1.3)


if __name__ == "__main__":
    main()
