"""SecAgg+ with every device in this process: the protocol without a network.

Tests drive dropouts and deviations at each stage through it, and the scale benchmark runs
1,000 devices with it. It calls the code the Flower mod and workflow call, in the same order,
and like the workflow it drops (and records) any device whose message is refused and starts
a new draw when roster members withhold their nonces.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable, Collection, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

from nacl.signing import SigningKey

from fedmarket.exceptions import InvalidInput, ProtocolViolation, SecAggAborted
from fedmarket.secagg.codec import Encoded
from fedmarket.secagg.config import SESSION_BYTES, RoundParams
from fedmarket.secagg.device import DeviceSession, Stage
from fedmarket.secagg.parameters import choose
from fedmarket.secagg.roster import Roster
from fedmarket.secagg.server import Aggregation, Redraw, SecureSum

log = logging.getLogger(__name__)

T = TypeVar("T")
Tamper = Callable[[Stage, int, Any], Any]
"""(stage, sending node, its upload) -> the upload the server receives instead."""


@dataclass(frozen=True)
class LocalRound:
    result: SecureSum
    rejected: dict[int, str]  # node -> why its message was refused
    server: Aggregation
    draws: int = 1


@dataclass
class Dropouts:
    """Who goes silent before each stage's upload."""

    setup: Collection[int] = ()
    roster: Collection[int] = ()
    share_keys: Collection[int] = ()
    mask: Collection[int] = ()
    consistency: Collection[int] = ()
    unmask: Collection[int] = ()

    def at(self, stage: Stage) -> Collection[int]:
        value: Collection[int] = getattr(self, stage.value)
        return value


@dataclass
class LocalDevices:
    """The devices' long-term node keys (fresh ones unless given)."""

    keys: dict[int, SigningKey] = field(default_factory=dict)

    def key(self, node: int) -> SigningKey:
        return self.keys.setdefault(node, SigningKey.generate())


def aggregate_locally(
    params: RoundParams,
    encoded: Mapping[int, Encoded],
    *,
    drops: Dropouts | None = None,
    tamper: Tamper | None = None,
    devices: LocalDevices | None = None,
) -> LocalRound:
    """One round over the devices in ``encoded``; a void draw (withheld nonces) is redrawn
    without the withholders, at most ``params.assumptions.draws`` times."""
    drops = drops or Dropouts()
    devices = devices or LocalDevices()
    cohort = list(encoded)
    rejected: dict[int, str] = {}
    for draw in range(1, params.assumptions.draws + 1):
        try:
            result, server = _draw(params, cohort, encoded, drops, tamper, devices, rejected)
        except ProtocolViolation as exc:  # a stage could not close: a clean abort, as on Flower
            raise SecAggAborted(f"secure aggregation aborted: {exc}") from None
        except Redraw as void:
            log.warning("secagg: draw %d void: %s", draw, void)
            cohort = [n for n in cohort if n not in void.missing]
            params = _redrawn(params, len(cohort))
            continue
        return LocalRound(result, rejected, server, draw)
    raise SecAggAborted(f"no complete draw in {params.assumptions.draws} tries")


def _redrawn(params: RoundParams, cohort_size: int) -> RoundParams:
    """The parameters of a new draw over the smaller cohort (aborts if none are safe)."""
    try:
        k, t = choose(cohort_size, params.assumptions)
        return dataclasses.replace(
            params,
            session=os.urandom(SESSION_BYTES),
            cohort_size=cohort_size,
            neighbours=k,
            threshold=t,
        )
    except InvalidInput as exc:
        raise SecAggAborted(f"no safe redraw: {exc}") from None


def _draw(
    params: RoundParams,
    cohort: list[int],
    encoded: Mapping[int, Encoded],
    drops: Dropouts,
    tamper: Tamper | None,
    devices: LocalDevices,
    rejected: dict[int, str],
) -> tuple[SecureSum, Aggregation]:
    length = len(next(iter(encoded.values())).values)
    server = Aggregation(params, cohort, length)
    sessions: dict[int, DeviceSession] = {}
    policy = params.assumptions

    @contextmanager
    def guard(node: int) -> Iterator[None]:
        try:
            yield
        except ProtocolViolation as exc:
            log.warning("secagg: dropping node %d: %s", node, exc)
            rejected[node] = str(exc)

    def sent(stage: Stage, node: int, upload: T) -> T:
        return tamper(stage, node, upload) if tamper else upload

    def live(stage: Stage, nodes: Collection[int]) -> list[int]:
        return [n for n in nodes if n not in drops.at(stage)]

    for node in live(Stage.SETUP, cohort):
        with guard(node):
            sessions[node], announcement = DeviceSession.setup(
                node, params, devices.key(node), policy
            )
            server.receive_announcement(node, sent(Stage.SETUP, node, announcement))
    roster: Roster = server.close_setup()
    for node in live(Stage.ROSTER, roster.nodes):
        with guard(node):
            nonce = sent(Stage.ROSTER, node, sessions[node].reveal(roster))
            server.receive_nonce(node, nonce)
    nonces = server.close_roster()
    for node in live(Stage.SHARE_KEYS, roster.nodes):
        with guard(node):
            upload = sent(Stage.SHARE_KEYS, node, sessions[node].share_keys(nonces))
            server.receive_shares(node, upload)
    dealers, inboxes = server.close_share_keys()
    for node in live(Stage.MASK, dealers):
        with guard(node):
            complaints = sessions[node].accept_shares(dealers, inboxes[node])
            vector, vouch = sessions[node].mask_update(encoded[node], devices.key(node))
            vector, vouch, complaints = sent(Stage.MASK, node, (vector, vouch, complaints))
            server.receive_masked(node, vector, vouch, complaints)
    survivors, uploads = server.close_masking()
    for node in live(Stage.CONSISTENCY, survivors):
        with guard(node):
            signature = sessions[node].consistency(survivors, uploads, devices.key(node))
            server.receive_signature(node, sent(Stage.CONSISTENCY, node, signature))
    for node, (signatures, vouches) in server.close_consistency().items():
        if node in drops.at(Stage.UNMASK):
            continue
        with guard(node):
            shares = sessions[node].unmask(signatures, vouches)
            server.receive_unmask(node, sent(Stage.UNMASK, node, shares))
    return server.finish(), server
