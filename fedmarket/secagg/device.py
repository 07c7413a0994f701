"""The device's side of SecAgg+, one round: keys, shares, the masked vector, unmask shares.

Stages run in order (setup, share_keys, mask, unmask), each at most once per round; anything
else raises :class:`ProtocolViolation`. The session round-trips through a flat record so that a
Flower ClientApp can keep it in ``Context.state`` between messages.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TypeVar

from flwr.app import ConfigRecordValues
from nacl.exceptions import CryptoError
from nacl.public import Box
from nacl.secret import SecretBox

from fedmarket.exceptions import ProtocolViolation
from fedmarket.secagg import shamir
from fedmarket.secagg.codec import Encoded, Vector
from fedmarket.secagg.config import RoundParams
from fedmarket.secagg.keys import (
    KEY_BYTES,
    NODE_ID_LIMIT,
    PublicKeys,
    agree,
    new_private_key,
    public_key,
)
from fedmarket.secagg.masks import apply_masks, mask_key

# src node (8) | dst node (8) | session (16) | seed share | mask-key share
SHARE_PLAINTEXT_BYTES = 8 + 8 + 16 + 2 * shamir.SHARE_BYTES
CIPHERTEXT_BYTES = Box.NONCE_SIZE + 16 + SHARE_PLAINTEXT_BYTES

T = TypeVar("T")


class Stage(StrEnum):
    SETUP = "setup"
    SHARE_KEYS = "share_keys"
    MASK = "mask"
    UNMASK = "unmask"


NEXT_STAGE = {Stage.SETUP: Stage.SHARE_KEYS, Stage.SHARE_KEYS: Stage.MASK, Stage.MASK: Stage.UNMASK}


@dataclass(frozen=True)
class ShareUpload:
    ciphertexts: dict[int, bytes]  # destination node -> encrypted shares
    seed_commitment: bytes  # BLAKE2b of the self-mask seed, checks its reconstruction


@dataclass(frozen=True)
class MaskedUpload:
    vector: Vector
    mask_peers: tuple[int, ...]  # neighbours whose pairwise masks are in ``vector``
    rejected: tuple[str, ...]  # why some received shares were refused


@dataclass(frozen=True)
class UnmaskShares:
    seed: dict[int, bytes]  # survivor -> my share of its self-mask seed
    mask_key: dict[int, bytes]  # dropped node -> my share of its mask key


def seed_commitment(seed: bytes, session: bytes) -> bytes:
    return hashlib.blake2b(seed, key=session, digest_size=32, person=b"fedmarket-seed").digest()


@dataclass
class DeviceSession:
    node: int
    params: RoundParams
    cipher_sk: bytes
    mask_sk: bytes
    stage: Stage = Stage.SETUP
    seed: bytes = b""
    peers: dict[int, PublicKeys] = field(default_factory=dict)  # neighbours and myself
    seed_shares: dict[int, bytes] = field(default_factory=dict)  # owner -> share I hold
    key_shares: dict[int, bytes] = field(default_factory=dict)
    # agreed in share_keys, so that the mask stage (after training) only runs ChaCha20
    box_keys: dict[int, bytes] = field(default_factory=dict)  # peer -> crypto_box key
    pair_keys: dict[int, bytes] = field(default_factory=dict)  # peer -> pairwise mask key
    mask_peers: tuple[int, ...] = ()
    # within the mask stage only (one message): accept_shares, then the device trains, then
    # mask_update; never stored between messages
    shares_accepted: bool = False
    rejected: list[str] = field(default_factory=list)

    @classmethod
    def setup(cls, node: int, params: RoundParams) -> tuple[DeviceSession, PublicKeys]:
        """Stage 0: fresh key pairs for this round."""
        session = cls(node, params, new_private_key(), new_private_key())
        return session, session.public_keys

    @property
    def public_keys(self) -> PublicKeys:
        return PublicKeys(public_key(self.cipher_sk), public_key(self.mask_sk))

    def share_keys(self, peer_keys: Mapping[int, PublicKeys]) -> ShareUpload:
        """Stage 1: Shamir-share the seed and mask key among the neighbours, encrypted to each."""
        self._advance(Stage.SHARE_KEYS)
        if not all(0 <= p < NODE_ID_LIMIT for p in peer_keys):
            raise ProtocolViolation("share_keys: node ids must be unsigned 64-bit integers")
        if peer_keys.get(self.node) != self.public_keys:
            raise ProtocolViolation("share_keys: my own public keys are missing or altered")
        others = len(peer_keys) - 1
        if others > self.params.neighbours:
            raise ProtocolViolation(
                f"share_keys: {others} neighbours, more than k = {self.params.neighbours}"
            )
        if others + 1 < self.params.threshold:
            raise ProtocolViolation(
                f"share_keys: {others} neighbours left, the threshold {self.params.threshold} "
                "needs at least threshold - 1"
            )
        keys = [k for pk in peer_keys.values() for k in (pk.cipher, pk.mask)]
        if any(len(k) != KEY_BYTES for k in keys) or len(set(keys)) != len(keys):
            raise ProtocolViolation("share_keys: public keys must be 32 bytes and all distinct")
        self.peers = dict(peer_keys)
        session = self.params.session
        for peer, public in self.peers.items():
            if peer != self.node:
                self.box_keys[peer] = agree(self.cipher_sk, public.cipher)
                self.pair_keys[peer] = mask_key(agree(self.mask_sk, public.mask), session, "pair")
        self.seed = os.urandom(shamir.SECRET_BYTES)
        holders = sorted(peer_keys)
        t = self.params.threshold
        seed_shares = shamir.split(self.seed, t, len(holders))
        key_shares = shamir.split(self.mask_sk, t, len(holders))
        ciphertexts: dict[int, bytes] = {}
        for holder, seed_share, key_share in zip(holders, seed_shares, key_shares, strict=True):
            if holder == self.node:
                self.seed_shares[holder], self.key_shares[holder] = seed_share, key_share
                continue
            plaintext = _pack(self.node, holder, self.params.session) + seed_share + key_share
            ciphertexts[holder] = bytes(SecretBox(self.box_keys[holder]).encrypt(plaintext))
        return ShareUpload(ciphertexts, seed_commitment(self.seed, self.params.session))

    def mask(self, ciphertexts: Mapping[int, bytes], encoded: Encoded) -> MaskedUpload:
        """Stage 2: keep the shares sent to me, then mask my encoded update."""
        self.accept_shares(ciphertexts)
        return self.mask_update(encoded)

    def accept_shares(self, ciphertexts: Mapping[int, bytes]) -> None:
        """Stage 2, first half: keep the shares sent to me; refuse the stage if too few are
        valid. A device checks this before it trains, so that a round it must refuse anyway
        costs it no privacy."""
        self._advance(Stage.MASK)
        self.rejected, accepted = [], []
        for src, ciphertext in ciphertexts.items():
            reason = self._receive_shares(src, ciphertext)
            if reason:
                self.rejected.append(f"shares from node {src}: {reason}")
            else:
                accepted.append(src)
        if len(accepted) + 1 < self.params.threshold:
            raise ProtocolViolation(
                f"mask: valid shares from {len(accepted)} neighbours; the threshold "
                f"{self.params.threshold} needs at least threshold - 1"
            )
        self.mask_peers = tuple(sorted(accepted))
        self.shares_accepted = True

    def mask_update(self, encoded: Encoded) -> MaskedUpload:
        """Stage 2, second half: my encoded update plus my self mask and the pairwise masks
        of the neighbours whose shares I accepted."""
        if self.stage != Stage.MASK or not self.shares_accepted:
            raise ProtocolViolation("mask: no shares accepted in this round")
        self.shares_accepted = False  # one masked upload per round
        session = self.params.session
        pair_keys = {j: self.pair_keys[j] for j in self.mask_peers}
        vector = encoded.values.copy()
        apply_masks(
            vector,
            add=[mask_key(self.seed, session, "self")]
            + [k for j, k in pair_keys.items() if self.node < j],
            subtract=[k for j, k in pair_keys.items() if self.node > j],
        )
        return MaskedUpload(vector, self.mask_peers, tuple(self.rejected))

    def unmask(self, survivors: Sequence[int], dropped: Sequence[int]) -> UnmaskShares:
        """Stage 3: a seed share for each survivor, a mask-key share for each dropped node.

        Never both for one node: that would let the server strip all masks from its vector.
        """
        self._advance(Stage.UNMASK)
        alive, gone = set(survivors), set(dropped)
        if len(alive) != len(survivors) or len(gone) != len(dropped):
            raise ProtocolViolation("unmask: a node is listed twice")
        if alive & gone:
            raise ProtocolViolation("unmask: a node is listed as both survivor and dropped")
        if self.node not in alive:
            raise ProtocolViolation("unmask: I sent my vector but am not listed as a survivor")
        known = set(self.seed_shares)
        if not (alive | gone) <= known:
            unknown = sorted((alive | gone) - known)
            raise ProtocolViolation(
                f"unmask: asked about nodes whose shares I do not hold: {unknown}"
            )
        if len(alive) < self.params.threshold:
            raise ProtocolViolation(
                f"unmask: {len(alive)} surviving neighbours, below the threshold "
                f"{self.params.threshold}"
            )
        return UnmaskShares(
            seed={n: self.seed_shares[n] for n in sorted(alive)},
            mask_key={n: self.key_shares[n] for n in sorted(gone)},
        )

    def _advance(self, stage: Stage) -> None:
        if NEXT_STAGE.get(self.stage) != stage:
            raise ProtocolViolation(
                f"stage {stage.value} cannot follow {self.stage.value} in this round"
            )
        self.stage = stage

    def _receive_shares(self, src: int, ciphertext: bytes) -> str:
        """Store the shares ``src`` sent me; return why they were refused, or ''."""
        if src == self.node or src not in self.peers:
            return "not one of my neighbours"
        if src in self.seed_shares:
            return "sent twice"
        if len(ciphertext) != CIPHERTEXT_BYTES:
            return f"ciphertext of {len(ciphertext)} bytes, expected {CIPHERTEXT_BYTES}"
        try:
            plaintext = SecretBox(self.box_keys[src]).decrypt(ciphertext)
        except CryptoError:
            return "ciphertext failed authentication"
        if plaintext[:32] != _pack(src, self.node, self.params.session):
            return "addressed to another node or round"
        body = plaintext[32:]
        self.seed_shares[src] = body[: shamir.SHARE_BYTES]
        self.key_shares[src] = body[shamir.SHARE_BYTES :]
        return ""

    def to_record(self) -> dict[str, ConfigRecordValues]:
        owners, peers = sorted(self.seed_shares), sorted(self.peers)
        params: dict[str, int | float | bytes] = self.params.to_record()
        return {
            **{f"param.{k}": v for k, v in params.items()},
            "node": self.node,
            "stage": self.stage.value,
            "cipher_sk": self.cipher_sk,
            "mask_sk": self.mask_sk,
            "seed": self.seed,
            "peers": peers,
            "peer_cipher": [self.peers[p].cipher for p in peers],
            "peer_mask": [self.peers[p].mask for p in peers],
            "box_keys": [self.box_keys[p] for p in peers if p != self.node],
            "pair_keys": [self.pair_keys[p] for p in peers if p != self.node],
            "owners": owners,
            "seed_shares": [self.seed_shares[o] for o in owners],
            "key_shares": [self.key_shares[o] for o in owners],
            "mask_peers": list(self.mask_peers),
        }

    @classmethod
    def from_record(cls, record: Mapping[str, object]) -> DeviceSession:
        """Rebuild the session this device stored itself (checked for shape all the same)."""
        try:
            params = {k[6:]: v for k, v in record.items() if k.startswith("param.")}
            peers, owners = _list(record, "peers", int), _list(record, "owners", int)
            ciphers, masks = _list(record, "peer_cipher", bytes), _list(record, "peer_mask", bytes)
            node = _one(record, "node", int)
            others = [p for p in peers if p != node]
            box_keys = dict(zip(others, _list(record, "box_keys", bytes), strict=True))
            pair_keys = dict(zip(others, _list(record, "pair_keys", bytes), strict=True))
            seed_shares = _list(record, "seed_shares", bytes)
            key_shares = _list(record, "key_shares", bytes)
            return cls(
                node=node,
                params=RoundParams.from_record(params),
                cipher_sk=_one(record, "cipher_sk", bytes),
                mask_sk=_one(record, "mask_sk", bytes),
                stage=Stage(_one(record, "stage", str)),
                seed=_one(record, "seed", bytes),
                peers={p: PublicKeys(c, m) for p, c, m in zip(peers, ciphers, masks, strict=True)},
                seed_shares=dict(zip(owners, seed_shares, strict=True)),
                key_shares=dict(zip(owners, key_shares, strict=True)),
                box_keys=box_keys,
                pair_keys=pair_keys,
                mask_peers=tuple(_list(record, "mask_peers", int)),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ProtocolViolation(f"stored secagg session is unreadable: {exc}") from None


def _pack(src: int, dst: int, session: bytes) -> bytes:
    return src.to_bytes(8, "big") + dst.to_bytes(8, "big") + session


def _one(record: Mapping[str, object], key: str, kind: type[T]) -> T:
    value = record[key]
    if not isinstance(value, kind):
        raise TypeError(f"{key} must be {kind.__name__}")
    return value


def _list(record: Mapping[str, object], key: str, kind: type[T]) -> list[T]:
    value = record[key]
    if not isinstance(value, list) or not all(isinstance(v, kind) for v in value):
        raise TypeError(f"{key} must be a list of {kind.__name__}")
    return value
