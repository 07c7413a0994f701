"""Flower's deployment engine on loopback: `fedmarket server start` (a SuperLink with TLS from
test-made certificates and SuperNode authentication) and one `fedmarket device join` process per
device, each with its own home, keystore, node key and data, committing on anvil."""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path

import pytest
from chain_helpers import MODEL_CID, Chain
from deploy_helpers import Device, Federation, fedmarket, make_federation, stop, wait_for
from test_faults import committed_rounds

from fedmarket.device.acks import AckBook
from fedmarket.market.claims import claim_all, rewards_of
from fedmarket.market.watch import watch
from fedmarket.store import LocalStore
from fedmarket.types import TaskId

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REWARD = 7


def task_toml(rounds: int, devices: int = 4) -> str:
    return f"""
[federation]
devices = {devices}
colluding_fraction = 0.0
rounds = {rounds}
round_timeout = 60
stage_timeout = 20
[training]
local_steps = 3
[privacy]
epsilon_cap = 100.0
"""


def open_task(chain: Chain, home: Path) -> TaskId:
    chain.deployment.save(home / "chain" / "deployments" / f"{chain.deployment.chain_id}.json")
    return chain.ledger(0).create_task(
        aggregator=chain.accounts[1].address,
        reward_per_update=REWARD,
        budget=10_000,
        spec_cid=MODEL_CID,
    )


def start_server(
    fed: Federation, home: Path, config: Path, task: TaskId, chain: Chain
) -> subprocess.Popen[bytes]:
    return fedmarket(
        "server",
        "start",
        "--config",
        str(config),
        "--task",
        str(task),
        "--key",
        "dev:1",
        "--certs",
        str(fed.certs),
        "--authorized-keys",
        str(fed.authorized),
        "--host",
        "127.0.0.1",
        "--port",
        str(fed.port),
        "--rpc-url",
        chain.local.rpc_url,
        "--connect-timeout",
        "120",
        home=home,
        log=home / "server.log",
    )


def state_file(home: Path, chain: Chain, task: TaskId) -> Path:
    market = f"{chain.deployment.chain_id}-{chain.deployment.market}"
    return home / "server" / market / f"task-{task}.json"


def evidence(home: Path, state: Path, round_: int) -> dict[str, object]:
    published = json.loads(state.read_text())["rounds"][round_ - 1]
    document: dict[str, object] = json.loads(
        LocalStore(home / "store").get_bytes(published["evidence_cid"])
    )
    return document


def rounds_paid(chain: Chain, home: Path, device: Device) -> int:
    account = chain.ledger(0).as_account(chain.accounts[0])
    found = rewards_of(account, LocalStore(home / "store"), device.address)
    return found[0].rounds if found else 0


def test_four_supernodes_over_tls_survive_a_server_restart_and_a_dropout(
    chain: Chain, tmp_path: Path
) -> None:
    fed = make_federation(tmp_path, 4)
    home, config = tmp_path / "server", tmp_path / "task.toml"
    config.write_text(task_toml(rounds=2))
    task = open_task(chain, home)
    aggregator = chain.accounts[1].address
    sent_before = chain.w3.eth.get_transaction_count(aggregator)
    state = state_file(home, chain, task)
    server = start_server(fed, home, config, task, chain)
    try:
        for device in fed.devices:
            device.join(fed.superlink, fed.ca)
        # The server (SuperLink and ServerApp) dies right after round 1's commit...
        wait_for(lambda: committed_rounds(state) == [1], 300, "round 1's commit")
        stop(server, signal.SIGKILL)
        assert chain.ledger(0).task(task).last_round == 1
        # ...and restarts; the devices reconnect. One of them dies while training round 2.
        server = start_server(fed, home, config, task, chain)
        doomed = fed.devices[3]
        wait_for(lambda: doomed.pending_round(2), 300, "device-3 training round 2")
        assert doomed.process is not None
        stop(doomed.process, signal.SIGKILL)
        assert server.wait(timeout=300) == 0, (home / "server.log").read_text()[-3000:]
    finally:
        stop(server)
        for device in fed.devices:
            if device.process is not None:
                stop(device.process)

    on_chain = chain.ledger(0).task(task)
    assert on_chain.last_round == 2
    assert chain.w3.eth.get_transaction_count(aggregator) == sent_before + 2  # one per round
    assert committed_rounds(state) == [1, 2]
    second = evidence(home, state, 2)
    assert "device-3" not in second["survivors"]  # type: ignore[operator]
    assert sorted(second["survivors"]) == ["device-0", "device-1", "device-2"]  # type: ignore[call-overload]
    assert second["dropped"]  # the round finished through the dropout path
    assert [rounds_paid(chain, home, d) for d in fed.devices] == [2, 2, 2, 1]
    assert on_chain.committed == REWARD * 7

    # Rewards are claimable: device-0 claims both rounds, once.
    device = chain.ledger(0).as_account(fed.devices[0].account())
    chain.w3.provider.make_request("anvil_setBalance", [device.address, hex(10**18)])
    # Its own machine kept the aggregator's signed acknowledgement of each upload.
    book = AckBook(fed.devices[0].home, device.address)
    acks = book.acks(chain_id=chain.deployment.chain_id, market=chain.deployment.market, task=task)
    assert {r: a.cumulative_amount for r, (a, _) in acks.items()} == {1: REWARD, 2: 2 * REWARD}
    # It checks the roots against its acks (nothing to challenge); once their challenge window
    # has passed they are final and pay.
    assert watch(device, LocalStore(home / "store"), device.address, acks=book) == []
    chain.finalize()
    rewards = rewards_of(device, LocalStore(home / "store"), device.address, acks=book)
    assert claim_all(device, rewards) == {task: 2 * REWARD}
    assert chain.ledger(0).balance(device.address) == 2 * REWARD


def test_a_device_at_its_cap_declines_and_the_others_are_paid(chain: Chain, tmp_path: Path) -> None:
    fed = make_federation(tmp_path, 4)
    home, config = tmp_path / "server", tmp_path / "task.toml"
    config.write_text(task_toml(rounds=1))
    task = open_task(chain, home)
    state = state_file(home, chain, task)
    server = start_server(fed, home, config, task, chain)
    try:
        for index, device in enumerate(fed.devices):
            # device-0's owner allows far less ε than one round spends
            device.join(fed.superlink, fed.ca, epsilon_cap=0.05 if index == 0 else 100.0)
        assert server.wait(timeout=300) == 0, (home / "server.log").read_text()[-3000:]
    finally:
        stop(server)
        for device in fed.devices:
            if device.process is not None:
                stop(device.process)
    first = evidence(home, state, 1)
    declined = first["declined"]
    assert isinstance(declined, dict)
    assert list(declined) == ["device-0"]
    assert "cap" in declined["device-0"]
    assert [rounds_paid(chain, home, d) for d in fed.devices] == [0, 1, 1, 1]
    entries = json.loads(fed.devices[0].ledger().read_text())["entries"]
    assert [e["kind"] for e in entries] == ["genesis"]  # it declined before spending anything


def test_bad_data_or_a_wrong_passphrase_fail_at_start(tmp_path: Path) -> None:
    fed = make_federation(tmp_path, 1)
    device = fed.devices[0]
    device.data.write_bytes(b"not an npz archive")
    joined = device.join(fed.superlink, fed.ca)
    assert joined.wait(timeout=60) == 3  # DataError
    log = (device.home / "join.log").read_text()
    assert "corrupt NPZ archive" in log
    assert "Traceback" not in log

    good = make_federation(tmp_path / "good", 1).devices[0]
    wrong = fedmarket(
        "device",
        "join",
        "--superlink",
        fed.superlink,
        "--data",
        str(good.data),
        "--key",
        str(good.keystore),
        "--epsilon-cap",
        "4",
        "--root-certificates",
        str(fed.ca),
        "--node-key",
        str(good.node_key),
        home=good.home,
        log=good.home / "join.log",
        env={"FEDMARKET_PASSPHRASE": "not the passphrase"},
    )
    assert wrong.wait(timeout=60) == 54  # KeystoreError
    log = (good.home / "join.log").read_text()
    assert "wrong passphrase" in log
    assert "not the passphrase" not in log
    assert not (good.home / "devices").exists()  # no SuperNode was started
