"""``fedmarket verify``: a model's lineage verifies, and any altered link is named."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from chain_helpers import MODEL_CID, Chain, open_publisher
from cli_invoke import invoke
from eth_account.signers.local import LocalAccount

from fedmarket.exceptions import LineageBroken
from fedmarket.market.bundle import ReceiptsBundle, SignedReceipt
from fedmarket.market.lineage import Lineage, verify_lineage
from fedmarket.market.rewards import RewardTree
from fedmarket.receipts import Receipt, sign_receipt
from fedmarket.store import LocalStore
from fedmarket.types import TaskId

pytestmark = pytest.mark.integration

REWARD = 7


def receipt(
    chain: Chain, device: LocalAccount, task: TaskId, round_: int, model: str
) -> SignedReceipt:
    r = Receipt.for_update(
        task=task,
        round=round_,
        device=device.address,
        model_cid=model,
        upload_digest=hashlib.sha256(f"{device.address}/{round_}".encode()).digest(),
        weight=64,
        epsilon=0.5 * round_,
        delta=1e-5,
    )
    signature = sign_receipt(
        r, device, chain_id=chain.deployment.chain_id, market=chain.deployment.market
    )
    return SignedReceipt(r, signature)


def history(chain: Chain, tmp_path: Path, rounds: int = 3) -> tuple[TaskId, LocalStore, list[str]]:
    """A task with ``rounds`` published rounds; returns the task, store and model CIDs."""
    task = chain.ledger(0).create_task(
        aggregator=chain.accounts[1].address,
        reward_per_update=REWARD,
        budget=10_000,
        spec_cid=MODEL_CID,
    )
    publisher = open_publisher(chain, task, tmp_path)
    store = LocalStore(tmp_path / "store")
    devices = chain.accounts[2:5]
    model = store.put_bytes(b"initial model")
    models = []
    for round_ in range(1, rounds + 1):
        published = publisher.publish(
            round_,
            model=f"model after round {round_}".encode(),
            trained_from=model,
            survivors=[d.address for d in devices],
            receipts=[receipt(chain, d, task, round_, model) for d in devices],
            evidence={},
        )
        model = published.model_cid
        models.append(model)
    return task, store, models


def verify(chain: Chain, store: LocalStore, model: str) -> Lineage:
    return verify_lineage(
        chain.ledger(0),
        store,
        model,
        chain_id=chain.deployment.chain_id,
        market=chain.deployment.market,
    )


def test_lineage_of_the_last_model_verifies_back_to_round_one(chain: Chain, tmp_path: Path) -> None:
    _, store, models = history(chain, tmp_path)

    lineage = verify(chain, store, models[-1])

    assert [r.round for r in lineage.rounds] == [1, 2, 3]
    assert lineage.rounds[-1].cumulative_total == 3 * 3 * REWARD
    assert len(lineage.devices) == 3
    assert [r.round for r in verify(chain, store, models[0]).rounds] == [1]


def test_an_uncommitted_model_has_no_lineage(chain: Chain, tmp_path: Path) -> None:
    _, store, _ = history(chain, tmp_path, rounds=1)
    stray = store.put_bytes(b"a model nobody committed")
    with pytest.raises(LineageBroken, match="no round on this market committed"):
        verify(chain, store, stray)


def _commit_raw(
    chain: Chain,
    task: TaskId,
    round_: int,
    store: LocalStore,
    bundle: ReceiptsBundle,
    model: bytes,
    *,
    total_bonus: int = 0,
) -> str:
    """Commit a round by hand (bypassing the publisher's checks), as a dishonest aggregator."""
    previous = chain.ledger(0).task(task).committed
    cumulative: dict[str, int] = {}
    for commit in chain.ledger(0).round_commits(task):
        for s in ReceiptsBundle.from_bytes(store.get_bytes(commit.bundle_cid)).receipts:
            cumulative[s.receipt.device] = cumulative.get(s.receipt.device, 0) + REWARD
    for s in bundle.receipts:
        cumulative[s.receipt.device] = cumulative.get(s.receipt.device, 0) + REWARD
    tree = RewardTree.build(cumulative)
    model_cid = store.put_bytes(model)
    chain.ledger(1).commit_round(
        task,
        round_,
        model_cid=model_cid,
        bundle_cid=store.put_bytes(bundle.to_bytes()),
        rewards_root=tree.root,
        cumulative_total=max(previous, tree.total + total_bonus),
    )
    return model_cid


@pytest.mark.parametrize("tamper", ["receipt", "total", "trained_from"])
def test_an_altered_link_is_named(chain: Chain, tmp_path: Path, tamper: str) -> None:
    task, store, models = history(chain, tmp_path, rounds=2)
    devices = chain.accounts[2:5]
    receipts = [receipt(chain, d, task, 3, models[-1]) for d in devices]
    if tamper == "receipt":  # weight changed after signing
        first = receipts[0]
        receipts[0] = SignedReceipt(
            Receipt(**{**first.receipt.__dict__, "weight": 4096}), first.signature
        )
    if tamper == "trained_from":  # trained on something other than round 2's model
        receipts = [receipt(chain, d, task, 3, models[0]) for d in devices]
    bundle = ReceiptsBundle(
        task, 3, chain.deployment.chain_id, chain.deployment.market, tuple(receipts)
    )
    model = _commit_raw(
        chain, task, 3, store, bundle, b"round 3", total_bonus=100 if tamper == "total" else 0
    )
    expected = {
        "receipt": "receipt of .* altered or replayed",
        "total": "rewards recomputed from the receipts",
        "trained_from": "trained from .* not from round 2's model",
    }[tamper]

    with pytest.raises(LineageBroken, match=expected):
        verify(chain, store, model)
    assert verify(chain, store, models[-1]).rounds  # earlier rounds still verify


def test_a_corrupt_stored_bundle_breaks_the_lineage(chain: Chain, tmp_path: Path) -> None:
    task, store, models = history(chain, tmp_path, rounds=2)
    bundle_cid = chain.ledger(0).round_commits(task)[0].bundle_cid
    from multiformats import CID

    digest = CID.decode(bundle_cid).raw_digest.hex()
    block = store.root / "blocks" / digest[:2] / digest
    data = bytearray(block.read_bytes())
    data[10] ^= 1
    block.write_bytes(bytes(data))

    with pytest.raises(LineageBroken, match=f"round 1: receipts bundle {bundle_cid}.*corrupt"):
        verify(chain, store, models[-1])


def test_verify_cli_prints_ok_or_the_broken_link(
    chain: Chain,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    home = tmp_path / "home"
    monkeypatch.setenv("FEDMARKET_HOME", str(home))
    history(chain, home / "store-parent")
    models = [c.model_cid for c in chain.ledger(0).round_commits()]
    # The CLI reads the local store under $FEDMARKET_HOME/store and the recorded deployment.
    (home / "store-parent" / "store").rename(home / "store")
    chain.deployment.save(home / "chain" / "deployments" / f"{chain.deployment.chain_id}.json")
    rpc_url = chain.local.rpc_url

    assert invoke(monkeypatch, "verify", models[-1], "--rpc-url", rpc_url, "--json") == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] is True
    assert [r["round"] for r in report["rounds"]] == [1, 2, 3]
    stray = LocalStore(home / "store").put_bytes(b"stray")
    assert invoke(monkeypatch, "verify", stray, "--rpc-url", rpc_url) == 56
    assert "no round on this market committed" in capsys.readouterr().err
    assert invoke(monkeypatch, "verify", "not-a-cid", "--rpc-url", rpc_url) == 2
