"""Faults around paid rounds: a server killed between and during rounds resumes without a second
commit or a second payment; a device that drops mid-round is neither acknowledged nor paid for
that round."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from chain_helpers import MODEL_CID, Chain
from cohorts import FEW_DEVICES, NO_COLLUSION
from deploy_helpers import pending_rounds
from flwr.app import Context, Message
from flwr.clientapp.typing import ClientAppCallable

from fedmarket.device.acks import AckBook
from fedmarket.market.claims import claim_all, rewards_of
from fedmarket.market.lineage import verify_task
from fedmarket.market.publisher import RoundPublisher
from fedmarket.privacy import DpConfig, TrainConfig
from fedmarket.protocol import CONFIG
from fedmarket.secagg import messages
from fedmarket.server.paid import run_paid_federation
from fedmarket.server.plan import FederationPlan
from fedmarket.simulation import SimulatedFleet, simulated_account
from fedmarket.store import LocalStore
from fedmarket.types import TaskId
from strategies import FedAvg

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REWARD = 7
SEED = "faults"
TASK_TOML = f"""
[federation]
devices = 3
colluding_fraction = 0.0
rounds = 4
[training]
local_steps = 3
[privacy]
epsilon_cap = 100.0
[market]
payout_seed = "{SEED}"
"""


def new_task(chain: Chain) -> TaskId:
    return chain.ledger(0).create_task(
        aggregator=chain.accounts[1].address,
        reward_per_update=REWARD,
        budget=10_000,
        spec_cid=MODEL_CID,
    )


def start_server(home: Path, config: Path, task: TaskId, rpc_url: str) -> subprocess.Popen[bytes]:
    """``fedmarket server run`` in its own process group (Flower and Ray die with it)."""
    command = "from fedmarket.cli.main import run; run()"
    args = ["server", "run", "--config", str(config), "--task", str(task), "--key", "dev:1"]
    return subprocess.Popen(
        [sys.executable, "-c", command, *args, "--rpc-url", rpc_url],
        env={**os.environ, "FEDMARKET_HOME": str(home)},
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def kill_when(server: subprocess.Popen[bytes], ready: Callable[[], bool]) -> None:
    deadline = time.monotonic() + 240
    while not ready():
        assert server.poll() is None, "the server ended before it could be killed"
        assert time.monotonic() < deadline, "the server never got there"
        time.sleep(0.05)
    os.killpg(server.pid, signal.SIGKILL)
    server.wait()


def committed_rounds(state: Path) -> list[int]:
    try:
        document = json.loads(state.read_text())
    except (FileNotFoundError, ValueError):
        return []
    return [r["round"] for r in document["rounds"]] if not document["pending"] else []


def training_round(home: Path, round_: int) -> bool:
    """Some device has round ``round_``'s privacy spend reserved: it is training now."""
    return any(
        label.endswith(f"round{round_}")
        for path in (home / "simulated-devices" / "privacy").glob("0x*.json")
        for label in pending_rounds(path)
    )


def test_server_killed_during_and_between_rounds_resumes_without_paying_twice(
    chain: Chain, tmp_path: Path
) -> None:
    home, config = tmp_path / "home", tmp_path / "task.toml"
    config.write_text(TASK_TOML)
    chain.deployment.save(home / "chain" / "deployments" / f"{chain.deployment.chain_id}.json")
    task = new_task(chain)
    aggregator = chain.accounts[1].address
    sent_before = chain.w3.eth.get_transaction_count(aggregator)
    state = home / "server"  # its task file appears once the first round is published

    def state_file() -> Path:
        found = list(state.glob("*/task-*.json"))
        return found[0] if found else state / "none"

    # killed while round 2 trains
    server = start_server(home, config, task, chain.local.rpc_url)
    kill_when(server, lambda: committed_rounds(state_file()) == [1] and training_round(home, 2))
    assert chain.ledger(0).task(task).last_round == 1
    # killed between rounds, right after round 3's commit
    server = start_server(home, config, task, chain.local.rpc_url)
    kill_when(server, lambda: committed_rounds(state_file()) == [1, 2, 3])
    # and left to finish
    server = start_server(home, config, task, chain.local.rpc_url)
    assert server.wait(timeout=300) == 0

    on_chain = chain.ledger(0).task(task)
    assert on_chain.last_round == 4
    assert chain.w3.eth.get_transaction_count(aggregator) == sent_before + 4  # one per round
    assert committed_rounds(state_file()) == [1, 2, 3, 4]
    store = LocalStore(home / "store")
    # Every round of the restarted servers verifies: receipts name the previous round's model
    # commitment, which the restarted servers derived from the same task secret.
    lineage = verify_task(
        chain.ledger(0),
        store,
        task,
        chain_id=chain.deployment.chain_id,
        market=chain.deployment.market,
    )
    assert [r.round for r in lineage.rounds] == [1, 2, 3, 4]
    chain.finalize()  # the roots' challenge window passes: they pay
    total = 0
    for index in range(3):
        account = simulated_account(SEED, index)
        device = chain.ledger(0).as_account(account)
        book = AckBook(home / "simulated-devices", account.address)
        chain.w3.provider.make_request("anvil_setBalance", [account.address, hex(10**18)])
        rewards = rewards_of(device, store, account.address, acks=book)
        (paid,) = claim_all(device, rewards).values()
        assert paid == REWARD * rewards[0].rounds <= REWARD * 4  # never more than once a round
        assert rewards[0].acked <= rewards[0].earned  # no ack promised more than was committed
        total += paid
        again = rewards_of(device, store, account.address, acks=book)
        assert again[0].claimable == 0
    assert total == on_chain.committed


def drop_at_mask_stage(partition: int, round_: int) -> Callable[..., Message]:
    """A ClientApp mod: the device with ``partition`` dies while training in ``round_``."""

    def mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
        secagg = msg.content.config_records.get(messages.SECAGG)
        config = msg.content.config_records.get(CONFIG)
        if (
            int(context.node_config["partition-id"]) == partition
            and secagg is not None
            and secagg.get("stage") == "mask"
            and config is not None
            and config.get("round") == round_
        ):
            raise RuntimeError("device lost power mid-round")
        return call_next(msg, context)

    return mod


def test_a_device_that_drops_mid_round_is_not_paid_for_it(chain: Chain, tmp_path: Path) -> None:
    task = new_task(chain)
    publisher = RoundPublisher(
        store=LocalStore(tmp_path / "store"),
        ledger=chain.ledger(1),
        task=task,
        chain_id=chain.deployment.chain_id,
        market=chain.deployment.market,
        state_path=tmp_path / "publisher.json",
    )
    fleet = SimulatedFleet(
        num_devices=4,
        home=tmp_path,
        epsilon_cap=50.0,
        payout_seed=SEED,
        secagg_policy=NO_COLLUSION,
    )
    plan = FederationPlan(
        rounds=2,
        train=TrainConfig(
            learning_rate=2.5, momentum=0.5, sample_rate=0.33, local_steps=3, batch_size=64
        ),
        dp=DpConfig(noise_multiplier=1.5, max_grad_norm=0.5),
        market=publisher.terms,
        secagg=FEW_DEVICES,
    )

    result = run_paid_federation(
        fleet, plan, FedAvg(), publisher, client_mods=[drop_at_mask_stage(1, round_=2)]
    )

    dropped = simulated_account(SEED, 1).address
    first, second = publisher.rounds
    assert dropped in first.paid
    assert dropped not in second.paid
    assert len(second.paid) == 3
    assert len(result.rounds[1].dropped) == 1
    assert publisher.cumulative[dropped] == REWARD
    assert chain.ledger(0).task(task).committed == REWARD * (4 + 3)
    # Acks follow the payments: the dropped device holds round 1's only, each ack says what the
    # device was paid, and the publisher keeps no ack it still owes.
    deployment = chain.deployment
    kept = {
        index: AckBook(tmp_path, simulated_account(SEED, index).address).acks(
            chain_id=deployment.chain_id, market=deployment.market, task=task
        )
        for index in range(4)
    }
    assert sorted(kept[1]) == [1]
    for index, acks in kept.items():
        address = simulated_account(SEED, index).address
        assert sorted(acks) == [r.round for r in (first, second) if address in r.paid]
        assert acks[max(acks)][0].cumulative_amount == publisher.cumulative[address]
    state = RoundPublisher.read_state(tmp_path / "publisher.json")
    assert state is not None
    assert state.acked == {}
