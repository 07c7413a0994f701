"""Seconds per round on Flower's deployment engine: 4 SuperNodes on loopback, TLS, DP-SGD, SecAgg+,
rounds committed on anvil; every message's ClientApp started cold (a fresh process, as Flower's
SuperExec does) and warm (forked from the device's parent, ``fedmarket.deploy.warm``), each ÷ the
same rounds in Flower's simulation engine.

Run: ``python -m benchmarks.deploy`` (~6 min on 2 cores). Writes benchmarks/results/deploy.json.
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from web3 import Web3

from benchmarks.common import write_results
from fedmarket.config import TaskConfig
from fedmarket.ledger import Web3Ledger, deploy
from fedmarket.ledger.chain import LocalChain, dev_accounts
from fedmarket.processes import free_port
from fedmarket.server.plan import FederationPlan
from fedmarket.simulation import SimulatedFleet, run_federation
from strategies import FedAvg

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from deploy_helpers import fedmarket, make_federation, stop

DEVICES, ROUNDS = 4, 3
TASK = f"""
[federation]
devices = {DEVICES}
rounds = {ROUNDS}
round_timeout = 300
[training]
local_steps = 3
[privacy]
epsilon_cap = 100.0
"""


def deployed_rounds(root: Path, chain: LocalChain, w3: Web3, *, cold: bool) -> list[float]:
    """Seconds of each round with ``DEVICES`` SuperNodes (cold or warm task processes)."""
    fed = make_federation(root, DEVICES)
    home, config = root / "server", root / "task.toml"
    config.write_text(TASK)
    accounts = dev_accounts(2)
    deployment = deploy(w3, accounts[0], delivery_window=3600)
    deployment.save(home / "chain" / "deployments" / f"{deployment.chain_id}.json")
    task = Web3Ledger(w3, deployment, accounts[0]).create_task(
        aggregator=accounts[1].address,
        reward_per_update=1,
        budget=10_000,
        spec_cid="bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku",
    )
    server = fedmarket(
        "server", "start", "--config", str(config), "--task", str(task), "--key", "dev:1",
        "--certs", str(fed.certs), "--authorized-keys", str(fed.authorized),
        "--host", "127.0.0.1", "--port", str(fed.port), "--rpc-url", chain.rpc_url, "--json",
        home=home, log=home / "server.log",
    )  # fmt: skip
    try:
        for device in fed.devices:
            device.join(fed.superlink, fed.ca, extra=("--cold",) if cold else ())
        deadline = time.monotonic() + 1800
        while server.poll() is None and time.monotonic() < deadline:
            time.sleep(1)
        assert server.returncode == 0, f"server failed; see {home}"
    finally:
        stop(server)
        for device in fed.devices:
            if device.process is not None:
                stop(device.process)
    return [
        json.loads(line)["seconds"]
        for line in (home / "server.log").read_text().splitlines()
        if line.startswith('{"accuracy"')
    ]


def simulated_rounds(root: Path) -> list[float]:
    settings = TaskConfig.model_validate({"federation": {"devices": DEVICES, "rounds": ROUNDS},
                                          "training": {"local_steps": 3},
                                          "privacy": {"epsilon_cap": 100.0},
                                          "market": {"enabled": False}})  # fmt: skip
    fleet = SimulatedFleet.from_config(settings, root / "sim")
    result = run_federation(fleet, FederationPlan.from_config(settings), FedAvg())
    return [r.seconds for r in result.rounds]


def main() -> None:
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        chain = LocalChain(root / "anvil", port=free_port())
        chain.up()
        try:
            w3 = Web3(Web3.HTTPProvider(chain.rpc_url, request_kwargs={"timeout": 30}))
            sim = statistics.mean(simulated_rounds(root))
            rows = []
            for mode in ("cold", "warm"):
                seconds = deployed_rounds(root / mode, chain, w3, cold=mode == "cold")
                per_round = statistics.mean(seconds)
                rows.append(
                    {
                        "mode": mode,
                        "devices": DEVICES,
                        "rounds": len(seconds),
                        "seconds_per_round": per_round,
                        "simulation_seconds_per_round": sim,
                        "deploy_vs_sim": per_round / sim,
                    }
                )
                print(f"{mode}: {per_round:.2f} s/round, {per_round / sim:.2f}x simulation")
        finally:
            chain.down()
    cold, warm = rows
    write_results(
        "deploy", rows, warm_speedup=cold["seconds_per_round"] / warm["seconds_per_round"]
    )


if __name__ == "__main__":
    main()
