"""SecAgg+ with every device in this process: the protocol without a network.

Tests drive dropouts and tampered messages at each stage through it, and the scale benchmark
runs 1,000 devices with it. It calls the code the Flower mod and workflow call, in the same
order, and like the workflow it drops (and records) any device whose message is refused.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any

from fedmarket.exceptions import ProtocolViolation
from fedmarket.secagg.codec import Encoded
from fedmarket.secagg.config import RoundParams
from fedmarket.secagg.device import DeviceSession, Stage
from fedmarket.secagg.server import Aggregation, SecureSum

log = logging.getLogger(__name__)

Tamper = Callable[[Stage, int, Any], Any]
"""(stage, sending node, its upload) -> the upload the server receives instead."""


@dataclass(frozen=True)
class LocalRound:
    result: SecureSum
    rejected: dict[int, str]  # node -> why its message was refused
    server: Aggregation


def aggregate_locally(
    params: RoundParams,
    encoded: Mapping[int, Encoded],
    *,
    rng: random.Random,
    drop_before_keys: Collection[int] = (),
    drop_before_shares: Collection[int] = (),
    drop_before_upload: Collection[int] = (),
    drop_before_unmask: Collection[int] = (),
    tamper: Tamper | None = None,
    server_type: type[Aggregation] = Aggregation,
) -> LocalRound:
    """One round over the devices in ``encoded``; ``drop_*`` go silent at that stage."""
    length = len(next(iter(encoded.values())).values)
    server = server_type(params, list(encoded), length, rng)
    sessions: dict[int, DeviceSession] = {}
    rejected: dict[int, str] = {}

    def deliver(stage: Stage, node: int, upload: Any, receive: Callable[[Any], None]) -> None:
        try:
            receive(tamper(stage, node, upload) if tamper else upload)
        except ProtocolViolation as exc:
            log.warning("secagg %s: dropping node %d: %s", stage, node, exc)
            rejected[node] = str(exc)

    for node in encoded:
        if node not in drop_before_keys:
            sessions[node], keys = DeviceSession.setup(node, params)
            deliver(Stage.SETUP, node, keys, lambda k, n=node: server.receive_keys(n, k))
    for node, peer_keys in server.close_setup().items():
        if node not in drop_before_shares:
            upload = sessions[node].share_keys(peer_keys)  # honest server: never refused
            deliver(
                Stage.SHARE_KEYS,
                node,
                upload,
                lambda u, n=node: server.receive_shares(n, u.ciphertexts, u.seed_commitment),
            )
    for node, inbox in server.close_share_keys().items():
        if node not in drop_before_upload:
            try:
                masked = sessions[node].mask(inbox, encoded[node])
            except ProtocolViolation as exc:  # too few valid shares reached it
                rejected[node] = f"refused: {exc}"
                continue
            deliver(
                Stage.MASK,
                node,
                masked,
                lambda u, n=node: server.receive_masked(n, u.vector, u.mask_peers),
            )
    for node, request in server.close_masking().items():
        if node in drop_before_unmask:
            continue
        try:
            shares = sessions[node].unmask(request.survivors, request.dropped)
        except ProtocolViolation as exc:  # a device that refuses looks dropped to the server
            rejected[node] = f"refused: {exc}"
            continue
        deliver(
            Stage.UNMASK,
            node,
            shares,
            lambda u, n=node: server.receive_unmask(n, u.seed, u.mask_key),
        )
    return LocalRound(server.finish(), rejected, server)
