"""``fedmarket market`` and ``fedmarket device`` on a real anvil: the flows a sponsor, seller,
buyer and device owner run, and bad input that must fail clearly without sending anything."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from chain_helpers import Chain, open_publisher
from cli_invoke import invoke
from test_publisher import signed

from fedmarket.crypto import AssetKey, encrypt_bytes
from fedmarket.keys import KeyStore
from fedmarket.market.bundle import canonical_json
from fedmarket.market.sales import Keyring, serve
from fedmarket.store import LocalStore
from fedmarket.store.cid import canonical
from fedmarket.store.unixfs import cid_of_bytes
from fedmarket.types import TaskId

pytestmark = pytest.mark.integration

PASSPHRASE = "correct horse battery"
TOKEN = 10**18
MODEL = b"the final model's safetensors bytes" * 100
MODEL_CID = "bafybeigdyrzt5sfp7udm7hu76uh7y26nf3efuylqabf3oclgtqy55fbzdi"


@pytest.fixture
def home(chain: Chain, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A $FEDMARKET_HOME that knows the test chain's deployment."""
    home = tmp_path / "home"
    monkeypatch.setenv("FEDMARKET_HOME", str(home))
    monkeypatch.setenv("FEDMARKET_PASSPHRASE", PASSPHRASE)
    chain.deployment.save(home / "chain" / "deployments" / f"{chain.deployment.chain_id}.json")
    return home


def cli(monkeypatch: pytest.MonkeyPatch, chain: Chain, *args: str) -> tuple[int, list[str]]:
    """Run ``fedmarket ARGS --rpc-url <test chain>``."""
    return invoke(monkeypatch, *args, "--rpc-url", chain.local.rpc_url), list(args)


def run_json(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], chain: Chain, *args: str
) -> object:
    code, _ = cli(monkeypatch, chain, *args, "--json")
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return json.loads(captured.out.strip().splitlines()[-1])


def committed_model(chain: Chain, home: Path, task: TaskId) -> str:
    """One published round of ``task`` by the aggregator (account 1), stored in ``home``."""
    publisher = open_publisher(chain, task, home)
    a, b = chain.accounts[2:4]
    published = publisher.publish(
        1,
        model=MODEL,
        trained_from=MODEL_CID,
        survivors=[a.address, b.address],
        receipts=[signed(chain, a, 1, task), signed(chain, b, 1, task)],
        evidence={},
    )
    return published.model_cid


@pytest.fixture
def seller_online(chain: Chain, home: Path) -> Iterator[None]:
    """The seller (account 1) serving keys from the keyring `market list` wrote."""
    folder = home / "market" / f"{chain.deployment.chain_id}-{chain.deployment.market}"
    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(0.2):
            serve(chain.ledger(1), Keyring(folder / "seller-keys"))

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    yield
    stop.set()
    thread.join()


def test_sponsor_seller_buyer_and_device_flows(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    chain: Chain,
    home: Path,
    tmp_path: Path,
    seller_online: None,
) -> None:
    aggregator = chain.accounts[1].address
    created = run_json(
        monkeypatch,
        capsys,
        chain,
        "market",
        "create-task",
        "--key",
        "dev:0",
        "--aggregator",
        aggregator,
        "--reward",
        "0.5",
        "--budget",
        "10",
    )
    assert isinstance(created, dict)
    task = TaskId(created["task"])
    (listed_task,) = run_json(monkeypatch, capsys, chain, "market", "tasks")  # type: ignore[misc]
    assert listed_task["escrow"] == "10"
    assert listed_task["reward_per_update"] == "0.5"
    model_cid = committed_model(chain, home, task)

    listing = run_json(
        monkeypatch,
        capsys,
        chain,
        "market",
        "list",
        model_cid,
        "--key",
        "dev:1",
        "--price",
        "3",
        "--accuracy",
        "0.9",
    )
    (offer,) = run_json(monkeypatch, capsys, chain, "market", "listings")  # type: ignore[misc]
    assert offer["price"] == "3"
    assert (offer["rounds"], offer["devices"], offer["accuracy"]) == (1, 2, 0.9)
    assert offer["epsilon_max"] == offer["epsilon_median"] == 1.5
    assert offer["delta"] == 1e-5

    chain.ledger(0).transfer(chain.accounts[8].address, 5 * TOKEN)
    out = tmp_path / "bought.safetensors"
    bought = run_json(
        monkeypatch,
        capsys,
        chain,
        "market",
        "buy",
        str(listing["listing"]),  # type: ignore[index]
        "--key",
        "dev:8",
        "--out",
        str(out),
        "--timeout",
        "30",
    )
    assert out.read_bytes() == MODEL
    assert bought["verified"] is True  # type: ignore[index]
    assert bought["model_cid"] == model_cid  # type: ignore[index]
    balance = run_json(monkeypatch, capsys, chain, "market", "balance", "--key", "dev:1")
    assert balance == {"address": aggregator, "tokens": "0", "withdrawable": "2.4"}
    assert run_json(monkeypatch, capsys, chain, "market", "withdraw", "--key", "dev:1") == {
        "withdrawn": "2.4"
    }

    # a device owner: status, then one claim
    device = chain.accounts[2]
    KeyStore(home / "keys").new("phone", PASSPHRASE, private_key=bytes(device.key))
    status = run_json(monkeypatch, capsys, chain, "device", "status", "--key", "phone")
    (rewards,) = status["rewards"]  # type: ignore[index]
    assert (rewards["earned"], rewards["claimable"], rewards["rounds_paid"]) == ("0.5", "0.5", 1)
    claimed = run_json(monkeypatch, capsys, chain, "device", "claim", "--key", "phone")
    assert claimed["claimed"] == {str(task): "0.5"}  # type: ignore[index]
    again = run_json(monkeypatch, capsys, chain, "market", "claim", "--key", "phone")
    assert again["claimed"] == {}  # type: ignore[index]


def test_seller_offline_buyer_refunds_after_the_deadline_from_the_cli(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    chain: Chain,
    home: Path,
    tmp_path: Path,
) -> None:
    task = chain.ledger(0).create_task(
        aggregator=chain.accounts[1].address, reward_per_update=1, budget=10, spec_cid=MODEL_CID
    )
    model_cid = committed_model(chain, home, task)
    run_json(
        monkeypatch, capsys, chain, "market", "list", model_cid, "--key", "dev:1", "--price", "2"
    )
    chain.ledger(0).transfer(chain.accounts[8].address, 2 * TOKEN)
    out = tmp_path / "never.safetensors"

    code, _ = cli(
        monkeypatch,
        chain,
        "market",
        "buy",
        "1",
        "--key",
        "dev:8",
        "--out",
        str(out),
        "--timeout",
        "1",
    )
    err = capsys.readouterr().err
    assert code == 52
    assert "take a refund of purchase 1" in err
    assert not out.exists()
    code, _ = cli(monkeypatch, chain, "market", "refund", "1", "--key", "dev:8")
    assert code == 2
    assert "to deliver the key of purchase 1" in capsys.readouterr().err

    chain.advance(3601)
    assert run_json(monkeypatch, capsys, chain, "market", "refund", "1", "--key", "dev:8") == {
        "purchase": 1,
        "refunded": "2",
    }
    assert chain.ledger(8).balance(chain.accounts[8].address) == 2 * TOKEN


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["market", "buy", "999", "--key", "dev:9", "--out", "x"], 2, "listing 999 does not exist"),
        (["market", "buy", "1", "--key", "dev:9", "--out", "x"], 2, "top up the account first"),
        (
            ["market", "buy", "1", "--key", "dev:8", "--out", "x", "--max-price", "1"],
            2,
            "above your maximum",
        ),
        (["market", "list", "not-a-cid", "--key", "dev:1", "--price", "1"], 2, "not-a-cid"),
        (
            ["market", "list", MODEL_CID, "--key", "dev:1", "--price", "0"],
            2,
            "--price must be > 0",
        ),
        (
            [
                "market",
                "create-task",
                "--key",
                "sponsor",
                "--aggregator",
                "0x12",
                "--reward",
                "1",
                "--budget",
                "1",
            ],
            2,
            "is not an Ethereum address",
        ),
        (
            [
                "market",
                "create-task",
                "--key",
                "dev:9",
                "--aggregator",
                "0x" + "11" * 20,
                "--reward",
                "1",
                "--budget",
                "5",
            ],
            2,
            "holds 0 tokens",
        ),
        (
            [
                "market",
                "create-task",
                "--key",
                "sponsor",
                "--aggregator",
                "0x" + "11" * 20,
                "--reward",
                "1",
                "--budget",
                "5",
            ],
            54,
            "wrong passphrase",
        ),
        (["market", "refund", "7", "--key", "dev:8"], 2, "purchase 7 does not exist"),
        (["verify", "bafy-broken"], 2, "bafy-broken"),
    ],
)
def test_bad_market_input_fails_clearly_and_sends_nothing(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    chain: Chain,
    home: Path,
    args: list[str],
    code: int,
    message: str,
) -> None:
    task = chain.ledger(0).create_task(
        aggregator=chain.accounts[1].address, reward_per_update=1, budget=10, spec_cid=MODEL_CID
    )
    run_json(
        monkeypatch,
        capsys,
        chain,
        "market",
        "list",
        committed_model(chain, home, task),
        "--key",
        "dev:1",
        "--price",
        "2",
    )
    chain.ledger(0).transfer(chain.accounts[8].address, 2 * TOKEN)
    KeyStore(home / "keys").new("sponsor", "another passphrase")
    sent = [chain.w3.eth.get_transaction_count(a.address) for a in chain.accounts]

    assert cli(monkeypatch, chain, *args)[0] == code
    err = capsys.readouterr().err
    assert message in err
    assert PASSPHRASE not in err
    assert [chain.w3.eth.get_transaction_count(a.address) for a in chain.accounts] == sent


def test_tampered_ciphertext_and_a_wrong_key_are_refused_after_paying(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    chain: Chain,
    home: Path,
    tmp_path: Path,
) -> None:
    """The seller stores a ciphertext with one flipped byte (listing 1) and delivers some other
    key (listing 2): the buyer's CLI names each failure and writes no model."""
    seller, store = chain.ledger(1), LocalStore(home / "store")
    key = AssetKey.generate()
    metadata = store.put_bytes(
        canonical_json({"model_cid": canonical(cid_of_bytes(MODEL).to_cid())})
    )
    ciphertext = bytearray(encrypt_bytes(MODEL, key))
    ciphertext[-20] ^= 1
    for asset in (bytes(ciphertext), encrypt_bytes(MODEL, key)):
        seller.list_asset(
            task=None,
            asset_cid=store.put_bytes(asset),
            price=TOKEN,
            key_commitment=key.commitment,
            metadata_cid=metadata,
            contributors_bps=0,
        )
    chain.ledger(0).transfer(chain.accounts[8].address, 2 * TOKEN)
    stop = threading.Event()
    wrong = AssetKey.generate()

    def deliver() -> None:  # the real key for listing 1, a wrong one for listing 2
        from fedmarket.crypto import seal_key

        done: set[int] = set()
        while not stop.wait(0.2):
            for p in seller.purchases_of(seller.address):
                if p.purchase not in done and p.state.name == "PENDING":
                    sent_key = key if p.listing == 1 else wrong
                    seller.deliver_key(p.purchase, seal_key(sent_key, p.buyer_key))
                    done.add(p.purchase)

    thread = threading.Thread(target=deliver, daemon=True)
    thread.start()
    try:
        for listing, code, message in [
            (1, 42, "was modified"),
            (2, 45, "does not hash to the listing's key commitment"),
        ]:
            out = tmp_path / f"model-{listing}"
            assert (
                cli(
                    monkeypatch,
                    chain,
                    "market",
                    "buy",
                    str(listing),
                    "--key",
                    "dev:8",
                    "--out",
                    str(out),
                    "--timeout",
                    "30",
                )[0]
                == code
            )
            assert message in capsys.readouterr().err
            assert not out.exists()
    finally:
        stop.set()
        thread.join()
