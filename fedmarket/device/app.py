"""The device's Flower ClientApp: check the privacy cap, train with DP-SGD, return the delta."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence

import numpy as np
from eth_account.signers.local import LocalAccount
from flwr.app import Context, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.clientapp.typing import Mod
from nacl.signing import SigningKey

from fedmarket.data.dataset import Dataset
from fedmarket.device.acks import AckBook, make_ack_mod
from fedmarket.device.budget import paid_round
from fedmarket.device.profile import DeviceProfile, DeviceResolver
from fedmarket.exceptions import (
    InvalidInput,
    LedgerCorrupted,
    LedgerMissing,
    PrivacyBudgetExceeded,
    RoundFailed,
)
from fedmarket.models.registry import build_model, output_classes, parse_model_name
from fedmarket.models.weights import Weights, set_weights
from fedmarket.privacy.config import dp_from_record, train_from_record
from fedmarket.privacy.ledger import PrivacyLedger
from fedmarket.privacy.training import LocalTrainResult, plan_spend, train_plain, train_private
from fedmarket.protocol import CONFIG, GLOBAL, TrainReply, weights_from_record
from fedmarket.secagg.keys import node_key_from_identity
from fedmarket.secagg.mod import make_secagg_mod
from fedmarket.secagg.parameters import Assumptions

log = logging.getLogger(__name__)


def make_client_app(
    resolve: DeviceResolver,
    *,
    require_secagg: bool = True,
    mods: Sequence[Mod] = (),
) -> ClientApp:
    """A ClientApp whose train handler runs on the device ``resolve`` finds for the node.

    ``mods`` wrap everything else (outermost first): policies or fault injection.

    Updates leave the device masked under SecAgg+ when the server runs it; with
    ``require_secagg`` (the default) the device refuses rounds that do not. A device with a
    payout key (``profile.account``) signs a receipt for every masked upload in paid rounds and
    keeps the aggregator's acknowledgement of it (:mod:`fedmarket.device.acks`).
    """

    def node_key(context: Context) -> SigningKey:
        return node_key_from_identity(bytes(resolve(context).identity.key))

    def payout_key(context: Context) -> LocalAccount | None:
        return resolve(context).account

    def ack_book(context: Context) -> AckBook | None:
        profile = resolve(context)
        return None if profile.account is None else AckBook(profile.home, profile.account.address)

    def policy(context: Context) -> Assumptions:
        return resolve(context).secagg_policy

    app = ClientApp(
        mods=[
            *mods,
            make_ack_mod(ack_book),
            make_secagg_mod(
                node_key=node_key, required=require_secagg, signer=payout_key, policy=policy
            ),
        ]
    )

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        reply = handle_train(msg.content, resolve(context), run=str(msg.metadata.run_id))
        return Message(reply.to_content(), reply_to=msg)

    return app


def handle_train(content: RecordDict, profile: DeviceProfile, *, run: str) -> TrainReply:
    """One round on one device.

    The spend is reserved before training and charged once training has started, whatever
    happens next: every answer from then on (an update, a divergence, a failure) is a function
    of the private training that the server observes. A decline before training charges
    nothing.
    """
    config: dict[str, object] = dict(content.config_records[CONFIG])
    server_round = config.pop("round")
    if not isinstance(server_round, int):
        raise InvalidInput(f"round config: 'round' must be an integer, got {server_round!r}")
    model_name = parse_model_name(config.pop("model"))
    train_cfg, dp = train_from_record(config), dp_from_record(config)
    global_weights = weights_from_record(content.array_records[GLOBAL])
    if not all(np.isfinite(w).all() for w in global_weights.values()):
        refusal = "the global model has NaN or infinite values; refused before training"
        log.warning("device %s round %d: %s", profile.device, server_round, refusal)
        spent = _ledger(profile).epsilon() if profile.private else float("inf")
        return _declined(profile, refusal, epsilon=spent)
    classes = output_classes(model_name, global_weights)  # the task's, not the records'
    model = build_model(model_name, profile.data.feature_shape, classes, seed=0)
    set_weights(model, global_weights)
    seed = _round_seed(profile.device, server_round)
    data = _within(profile, classes)

    if not profile.private:
        result = train_plain(model, data, train_cfg, seed=seed)
        return _trained(profile, result, global_weights, epsilon=float("inf"))

    ledger = _ledger(profile)
    if profile.eligibility is not None and (why := profile.eligibility.decline_reason()):
        log.info("device %s declines round %d: %s", profile.device, server_round, why)
        return _declined(profile, why, epsilon=ledger.epsilon())
    spend = plan_spend(train_cfg, dp, delta=ledger.delta)
    try:
        reservation = ledger.reserve(
            spend,
            round_label=f"run{run}/round{server_round}",
            device=profile.device,
            dataset=profile.data.fingerprint(),
            paid=paid_round(content),
        )
    except PrivacyBudgetExceeded as exc:
        log.info("device %s declines round %d: %s", profile.device, server_round, exc)
        return _declined(profile, str(exc), epsilon=exc.spent)
    try:
        result = train_private(model, data, train_cfg, dp, spend, seed=seed)
    except Exception:
        # The server sees this round fail, and why it failed may depend on the records: the
        # spend is charged, and the exception's text (which may quote shapes or values of
        # the records) stays in this device's log; Flower would send it to the server.
        reservation.commit()
        log.exception(
            "device %s round %d: training failed; its epsilon stays charged",
            profile.device,
            server_round,
        )
        raise RoundFailed(
            "local training failed on the device (the reason is in its log)"
        ) from None
    except BaseException:
        reservation.commit()  # interrupted mid-training: nothing proves the update was not sent
        raise
    # Whatever the device answers now is a function of the DP output: the spend is final.
    reservation.commit()
    if not all(np.isfinite(w).all() for w in result.weights.values()):
        why = (
            "training diverged: the update has NaN or infinite values (lower the learning "
            "rate); no update was sent, but the round's epsilon is charged (the server sees "
            "the round fail, and that is a function of the private training)"
        )
        log.warning("device %s round %d: %s", profile.device, server_round, why)
        return _declined(profile, why, epsilon=reservation.epsilon_after)
    return _trained(profile, result, global_weights, epsilon=reservation.epsilon_after)


def _within(profile: DeviceProfile, classes: int) -> Dataset:
    """The device's records whose label is one of the task's ``classes``; the others sit the
    round out without a word to the server (whether a device holds them is private)."""
    data = profile.data
    keep = np.flatnonzero(data.labels < classes)
    if len(keep) < len(data):
        log.warning(
            "device %s: %d of its records have labels the task's model does not predict "
            "(it has %d classes); they are left out",
            profile.device,
            len(data) - len(keep),
            classes,
        )
        return data.subset(keep)
    return data


def _ledger(profile: DeviceProfile) -> PrivacyLedger:
    """The device's ledger; if it is missing or broken, the server hears only that (its path
    and the details stay in the device's log)."""
    try:
        return profile.ledger()
    except (LedgerMissing, LedgerCorrupted) as exc:
        log.error("device %s: %s", profile.device, exc)
        raise type(exc)(
            "the device's privacy ledger is missing or does not verify; it trains no more "
            "until its owner restores it (details in the device's log)"
        ) from None


def _declined(profile: DeviceProfile, reason: str, *, epsilon: float) -> TrainReply:
    return TrainReply(
        device=profile.device,
        outcome="declined",
        reason=reason,
        epsilon=epsilon,
        delta=profile.delta,
        update=None,
    )


def _trained(
    profile: DeviceProfile, result: LocalTrainResult, global_weights: Weights, *, epsilon: float
) -> TrainReply:
    # The loss was computed on the records without noise: the owner sees it, nobody else.
    log.info(
        "device %s trained %d steps, mean loss %.4f", profile.device, result.steps, result.mean_loss
    )
    delta_weights = {name: result.weights[name] - w for name, w in global_weights.items()}
    return TrainReply(
        device=profile.device,
        outcome="trained",
        reason="",
        epsilon=epsilon,
        delta=profile.delta,
        update=delta_weights,
    )


def _round_seed(device: str, server_round: int) -> int:
    return int.from_bytes(hashlib.sha256(f"{device}/{server_round}".encode()).digest()[:4], "big")
