"""The demo's whole story, checked against the chain and the store it leaves behind.

The run folder is a $FEDMARKET_HOME: its anvil state is saved on shutdown, so the test starts
the chain again from it and reads what was committed, claimed, paid and sold.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from cli_invoke import invoke
from net import free_port
from web3 import Web3

from fedmarket.exceptions import EpsilonMismatch
from fedmarket.keys import KeyStore
from fedmarket.ledger import Deployment, PurchaseState, Web3Ledger
from fedmarket.ledger.chain import LocalChain, dev_accounts
from fedmarket.market.amounts import to_base_units
from fedmarket.market.publisher import stored_model
from fedmarket.models.weights import weights_from_bytes
from fedmarket.privacy import PrivacyLedger
from fedmarket.simulation import simulated_account
from fedmarket.store import LocalStore
from fedmarket.types import ListingId, PurchaseId, TaskId

pytestmark = [pytest.mark.integration, pytest.mark.slow]

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def run_demo(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], out: Path, *args: str
) -> dict[str, Any]:
    assert invoke(monkeypatch, "demo", "--out", str(out), "--json", *args) == 0
    report: dict[str, Any] = json.loads(capsys.readouterr().out)
    assert report == json.loads((out / "report.json").read_text())
    return report


def test_demo_story_leaves_matching_chain_and_store(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    out = tmp_path / "run"
    report = run_demo(
        monkeypatch, capsys, out, "--devices", "3", "--rounds", "2", "--colluding-fraction", "0"
    )

    # every CID in the report resolves and verifies block by block
    store = LocalStore(out / "store")
    cids = [report["task"]["spec_cid"]]
    for r in report["rounds_published"]:
        cids += [r["model_cid"], r["bundle_cid"], r["evidence_cid"]]
    assert all(store.verify(cid) > 0 for cid in cids)
    last = report["rounds_published"][-1]
    evidence = json.loads(store.get_bytes(last["evidence_cid"]))
    assert evidence["model_commitment"] == last["model_commitment"]
    assert evidence["accuracy"] == report["final_accuracy"]

    # nothing of the model is readable from the store without the key
    round_, sealed = stored_model(out / "server" / "publisher.json", store)
    assert round_ == 2
    assert sealed.commitment.hex() == report["purchase"]["model_commitment"]
    tensors = [t.tobytes() for t in weights_from_bytes(sealed.model).values() if t.nbytes >= 64]
    for block in (out / "store").rglob("*"):
        if block.is_file():
            data = block.read_bytes()
            assert sealed.model not in data
            assert not any(t[:64] in data for t in tensors)

    # the chain, restarted from the state the demo saved
    monkeypatch.setenv("FEDMARKET_HOME", str(out))
    chain = LocalChain(out / "chain", port=free_port())
    chain.up()
    try:
        deployment = Deployment.load(out / "chain" / "deployments" / "31337.json")
        assert deployment.market == report["chain"]["market"]
        w3 = Web3(Web3.HTTPProvider(chain.rpc_url))
        ledger = Web3Ledger(w3, deployment, dev_accounts(1)[0])
        task = ledger.task(TaskId(report["task"]["id"]))
        reward = to_base_units(report["task"]["reward_per_update"])
        assert [c.round for c in ledger.round_commits(task.task)] == [1, 2]
        assert task.closing
        assert task.closes_at <= ledger.now()
        assert task.last_round == 2
        assert task.committed == task.paid == reward * 3 * 2
        revenue, shared = ledger.sales_revenue(task.task, 2)
        assert revenue == to_base_units(report["purchase"]["contributors_share"]) > 0
        assert 0 <= revenue - shared < 3  # the devices took it all but rounding dust
        for device in report["rewards"]:
            assert device["rounds_paid"] == 2
            assert ledger.claimed(task.task, device["address"]) == 2 * reward
            share = ledger.sale_claimed(task.task, 2, device["address"])
            assert share == to_base_units(device["sale_share"]) > 0
            assert ledger.balance(device["address"]) == 2 * reward + share
        purchase = ledger.purchase(PurchaseId(report["purchase"]["purchase"]))
        assert purchase.state is PurchaseState.SETTLED
        assert ledger.listing(ListingId(report["purchase"]["listing"])).task == task.task
        assert ledger.balance(dev_accounts(3)[2].address) == 0  # the buyer spent the price
        assert report["chain"]["gas_per_update"] > 0

        # the CLI reads the same run: verify, listings, device status
        assert invoke(monkeypatch, "verify", "--task", "1", "--rpc-url", chain.rpc_url) == 0
        assert "verifies back to round 1" in capsys.readouterr().out
        assert invoke(monkeypatch, "market", "listings", "--rpc-url", chain.rpc_url, "--json") == 0
        (listed,) = json.loads(capsys.readouterr().out)
        assert (listed["task"], listed["round"], listed["rounds"]) == (1, 2, 2)
        assert listed["devices"] == 3
        assert listed["accuracy"] == report["final_accuracy"]
        assert 0 < listed["epsilon_median"] <= listed["epsilon_max"] <= 8
        assert invoke(monkeypatch, "device", "status", "--json") == 0
        ledgers = json.loads(capsys.readouterr().out)["ledgers"]
        assert sorted(row["device"] for row in ledgers) == ["device-0", "device-1", "device-2"]
        assert all(0 < row["epsilon"] <= row["epsilon_cap"] == 8 for row in ledgers)

        # device-0's published receipts agree with its ledger; a ledger started afresh for
        # its key (both files deleted) no longer explains them, and status says so
        account = simulated_account("fedmarket-demo", 0)
        monkeypatch.setenv("FEDMARKET_PASSPHRASE", "demo passphrase")
        KeyStore(out / "keys").new("device-0", "demo passphrase", private_key=bytes(account.key))
        status = ["device", "status", "--key", "device-0", "--rpc-url", chain.rpc_url, "--json"]
        assert invoke(monkeypatch, *status) == 0
        receipts = json.loads(capsys.readouterr().out)["receipts"]
        assert receipts == {
            "identity": account.address,
            "receipts": 2,
            "checked": True,
            "problems": [],
            # both paid rounds' SecAgg+ transcripts hold its upload under its signature
            "transcripts_checked": 2,
            "transcripts_missing": 0,
            "transcript_problems": [],
        }
        path = PrivacyLedger.path_for(out, account.address)
        path.unlink()
        path.with_suffix(".head").unlink()
        PrivacyLedger.create(out, account, epsilon_cap=8.0)
        assert invoke(monkeypatch, *status) == EpsilonMismatch.exit_code
        problems = json.loads(capsys.readouterr().out)["receipts"]["problems"]
        assert len(problems) == 2
        assert all("the ledger has no such round" in p for p in problems)
    finally:
        chain.down()

    purchase_report = report["purchase"]
    assert purchase_report["verified"] is True
    assert purchase_report["decrypted_accuracy"] == report["final_accuracy"]
    # The contributors' share went to the devices, never back to the sponsor.
    budget, committed = (to_base_units(report["escrow"][k]) for k in ("budget", "committed"))
    assert to_base_units(report["escrow"]["refunded"]) == budget - committed
    for name in ("accuracy.png", "epsilon.png", "rewards.png"):
        assert (out / name).stat().st_size > 1000
    assert invoke(monkeypatch, "demo", "--out", str(out)) == 2  # never overwrites a report


# Well above chance after 2 rounds (digits: 10 classes, 0.1; patients: majority class 0.63).
@pytest.mark.parametrize(("example", "minimum"), [("digits_market", 0.3), ("csv_tabular", 0.8)])
def test_examples_run_as_documented(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    example: str,
    minimum: float,
) -> None:
    config = EXAMPLES / example / "task.toml"
    report = run_demo(
        monkeypatch, capsys, tmp_path / "run", "--config", str(config), "--rounds", "2"
    )

    assert report["chain"]["rounds_committed"] == 2
    assert report["purchase"]["verified"] is True
    assert report["final_accuracy"] >= minimum
    for device in report["rewards"]:
        earned, share = to_base_units(device["earned"]), to_base_units(device["sale_share"])
        assert to_base_units(device["claimed"]) == earned + share
