"""``fedmarket market`` and ``fedmarket device`` on a real anvil: the flows a sponsor, seller,
buyer and device owner run; what a cheating seller, buyer or stranger tries, which must take
nothing; and bad input that must fail clearly without sending anything."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from chain_helpers import MODEL_CID, Chain
from cli_invoke import invoke
from test_sales import deliver_wrong_key, nonces, publish_first_round, windows

from fedmarket.acks import Ack
from fedmarket.contracts import load_artifact
from fedmarket.crypto import AssetKey, encrypt_bytes
from fedmarket.crypto.key_delivery import OneTimeKey
from fedmarket.keys import KeyStore
from fedmarket.ledger.base import PurchaseState
from fedmarket.ledger.deploy import send_call
from fedmarket.ledger.web3_ledger import cid_bytes
from fedmarket.market.publisher import RoundPublisher, stored_model
from fedmarket.market.sales import Keyring, serve
from fedmarket.market.sealed_models import TaskSecret
from fedmarket.store import LocalStore
from fedmarket.types import ListingId, PurchaseId, TaskId

pytestmark = pytest.mark.integration

PASSPHRASE = "correct horse battery"
TOKEN = 10**18
MODEL = b"the final model's safetensors bytes" * 100


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
) -> Any:
    code, _ = cli(monkeypatch, chain, *args, "--json")
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return json.loads(captured.out.strip().splitlines()[-1])


def refused(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    chain: Chain,
    *args: str,
) -> tuple[int, str]:
    """Run a command that must fail; return (exit code, stderr), checking it sent nothing."""
    before = nonces(chain)
    code, _ = cli(monkeypatch, chain, *args)
    err = capsys.readouterr().err
    assert code != 0, err
    assert nonces(chain) == before, f"{args} sent a transaction"
    return code, err


def server_folder(chain: Chain, home: Path) -> Path:
    """Where `fedmarket server` keeps its task state (fedmarket/cli/server.py: state_path)."""
    return home / "server" / f"{chain.deployment.chain_id}-{chain.deployment.market}"


def market_folder(chain: Chain, home: Path) -> Path:
    return home / "market" / f"{chain.deployment.chain_id}-{chain.deployment.market}"


def committed_round(
    chain: Chain, home: Path, task: TaskId, *, final: bool = True
) -> RoundPublisher:
    """Round 1 of ``task`` by its aggregator (account 1), paying devices 2 and 3, with its state
    where `fedmarket server` keeps it and its ciphertext in ``home``'s store; with ``final``,
    its challenge window has passed."""
    publisher = RoundPublisher(
        store=LocalStore(home / "store"),
        ledger=chain.ledger(1),
        task=task,
        chain_id=chain.deployment.chain_id,
        market=chain.deployment.market,
        state_path=server_folder(chain, home) / f"task-{task}.json",
    )
    publish_first_round(chain, publisher, task, MODEL, chain.accounts[2:4])
    if final:
        chain.finalize()  # its challenge window passes: the root pays and the model may be listed
    return publisher


def listed_task(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    chain: Chain,
    home: Path,
    *,
    buyer_tokens: int = 3,
) -> TaskId:
    """Task 1 (sponsor 0, aggregator 1, 0.5 tokens an update, budget 10, 20 % of every sale to
    contributors) with round 1 committed, listed by the aggregator at 3 tokens at the task's
    share; buyer 8 funded."""
    task = chain.ledger(0).create_task(
        aggregator=chain.accounts[1].address,
        reward_per_update=TOKEN // 2,
        budget=10 * TOKEN,
        spec_cid=MODEL_CID,
        contributors_bps=2000,
    )
    committed_round(chain, home, task)
    listed = run_json(
        monkeypatch, capsys, chain, *f"market list --task {task} --key dev:1 --price 3".split()
    )
    assert listed == {"listing": 1, "task": task, "round": 1}
    chain.ledger(0).transfer(chain.accounts[8].address, buyer_tokens * TOKEN)
    return task


def buy(
    monkeypatch: pytest.MonkeyPatch, chain: Chain, listing: int, out: Path, timeout: int = 30
) -> int:
    args = f"market buy {listing} --key dev:8 --timeout {timeout}".split()
    code, _ = cli(monkeypatch, chain, *args, "--out", str(out))
    return code


@pytest.fixture
def seller_online(chain: Chain, home: Path) -> Iterator[None]:
    """The seller (account 1) serving keys from the keyring `market list` wrote."""
    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(0.2):
            serve(chain.ledger(1), Keyring(market_folder(chain, home) / "seller-keys"))

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    yield
    stop.set()
    thread.join()


@pytest.fixture
def seller_cheats(chain: Chain) -> Iterator[None]:
    """The seller (account 1) answering every pending purchase with a wrong key."""
    seller = chain.ledger(1)
    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(0.2):
            for p in seller.purchases_of(seller.address):
                if p.state is PurchaseState.PENDING:
                    deliver_wrong_key(seller, p.purchase)

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    yield
    stop.set()
    thread.join()


# -- honest flows ----------------------------------------------------------------------------------


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
    (listed_task_row,) = run_json(monkeypatch, capsys, chain, "market", "tasks")
    assert listed_task_row["escrow"] == "10"
    assert listed_task_row["reward_per_update"] == "0.5"
    assert (listed_task_row["rounds"], listed_task_row["closes_at"]) == (0, None)
    assert (listed_task_row["frozen_at"], listed_task_row["refund_opens_at"]) == (None, None)
    assert listed_task_row["paid_on_acks"] == "0"
    publisher = committed_round(chain, home, task)

    args = f"market list --task {task} --key dev:1 --price 3 --accuracy 0.9".split()
    listing = run_json(monkeypatch, capsys, chain, *args)
    assert listing == {"listing": 1, "task": task, "round": 1}
    (offer,) = run_json(monkeypatch, capsys, chain, "market", "listings")
    assert (offer["price"], offer["task"], offer["round"], offer["share"]) == ("3", task, 1, 0.2)
    assert (offer["rounds"], offer["devices"], offer["accuracy"]) == (1, 2, 0.9)
    assert offer["epsilon_max"] == offer["epsilon_median"] == 1.5
    assert offer["delta"] == 1e-5

    chain.ledger(0).transfer(chain.accounts[8].address, 5 * TOKEN)
    out = tmp_path / "bought.safetensors"
    args = ["market", "buy", "1", "--key", "dev:8", "--timeout", "30"]
    bought = run_json(monkeypatch, capsys, chain, *args, "--out", str(out))
    assert out.read_bytes() == MODEL
    assert isinstance(bought, dict)
    assert bought["verified"] is True
    assert (bought["task"], bought["round"], bought["price"]) == (task, 1, "3")
    assert bought["model_commitment"] == publisher.rounds[0].model_commitment
    balance = run_json(monkeypatch, capsys, chain, "market", "balance", "--key", "dev:1")
    assert balance == {"address": aggregator, "tokens": "0", "withdrawable": "0"}  # disputable

    chain.advance(windows(chain).dispute + 1)
    settled = run_json(monkeypatch, capsys, chain, "market", "serve", "--once", "--key", "dev:1")
    assert settled == {"settled": 1}
    balance = run_json(monkeypatch, capsys, chain, "market", "balance", "--key", "dev:1")
    assert balance == {"address": aggregator, "tokens": "0", "withdrawable": "2.4"}
    assert run_json(monkeypatch, capsys, chain, "market", "withdraw", "--key", "dev:1") == {
        "withdrawn": "2.4"
    }

    # a device owner: status, then one claim of its reward and its share of the sale
    device = chain.accounts[2]
    KeyStore(home / "keys").new("phone", PASSPHRASE, private_key=bytes(device.key))
    status = run_json(monkeypatch, capsys, chain, "device", "status", "--key", "phone")
    (rewards,) = status["rewards"]
    assert (rewards["earned"], rewards["claimable"], rewards["rounds_paid"]) == ("0.5", "0.5", 1)
    assert rewards["sale_shares"] == "0.3"
    claimed = run_json(monkeypatch, capsys, chain, "device", "claim", "--key", "phone")
    assert claimed["claimed"] == {str(task): "0.8"}
    again = run_json(monkeypatch, capsys, chain, "market", "claim", "--key", "phone")
    assert again["claimed"] == {}


def test_seller_offline_buyer_refunds_after_the_deadline_from_the_cli(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    chain: Chain,
    home: Path,
    tmp_path: Path,
) -> None:
    listed_task(monkeypatch, capsys, chain, home)
    out = tmp_path / "never.safetensors"

    assert buy(monkeypatch, chain, 1, out, timeout=1) == 52
    err = capsys.readouterr().err
    assert "take a refund of purchase 1" in err
    assert not out.exists()
    code, err = refused(monkeypatch, capsys, chain, "market", "refund", "1", "--key", "dev:8")
    assert code == 2
    assert "to deliver the key of purchase 1" in err

    chain.advance(windows(chain).delivery + 1)
    assert run_json(monkeypatch, capsys, chain, "market", "refund", "1", "--key", "dev:8") == {
        "purchase": 1,
        "refunded": "3",
    }
    assert chain.ledger(8).balance(chain.accounts[8].address) == 3 * TOKEN
    # too late to deliver now: the seller's serve sends nothing
    sent = nonces(chain)
    assert cli(monkeypatch, chain, "market", "serve", "--once", "--key", "dev:1")[0] == 0
    assert nonces(chain) == sent


# -- a seller who delivers a wrong key -------------------------------------------------------------


def test_a_wrong_key_is_disputed_and_refunded_and_the_seller_keeps_nothing(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    chain: Chain,
    home: Path,
    tmp_path: Path,
    seller_cheats: None,
) -> None:
    """THREATS, seller: may deliver any bytes as a key, must not keep the payment for it.
    `market buy` finds the wrong key, disputes it on chain and is refunded in full."""
    listed_task(monkeypatch, capsys, chain, home)
    buyer, seller = chain.ledger(8), chain.ledger(1)
    out = tmp_path / "model"

    assert buy(monkeypatch, chain, 1, out) == 45
    err = capsys.readouterr().err
    assert "purchase 1: the seller's key does not match the listing's commitment" in err
    assert "disputed on chain and refunded 3 tokens" in err
    assert not out.exists()
    assert buyer.balance(buyer.address) == 3 * TOKEN
    assert buyer.purchase(PurchaseId(1)).state is PurchaseState.REFUNDED
    assert seller.owed(seller.address) == 0

    chain.advance(windows(chain).dispute + 1)
    code, err = refused(monkeypatch, capsys, chain, "market", "withdraw", "--key", "dev:1")
    assert code == 2
    assert f"nothing to withdraw for {seller.address}" in err
    assert (seller.owed(seller.address), seller.balance(seller.address)) == (0, 0)
    assert seller.sales_revenue(TaskId(1), 1) == (0, 0)


def test_a_wrong_key_found_by_fetch_is_disputed_and_refunded(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    chain: Chain,
    home: Path,
    tmp_path: Path,
) -> None:
    """The key comes after `market buy` gave up waiting; `market fetch` disputes it."""
    listed_task(monkeypatch, capsys, chain, home)
    buyer, seller = chain.ledger(8), chain.ledger(1)
    out = tmp_path / "model"
    assert buy(monkeypatch, chain, 1, out, timeout=1) == 52
    capsys.readouterr()
    deliver_wrong_key(seller, PurchaseId(1))

    args = ["market", "fetch", "1", "--key", "dev:8", "--timeout", "5"]
    code, _ = cli(monkeypatch, chain, *args, "--out", str(out))

    assert code == 45
    assert "disputed on chain and refunded 3 tokens" in capsys.readouterr().err
    assert not out.exists()
    assert buyer.balance(buyer.address) == 3 * TOKEN
    assert seller.owed(seller.address) == 0


def test_tampered_ciphertext_is_refused_after_paying(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    chain: Chain,
    home: Path,
    tmp_path: Path,
    seller_online: None,
) -> None:
    """The seller lists (through the ledger) a ciphertext with one flipped byte under a key it
    delivers correctly: the buyer's CLI names the failure and writes no model. The contract
    cannot see this (THREATS: the buyer checks after delivery), so the key stands."""
    task = chain.ledger(0).create_task(
        aggregator=chain.accounts[1].address, reward_per_update=1, budget=10, spec_cid=MODEL_CID
    )
    committed_round(chain, home, task)
    seller, store = chain.ledger(1), LocalStore(home / "store")
    key = AssetKey.generate()
    ciphertext = bytearray(encrypt_bytes(MODEL, key))
    ciphertext[-20] ^= 1
    listing = seller.list_asset(
        task=task,
        round=1,
        asset_cid=store.put_bytes(bytes(ciphertext)),
        price=TOKEN,
        key_commitment=key.commitment,
        metadata_cid=store.put_bytes(b"{}"),
        contributors_bps=0,
    )
    Keyring(market_folder(chain, home) / "seller-keys").add(listing, key)
    chain.ledger(0).transfer(chain.accounts[8].address, TOKEN)
    out = tmp_path / "model"

    assert buy(monkeypatch, chain, listing, out) == 42
    assert "was modified" in capsys.readouterr().err
    assert not out.exists()
    code, err = refused(monkeypatch, capsys, chain, "market", "dispute", "1", "--key", "dev:8")
    assert code == 2
    assert "nothing to dispute" in err


# -- a buyer who got a working key -----------------------------------------------------------------


def test_a_false_dispute_is_refused_and_reveals_nothing(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    chain: Chain,
    home: Path,
    tmp_path: Path,
    seller_online: None,
) -> None:
    """THREATS, buyer: may dispute falsely, must not get a refund for a key that works. The CLI
    refuses before sending: the one-time secret is never revealed on chain."""
    listed_task(monkeypatch, capsys, chain, home)
    assert buy(monkeypatch, chain, 1, tmp_path / "model") == 0
    capsys.readouterr()
    secret = OneTimeKey.load(market_folder(chain, home) / "buyer-identities" / "purchase-1.id")

    code, err = refused(monkeypatch, capsys, chain, "market", "dispute", "1", "--key", "dev:8")

    assert code == 2
    assert "key matches the listing's commitment: there is nothing to dispute" in err
    assert "nothing was sent" in err
    buyer = chain.ledger(8)
    assert buyer.purchase(PurchaseId(1)).state is PurchaseState.DELIVERED
    secret_bytes = secret.secret.to_bytes(32, "big")
    for number in range(chain.deployment.block, chain.w3.eth.block_number + 1):
        for tx in chain.w3.eth.get_block(number, full_transactions=True)["transactions"]:
            assert isinstance(tx, Mapping)
            assert secret_bytes not in bytes(tx["input"])


def test_a_sale_settles_to_the_seller_and_the_contributors_never_the_sponsor(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    chain: Chain,
    home: Path,
    tmp_path: Path,
    seller_online: None,
) -> None:
    """A buyer with a working key gets no refund; after the dispute window the seller is paid
    its share, the contributors' share reaches the devices through `market claim`, and the
    sponsor's close + reclaim returns exactly the unspent budget, nothing of the sale."""
    task = listed_task(monkeypatch, capsys, chain, home)
    assert buy(monkeypatch, chain, 1, tmp_path / "model") == 0
    capsys.readouterr()
    sponsor, buyer = chain.ledger(0), chain.ledger(8)
    sponsor_tokens = sponsor.balance(sponsor.address)
    market = chain.deployment.market

    code, err = refused(monkeypatch, capsys, chain, "market", "withdraw", "--key", "dev:1")
    assert code == 2
    assert "dispute window has passed" in err
    chain.advance(windows(chain).dispute + 1)
    code, err = refused(monkeypatch, capsys, chain, "market", "dispute", "1", "--key", "dev:8")
    assert code == 2  # the key works: still nothing to dispute, window or not
    assert run_json(monkeypatch, capsys, chain, "market", "serve", "--once", "--key", "dev:1") == {
        "settled": 1
    }
    assert run_json(monkeypatch, capsys, chain, "market", "withdraw", "--key", "dev:1") == {
        "withdrawn": "2.4"
    }
    assert buyer.balance(buyer.address) == 0

    for device in ("dev:2", "dev:3"):  # 0.5 reward + half of the 0.6 contributors' share
        claimed = run_json(monkeypatch, capsys, chain, "market", "claim", "--key", device)
        assert claimed["claimed"] == {str(task): "0.8"}
    assert sponsor.sales_revenue(task, 1) == (6 * TOKEN // 10, 6 * TOKEN // 10)

    closing = run_json(
        monkeypatch, capsys, chain, "market", "close-task", "--task", str(task), "--key", "dev:0"
    )
    assert isinstance(closing, dict)
    assert closing["closes_at"] > sponsor.now()
    code, err = refused(
        monkeypatch, capsys, chain, "market", "reclaim", "--task", str(task), "--key", "dev:0"
    )
    assert code == 2
    assert "reclaim after that" in err
    assert closing["refund_opens_at"] == closing["closes_at"] + windows(chain).close_grace
    chain.advance(2 * windows(chain).close_grace + 1)  # commits stop, then acks are paid
    assert run_json(
        monkeypatch, capsys, chain, "market", "reclaim", "--task", str(task), "--key", "dev:0"
    ) == {"task": task, "refund": "9"}  # budget 10 - 2 updates x 0.5

    assert sponsor.balance(sponsor.address) == sponsor_tokens + 9 * TOKEN
    assert sponsor.balance(market) == 0  # every token the market took in went out exactly once
    code, err = refused(
        monkeypatch, capsys, chain, "market", "reclaim", "--task", str(task), "--key", "dev:0"
    )
    assert code == 2
    assert "nothing unspent" in err


# -- a stranger who lists another task's model -----------------------------------------------------


def test_a_stranger_cannot_list_a_task_and_a_model_must_open_its_commitment(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    chain: Chain,
    home: Path,
) -> None:
    """THREATS, anyone on chain: must not hijack another task's lineage. Only the task's sponsor
    or aggregator may list it, and only the model its round committed."""
    task = chain.ledger(0).create_task(
        aggregator=chain.accounts[1].address, reward_per_update=1, budget=10, spec_cid=MODEL_CID
    )
    committed_round(chain, home, task)

    args = f"market list --task {task} --key dev:5 --price 1".split()
    code, err = refused(monkeypatch, capsys, chain, *args)
    assert code == 53
    assert f"NotTaskOwner: {chain.accounts[5].address} may not list models of task {task}" in err

    # The server's state now names another model for round 1 (a consistent, well-sealed one).
    state_path = server_folder(chain, home) / f"task-{task}.json"
    secret = TaskSecret.load(state_path.with_name(f"task-{task}.secret"))
    ciphertext, commitment = secret.encrypt(1, b"a model round 1 never committed")
    state = json.loads(state_path.read_text())
    state["rounds"][0]["model_cid"] = LocalStore(home / "store").put_bytes(ciphertext)
    state["rounds"][0]["model_commitment"] = commitment.hex()
    state_path.write_text(json.dumps(state))

    args = f"market list --task {task} --key dev:1 --price 1".split()
    code, err = refused(monkeypatch, capsys, chain, *args)
    assert code == 56
    assert "the decrypted model does not open the committed" in err
    assert chain.ledger(0).listing_ids() == []


# -- a stranger who puts junk on chain -------------------------------------------------------------

STRANGER = 7


def junk_task(chain: Chain, tmp_path: Path) -> tuple[TaskId, list[ListingId]]:
    """The stranger (account 7) opens its own task and, through web3 directly (the client would
    refuse), commits round 1 with junk bytes where the model and bundle CIDs belong and lists it
    with a junk asset and metadata CID; a second listing names a well-formed metadata CID that
    nobody stored. Each listing costs 1 token."""
    chain.ledger(0).transfer(chain.accounts[STRANGER].address, TOKEN)
    stranger, account = chain.ledger(STRANGER), chain.accounts[STRANGER]
    task = stranger.create_task(
        aggregator=stranger.address, reward_per_update=1, budget=TOKEN, spec_cid=MODEL_CID
    )
    market = chain.w3.eth.contract(
        address=chain.w3.to_checksum_address(chain.deployment.market),
        abi=load_artifact("DataMarket").abi,
    )
    commit = market.functions.commitRound(task, 1, b"\x01" * 32, b"junk", b"junk", b"\x02" * 32, 1)
    send_call(chain.w3, account, commit)
    chain.finalize()
    send_call(
        chain.w3,
        account,
        market.functions.list(task, 1, b"junk", TOKEN, b"\x03" * 32, b"junk", 0),
    )
    junk = ListingId(int(market.functions.listingCount().call()))
    nobody_stored = LocalStore(tmp_path / "elsewhere").put_bytes(b'{"accuracy": 0.99}')
    assert not LocalStore(tmp_path / "home" / "store").has(nobody_stored)
    unstored = stranger.list_asset(
        task=task,
        round=1,
        asset_cid=MODEL_CID,
        price=TOKEN,
        key_commitment=b"\x04" * 32,
        metadata_cid=nobody_stored,
        contributors_bps=0,
    )
    return task, [junk, unstored]


def test_junk_on_chain_breaks_only_its_own_task_and_listings(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    chain: Chain,
    home: Path,
    tmp_path: Path,
) -> None:
    """THREATS, anyone on chain: junk a stranger commits or lists must not hide the honest
    market from anyone: listings, claims and device status go on; only its own task and
    listings say they are broken."""
    # Prepare: honest task 1, round 1 paying devices 2 and 3, listed; then the stranger's junk
    honest = listed_task(monkeypatch, capsys, chain, home)
    junk, junk_listings = junk_task(chain, tmp_path)
    assert junk_listings == [ListingId(2), ListingId(3)]

    # Execute / Assert: the listings: the honest one verified, each junk one flagged
    rows = {
        row["listing"]: row for row in run_json(monkeypatch, capsys, chain, "market", "listings")
    }
    assert sorted(rows) == [1, 2, 3]
    assert (rows[1]["verified"], rows[1]["problem"], rows[1]["task"]) == (True, None, honest)
    assert (rows[1]["devices"], rows[1]["rounds"], rows[1]["share"]) == (2, 1, 0.2)
    for listing in junk_listings:
        row = rows[listing]
        assert (row["task"], row["verified"]) == (junk, False)
        assert isinstance(row["problem"], str)
        assert row["problem"]
        assert row["devices"] is None
        assert row["accuracy"] is None

    # ... an honest device sees and claims its reward in the honest task, and only there
    status = run_json(monkeypatch, capsys, chain, "device", "status", "--key", "dev:2")
    (rewards,) = status["rewards"]
    assert (rewards["task"], rewards["claimable"], rewards["rounds_paid"]) == (honest, "0.5", 1)
    claimed = run_json(monkeypatch, capsys, chain, "market", "claim", "--key", "dev:2")
    assert claimed["claimed"] == {str(honest): "0.5"}
    claimed = run_json(monkeypatch, capsys, chain, "device", "claim", "--key", "dev:3")
    assert claimed["claimed"] == {str(honest): "0.5"}
    for device in (2, 3):
        assert chain.ledger(device).balance(chain.accounts[device].address) == TOKEN // 2

    # ... verifying the junk task says its lineage is broken, in one line
    code, err = refused(monkeypatch, capsys, chain, "verify", "--task", str(junk))
    assert code == 56, err
    assert len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in err
    assert f"task {junk} round 1" in err
    code, err = refused(monkeypatch, capsys, chain, "verify", "--task", "99")
    assert code == 2, err
    assert "task 99 does not exist" in err
    assert run_json(monkeypatch, capsys, chain, "verify", "--task", str(honest))["ok"] is True


@pytest.mark.parametrize("junk_listing", [0, 1], ids=["junk CIDs", "metadata nobody stored"])
def test_a_junk_listing_is_refused_before_the_buyer_pays(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    chain: Chain,
    home: Path,
    tmp_path: Path,
    junk_listing: int,
) -> None:
    """`market buy` verifies the listed task's lineage before it pays: a junk listing costs the
    buyer nothing, not even a transaction."""
    listed_task(monkeypatch, capsys, chain, home)
    _, junk_listings = junk_task(chain, tmp_path)
    buyer = chain.ledger(8)
    tokens = buyer.balance(buyer.address)
    out = tmp_path / "model"

    args = ["market", "buy", str(junk_listings[junk_listing]), "--key", "dev:8", "--out", str(out)]
    code, err = refused(monkeypatch, capsys, chain, *args)

    assert code == 56, err
    assert "Traceback" not in err
    assert buyer.balance(buyer.address) == tokens == 3 * TOKEN
    assert buyer.purchases_of(chain.accounts[STRANGER].address) == []
    assert not out.exists()


def strangers_verified_round(chain: Chain, home: Path, tmp_path: Path) -> tuple[TaskId, bytes]:
    """The stranger as sponsor and aggregator of its own task, whose round 1 (paying devices 2
    and 3) verifies like any honest one; returns the task and the round's sealed model bytes."""
    chain.ledger(0).transfer(chain.accounts[STRANGER].address, TOKEN)
    stranger = chain.ledger(STRANGER)
    task = stranger.create_task(
        aggregator=stranger.address, reward_per_update=1, budget=TOKEN, spec_cid=MODEL_CID
    )
    state = tmp_path / "stranger" / f"task-{task}.json"
    publisher = RoundPublisher(
        store=LocalStore(home / "store"),
        ledger=stranger,
        task=task,
        chain_id=chain.deployment.chain_id,
        market=chain.deployment.market,
        state_path=state,
    )
    publish_first_round(chain, publisher, task, MODEL, chain.accounts[2:4])
    chain.finalize()
    _, sealed = stored_model(state, LocalStore(home / "store"), 1)
    return task, sealed.to_bytes()


@pytest.fixture
def stranger_online(chain: Chain, tmp_path: Path) -> Iterator[Keyring]:
    """The stranger (account 7) serving keys from its own keyring."""
    keyring = Keyring(tmp_path / "stranger-keys")
    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(0.2):
            serve(chain.ledger(STRANGER), keyring)

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    yield keyring
    stop.set()
    thread.join()


def test_a_junk_asset_on_a_verifying_task_is_refused_before_the_buyer_pays(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    chain: Chain,
    home: Path,
    tmp_path: Path,
    stranger_online: Keyring,
) -> None:
    task, _ = strangers_verified_round(chain, home, tmp_path)
    key = AssetKey.generate()
    market = chain.w3.eth.contract(
        address=chain.w3.to_checksum_address(chain.deployment.market),
        abi=load_artifact("DataMarket").abi,
    )
    metadata = LocalStore(home / "store").put_bytes(b"{}")
    send_call(
        chain.w3,
        chain.accounts[STRANGER],
        market.functions.list(task, 1, b"junk", TOKEN, key.commitment, cid_bytes(metadata), 0),
    )
    stranger_online.add(ListingId(1), key)
    chain.ledger(0).transfer(chain.accounts[8].address, TOKEN)
    buyer = chain.ledger(8)
    sent = chain.w3.eth.get_transaction_count(buyer.address)

    code = buy(monkeypatch, chain, 1, tmp_path / "model")

    err = capsys.readouterr().err
    assert chain.w3.eth.get_transaction_count(buyer.address) == sent, f"paid, then: {err}"
    assert buyer.balance(buyer.address) == TOKEN
    assert code == 56, err


def test_missing_declared_metadata_never_costs_a_buyer_a_paid_model(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    chain: Chain,
    home: Path,
    tmp_path: Path,
    stranger_online: Keyring,
) -> None:
    """Either refused before paying, or the model: never paid for and lost."""
    task, sealed = strangers_verified_round(chain, home, tmp_path)
    key = AssetKey.generate()
    listing = chain.ledger(STRANGER).list_asset(
        task=task,
        round=1,
        asset_cid=LocalStore(home / "store").put_bytes(encrypt_bytes(sealed, key)),
        price=TOKEN,
        key_commitment=key.commitment,
        metadata_cid=LocalStore(tmp_path / "elsewhere").put_bytes(b'{"accuracy": 0.99}'),
        contributors_bps=0,
    )
    stranger_online.add(listing, key)
    chain.ledger(0).transfer(chain.accounts[8].address, TOKEN)
    buyer = chain.ledger(8)
    sent = chain.w3.eth.get_transaction_count(buyer.address)
    out = tmp_path / "model"

    code = buy(monkeypatch, chain, listing, out)

    err = capsys.readouterr().err
    if code == 0:
        assert out.read_bytes() == MODEL
    else:  # refused: then before paying
        assert chain.w3.eth.get_transaction_count(buyer.address) == sent, f"paid, then: {err}"
        assert buyer.balance(buyer.address) == TOKEN


def test_market_list_holds_to_the_share_fixed_at_task_creation(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    chain: Chain,
    home: Path,
) -> None:
    """The sponsor promised devices 25 % of every sale: the aggregator's `market list` cannot go
    below it (refused before sending) and lists at it by default."""
    task = chain.ledger(0).create_task(
        aggregator=chain.accounts[1].address,
        reward_per_update=TOKEN // 2,
        budget=10 * TOKEN,
        spec_cid=MODEL_CID,
        contributors_bps=2500,
    )
    committed_round(chain, home, task)
    listing = f"market list --task {task} --key dev:1 --price 3".split()

    code, err = refused(monkeypatch, capsys, chain, *listing, "--contributors-share", "0.2")

    assert code == 2, err
    assert "at least 0.25 of every sale" in err
    assert "nothing was sent" in err
    ledger = chain.ledger(0)
    assert ledger.listing_ids() == []
    at_share = run_json(monkeypatch, capsys, chain, *listing)
    above = run_json(monkeypatch, capsys, chain, *listing, "--contributors-share", "0.3")
    assert [
        ledger.listing(ListingId(row["listing"])).contributors_bps for row in (at_share, above)
    ] == [2500, 3000]
    (row,) = run_json(monkeypatch, capsys, chain, "market", "tasks")
    assert row["sale_share"] == 0.25


# -- bad input -------------------------------------------------------------------------------------


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
        (
            ["market", "list", "--task", "99", "--key", "dev:1", "--price", "1"],
            2,
            "task 99 does not exist",
        ),
        (
            ["market", "list", "--task", "1", "--key", "dev:1", "--price", "1", "--round", "5"],
            2,
            "task 1 has no committed round 5",
        ),
        (
            ["market", "list", "--task", "1", "--key", "dev:1", "--price", "0"],
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
        (["market", "dispute", "7", "--key", "dev:8"], 2, "purchase 7 does not exist"),
        (["market", "dispute", "1", "--key", "dev:8"], 2, "no buyer identity for purchase 1"),
        (["market", "dispute", "1", "--key", "dev:9"], 2, "purchase 1 was made by"),
        (["market", "fetch", "7", "--key", "dev:8", "--out", "x"], 2, "purchase 7 does not exist"),
        (["market", "reclaim", "--task", "1", "--key", "dev:0"], 2, "task 1 is not closing"),
        (["market", "reclaim", "--task", "99", "--key", "dev:0"], 2, "task 99 does not exist"),
        (["market", "close-task", "--task", "1", "--key", "dev:1"], 2, "task 1's sponsor is"),
        (["market", "close-task", "--task", "99", "--key", "dev:0"], 2, "task 99 does not exist"),
        (["verify", "--task", "99"], 2, "task 99 does not exist"),
        # ids start at 1: a negative one is a usage error, not a traceback from the ABI encoder
        (["verify", "--task", "-1"], 2, "-1 is not in the range x>=1"),
        (["market", "reclaim", "--task", "-1", "--key", "dev:0"], 2, "not in the range x>=1"),
        (["market", "claim", "--task", "-1", "--key", "dev:2"], 2, "not in the range x>=1"),
        (["market", "refund", "-1", "--key", "dev:8"], 2, "No such option"),
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
    listed_task(monkeypatch, capsys, chain, home, buyer_tokens=6)
    # purchase 1: bought by account 8 outside the CLI, so this home has no identity for it
    chain.ledger(8).buy(ListingId(1), buyer_key=OneTimeKey.generate().public, max_price=3 * TOKEN)
    KeyStore(home / "keys").new("sponsor", "another passphrase")

    got, err = refused(monkeypatch, capsys, chain, *args)

    assert got == code, err
    assert message in err
    assert PASSPHRASE not in err


def test_server_answer_answers_a_devices_challenge_from_the_cli(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    chain: Chain,
    home: Path,
) -> None:
    """A device challenges round 1 with its ack while the root is in its window; the
    operator's `fedmarket server answer` shows its leaf on chain, and the root becomes final."""
    task = chain.ledger(0).create_task(
        aggregator=chain.accounts[1].address,
        reward_per_update=TOKEN // 2,
        budget=10 * TOKEN,
        spec_cid=MODEL_CID,
    )
    committed_round(chain, home, task, final=False)  # round 1 still in its challenge window
    device = chain.accounts[2]
    acked = Ack(task, 1, device.address, bytes(32), TOKEN // 2)
    signature = chain.ledger(1).sign_ack(acked)
    chain.ledger(2).challenge_with_ack(task, 1, acked, signature)

    answered = run_json(
        monkeypatch, capsys, chain, "server", "answer", "--task", str(task), "--key", "dev:1"
    )

    assert answered == {"task": task, "answered": [{"round": 1, "account": device.address}]}
    chain.finalize()
    state = chain.ledger(0).round_state(task, 1)
    assert state is not None
    assert state.final(chain.ledger(0).now())
