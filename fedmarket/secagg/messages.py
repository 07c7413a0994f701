"""How SecAgg+ stages travel in Flower messages.

Every stage message, both ways, carries a ConfigRecord ``secagg`` with ``stage`` and
``session``. Server -> device: setup sends the round parameters (``param.*``); roster the
signed announcements (``roster``); share_keys every member's nonce (``nonce_nodes``,
``nonces``); mask the dealers (``dealers``) and the shares addressed to the device
(``sources``, ``ciphertexts``) next to the usual training content; consistency the
``survivors``; unmask the survivors' signatures the device needs (``signers``,
``signatures``) and its neighbours' signed dealer lists (``vouchers``, ``vouches``).
Device -> server: setup ``announcement``; roster ``nonce``; share_keys ``destinations``,
``ciphertexts``, ``seed_commitments``, ``key_commitments``, ``digest_holders``,
``seed_digests``, ``key_digests``; mask the training reply with its delta replaced by
ArrayRecord ``masked`` (one uint32 vector, its last word the clipped share) plus
``masked_with`` and complaints (``complaint_nodes``, ``complaints``); consistency
``signature``; unmask ``seed_owners``, ``seed_shares``, ``key_owners``, ``key_shares``,
``pair_owners``, ``pair_keys``. A device that refuses a stage answers ``refused`` with the
reason.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TypeVar

from flwr.app import ConfigRecord, ConfigRecordValues

from fedmarket.exceptions import ProtocolViolation
from fedmarket.secagg.device import Stage

SECAGG, MASKED = "secagg", "masked"
T = TypeVar("T")


def record(stage: Stage, session: bytes, fields: Mapping[str, ConfigRecordValues]) -> ConfigRecord:
    return ConfigRecord({"stage": stage.value, "session": session, **fields})


def check_header(config: ConfigRecord, stage: Stage, session: bytes) -> None:
    if config.get("stage") != stage.value:
        raise ProtocolViolation(
            f"expected a {stage.value} message, got stage {config.get('stage')!r}"
        )
    if config.get("session") != session:
        raise ProtocolViolation("message belongs to another round (session mismatch)")


def field(config: Mapping[str, object], key: str, kind: type[T]) -> T:
    value = config.get(key)
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise ProtocolViolation(
            f"field {key!r} must be {kind.__name__}, got {type(value).__name__}"
        )
    return value


def items(config: Mapping[str, object], key: str, kind: type[T]) -> list[T]:
    value = config.get(key)
    if not isinstance(value, list) or not all(isinstance(v, kind) for v in value):
        raise ProtocolViolation(f"field {key!r} must be a list of {kind.__name__}")
    return value


def mapping(config: Mapping[str, object], keys: str, values: str, kind: type[T]) -> dict[int, T]:
    """Two parallel lists as a dict; duplicate keys or unequal lengths are violations."""
    ks, vs = items(config, keys, int), items(config, values, kind)
    if len(ks) != len(vs) or len(set(ks)) != len(ks):
        raise ProtocolViolation(f"{keys!r} and {values!r} must pair up with no repeats")
    return dict(zip(ks, vs, strict=True))
