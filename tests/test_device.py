import hashlib
from pathlib import Path

import numpy as np
import pytest
from eth_account import Account
from eth_account.signers.local import LocalAccount
from flwr.app import ConfigRecord, RecordDict

import fedmarket.device.app as device_app
from fedmarket.data import Dataset
from fedmarket.device import DeviceProfile, handle_train
from fedmarket.exceptions import InvalidInput, LedgerMissing, RoundFailed
from fedmarket.market.terms import MARKET, MarketTerms, RoundTerms
from fedmarket.models import build_model, get_weights
from fedmarket.privacy import DpConfig, PaidRound, TrainConfig
from fedmarket.privacy.config import to_record
from fedmarket.protocol import CONFIG, GLOBAL, weights_to_record
from fedmarket.types import DeviceId

IDENTITY: LocalAccount = Account.from_key(hashlib.sha256(b"dev-1").digest())


def profile(home: Path, cap: float, *, ledger: bool = True, classes: int = 4) -> DeviceProfile:
    """A device whose owner created its privacy ledger (unless ``ledger`` is False); its
    records have labels 0 .. ``classes`` - 1 (the task's model predicts 4)."""
    rng = np.random.default_rng(0)
    data = Dataset(
        rng.random((40, 1, 8, 8), dtype=np.float32),
        np.arange(40) % classes,
        tuple("abcdefgh"[:classes]),
        "t",
    )
    device = DeviceProfile(
        device=DeviceId("dev-1"), data=data, home=home, epsilon_cap=cap, identity=IDENTITY
    )
    if ledger:
        device.create_ledger()
    return device


def round_content(classes: int = 4, **overrides: object) -> RecordDict:
    weights = get_weights(build_model("mlp", (1, 8, 8), classes, seed=0))
    config = {
        "round": 1,
        "model": "mlp",
        **to_record("train", TrainConfig(sample_rate=0.25, local_steps=4, batch_size=10)),
        **to_record("dp", DpConfig(noise_multiplier=1.0)),
        **overrides,
    }
    return RecordDict({GLOBAL: weights_to_record(weights), CONFIG: ConfigRecord(config)})


def test_device_trains_returns_delta_and_records_spend(tmp_path: Path) -> None:
    device = profile(tmp_path, cap=50.0)
    reply = handle_train(round_content(), device, run="1")
    assert reply.outcome == "trained"
    assert reply.update is not None
    assert any(np.abs(d).sum() > 0 for d in reply.update.values())
    ledger = device.ledger()
    assert [e.status for e in ledger.entries] == ["spent"]
    assert reply.epsilon == pytest.approx(ledger.epsilon())


def test_a_device_without_a_ledger_refuses_to_train(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A missing ledger is never read as empty: the round fails before any training."""

    def never(*args: object, **kwargs: object) -> None:
        raise AssertionError("trained without a ledger")

    monkeypatch.setattr(device_app, "train_private", never)
    device = profile(tmp_path, cap=50.0, ledger=False)
    with pytest.raises(LedgerMissing, match="missing or does not verify") as info:
        handle_train(round_content(), device, run="1")
    assert str(tmp_path) not in str(info.value)  # the owner's paths stay on the device
    assert not (tmp_path / "privacy").exists()


def test_the_payout_key_must_be_the_identity(tmp_path: Path) -> None:
    other: LocalAccount = Account.from_key(hashlib.sha256(b"other").digest())
    device = profile(tmp_path, cap=50.0, ledger=False)
    with pytest.raises(InvalidInput, match="must be its identity key"):
        DeviceProfile(
            device=device.device,
            data=device.data,
            home=tmp_path,
            epsilon_cap=50.0,
            identity=IDENTITY,
            account=other,
        )


def test_a_paid_round_is_recorded_with_its_market_round(tmp_path: Path) -> None:
    """The reservation names the task and round its receipt will name (`device status --key`
    matches published receipts to ledger rounds by them)."""
    device = profile(tmp_path, cap=50.0)
    content = round_content()
    terms = RoundTerms(
        MarketTerms(7, 31337, "0x" + "ab" * 20, "0x" + "cd" * 20), 3, bytes(32), bytes(32)
    )
    content[MARKET] = terms.to_record()

    reply = handle_train(content, device, run="1")

    (entry,) = device.ledger().entries
    assert entry.paid == PaidRound(31337, "0x" + "ab" * 20, 7, 3)
    assert reply.epsilon == entry.epsilon_after


def test_device_declines_a_round_past_its_cap_and_records_nothing(tmp_path: Path) -> None:
    device = profile(tmp_path, cap=0.05)
    reply = handle_train(round_content(), device, run="1")
    assert reply.outcome == "declined"
    assert reply.update is None
    assert "cap 0.050" in reply.reason
    assert device.ledger().entries == ()


def test_failed_training_keeps_the_spend_charged_and_its_reason_on_the_device(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The server sees the round fail, and a failure in training may depend on the records."""

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(device_app, "train_private", broken)
    device = profile(tmp_path, cap=50.0)
    with pytest.raises(RoundFailed, match="reason is in its log") as info:
        handle_train(round_content(), device, run="1")
    # the exception's text (it may quote the records) never reaches what Flower sends
    assert "disk on fire" not in str(info.value)
    assert info.value.__cause__ is None
    assert "disk on fire" in caplog.text  # the owner sees it in the device's log
    assert [e.status for e in device.ledger().entries] == ["spent"]


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"round": "one"}, "'round' must be an integer"),
        ({"model": "resnet"}, "unknown model"),
        ({"dp.max_grad_norm": "big"}, "wrong type"),
        ({"dp.noise_multiplier": -1.0}, "noise_multiplier must be > 0"),
        ({"dp.sneaky": 1.0}, "unknown key"),
    ],
)
def test_malformed_round_config_is_refused(tmp_path: Path, override: dict, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        handle_train(round_content(**override), profile(tmp_path, cap=50.0), run="1")


def test_a_broken_global_model_is_refused_before_training_and_costs_nothing(
    tmp_path: Path,
) -> None:
    """A global model with a NaN in it (a broken or hostile server) would train into a NaN
    update whatever the records: the device refuses before training, so nothing is charged."""
    device = profile(tmp_path, cap=50.0)
    weights = get_weights(build_model("mlp", (1, 8, 8), 4, seed=0))
    first = next(iter(weights))
    weights[first] = np.full_like(weights[first], np.nan)
    content = round_content()
    content[GLOBAL] = weights_to_record(weights)

    reply = handle_train(content, device, run="1")

    assert (reply.outcome, reply.update) == ("declined", None)
    assert "global model" in reply.reason
    assert device.ledger().entries == ()


def test_an_update_that_diverges_in_training_is_not_sent_but_is_charged(tmp_path: Path) -> None:
    """Divergence from a finite model depends on the noisy training: the decline the server
    sees is a function of the DP output, so the round's epsilon is charged, and said so."""
    device = profile(tmp_path, cap=50.0)
    content = round_content(
        **to_record("train", TrainConfig(learning_rate=1e38, local_steps=4)),
        **to_record("dp", DpConfig(noise_multiplier=1000.0)),
    )

    reply = handle_train(content, device, run="1")

    assert (reply.outcome, reply.update) == ("declined", None)
    assert "diverged" in reply.reason
    assert "charged" in reply.reason
    ledger = device.ledger()
    assert [e.status for e in ledger.entries] == ["spent"]
    assert reply.epsilon == pytest.approx(ledger.epsilon())


def test_a_hopeless_round_config_is_declined_at_once(tmp_path: Path) -> None:
    """sigma 0.05 at q 0.005 for 200 steps: PRV would ask for gigabytes (issue 15). The RDP
    bound (about 32,000) decides in milliseconds; the round is declined and nothing recorded."""
    rng = np.random.default_rng(0)
    data = Dataset(rng.random((2000, 1, 8, 8), dtype=np.float32), np.arange(2000) % 4, "abcd", "t")
    device = DeviceProfile(
        device=DeviceId("dev-1"), data=data, home=tmp_path, epsilon_cap=8.0, identity=IDENTITY
    )
    device.create_ledger()
    content = round_content(
        **to_record("train", TrainConfig(sample_rate=0.005, local_steps=200, batch_size=10)),
        **to_record("dp", DpConfig(noise_multiplier=0.05)),
    )

    reply = handle_train(content, device, run="1")

    assert reply.outcome == "declined"
    assert "cap 8.000" in reply.reason
    assert device.ledger().entries == ()


@pytest.mark.parametrize("classes", [3, 5])
def test_the_task_model_decides_the_classes_not_the_records(tmp_path: Path, classes: int) -> None:
    """Which labels a device's records hold is private: a device without one of the task's
    classes trains like the others, and records with labels the model does not predict sit
    the round out, where the device's own class count once made it refuse with a message
    that told the server how many classes it had (red team, issue 15)."""
    device = profile(tmp_path, cap=50.0, classes=classes)

    reply = handle_train(round_content(), device, run="1")

    assert (reply.outcome, reply.reason) == ("trained", "")
    assert reply.update is not None
    assert reply.update["net.3.bias"].shape == (4,)


def test_a_device_with_no_record_the_model_predicts_still_trains_on_noise(
    tmp_path: Path,
) -> None:
    """A server that shrinks the model to 2 classes must not learn whether a device holds a
    record of label 0 or 1: one with none takes the same charged steps on empty batches and
    answers like any other (red team 2, issue 15: it refused, one record apart)."""
    without = profile(tmp_path / "without", cap=50.0)
    keep = np.flatnonzero(without.data.labels >= 2)
    without = DeviceProfile(
        device=without.device,
        data=without.data.subset(keep),
        home=without.home,
        epsilon_cap=50.0,
        identity=IDENTITY,
    )
    with_one = profile(tmp_path / "with", cap=50.0)

    replies = [handle_train(round_content(classes=2), d, run="1") for d in (without, with_one)]

    assert [(r.outcome, r.reason) for r in replies] == [("trained", "")] * 2
    assert replies[0].epsilon == replies[1].epsilon


def test_a_per_round_target_too_small_to_certify_is_refused_by_name(tmp_path: Path) -> None:
    """RDP cannot certify epsilon 0.1 at q 0.05 for 20 steps: a clear config error, before any
    spend (Opacus's bare "The privacy budget is too low." used to reach the server)."""
    device = profile(tmp_path, cap=50.0)
    content = round_content(
        **to_record("train", TrainConfig(sample_rate=0.05, local_steps=20)),
        **to_record("dp", DpConfig(noise_multiplier=None, target_epsilon_per_round=0.1)),
    )
    del content.config_records[CONFIG]["dp.noise_multiplier"]

    with pytest.raises(InvalidInput, match=r"target of 0\.1 .* below what the RDP accountant"):
        handle_train(content, device, run="1")
    assert device.ledger().history == ()
