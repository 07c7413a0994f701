"""SecAgg+ with every device in this process: the protocol without a network.

Tests drive dropouts and tampered messages at each stage through it, and the scale benchmark
runs 1,000 devices with it. It calls the code the Flower mod and workflow call, in the same
order, and like the workflow it drops (and records) any device whose message is refused.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Collection, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

from fedmarket.exceptions import ProtocolViolation
from fedmarket.secagg.codec import Encoded
from fedmarket.secagg.config import RoundParams
from fedmarket.secagg.device import DeviceSession, Stage
from fedmarket.secagg.server import Aggregation, SecureSum

log = logging.getLogger(__name__)

T = TypeVar("T")
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

    @contextmanager
    def guard(node: int) -> Iterator[None]:
        try:
            yield
        except ProtocolViolation as exc:
            log.warning("secagg: dropping node %d: %s", node, exc)
            rejected[node] = str(exc)

    def sent(stage: Stage, node: int, upload: T) -> T:
        return tamper(stage, node, upload) if tamper else upload

    for node in encoded:
        if node not in drop_before_keys:
            sessions[node], keys = DeviceSession.setup(node, params)
            with guard(node):
                server.receive_keys(node, sent(Stage.SETUP, node, keys))
    for node, peer_keys in server.close_setup().items():
        if node not in drop_before_shares:
            share = sent(Stage.SHARE_KEYS, node, sessions[node].share_keys(peer_keys))
            with guard(node):
                server.receive_shares(node, share.ciphertexts, share.seed_commitment)
    for node, inbox in server.close_share_keys().items():
        if node not in drop_before_upload:
            with guard(node):  # a device with too few valid shares refuses to upload
                masked = sent(Stage.MASK, node, sessions[node].mask(inbox, encoded[node]))
                server.receive_masked(node, masked.vector, masked.mask_peers)
    for node, request in server.close_masking().items():
        if node not in drop_before_unmask:
            with guard(node):  # a device asked for too much refuses
                shares = sessions[node].unmask(request.survivors, request.dropped)
                shares = sent(Stage.UNMASK, node, shares)
                server.receive_unmask(node, shares.seed, shares.mask_key)
    return LocalRound(server.finish(), rejected, server)
