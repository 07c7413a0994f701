"""Who is in a SecAgg+ round, and the graph seed nobody can choose.

Each device announces its round keys, signed with its node key, together with a commitment to
a fresh 32-byte nonce. The server returns the roster (every signed announcement, sorted by
node) to every member; only then do members reveal their nonces. The graph seed hashes the
roster and every member's nonce, so it is fixed only after the roster is, and any honest
member's nonce makes it uniformly random: neither the server nor its colluders can grind it.
A member whose nonce is missing voids the draw; a device takes part in at most
``Assumptions.draws`` draws that end without its masked upload per window
(:data:`fedmarket.secagg.mod.DRAW_WINDOW_S`), so restarting buys a dishonest server at most
log2(draws) bits per window.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property

from fedmarket.exceptions import ProtocolViolation
from fedmarket.secagg.keys import (
    KEY_BYTES,
    NODE_ID_LIMIT,
    SIGNATURE_BYTES,
    PublicKeys,
    valid_cipher_key,
    verify,
)

NONCE_BYTES = 32
ANNOUNCE = b"fedmarket-secagg-announce-v1"


def digest(*parts: bytes, person: bytes) -> bytes:
    """BLAKE2b-256 of ``parts``, each prefixed with its length (unambiguous framing)."""
    h = hashlib.blake2b(digest_size=32, person=person)
    for part in parts:
        h.update(len(part).to_bytes(8, "big"))
        h.update(part)
    return h.digest()


def nonce_commitment(nonce: bytes, session: bytes) -> bytes:
    return digest(session, nonce, person=b"fedmarket-nonce")


@dataclass(frozen=True)
class Announcement:
    """One device's round keys, signed with its node key (``signature`` over :meth:`payload`)."""

    session: bytes
    node: int
    node_key: bytes  # Ed25519 verify key: who this device is across rounds
    keys: PublicKeys
    nonce_commitment: bytes
    signature: bytes

    def payload(self) -> bytes:
        return (
            self.session
            + self.node.to_bytes(8, "big")
            + self.node_key
            + self.keys.cipher
            + self.keys.mask
            + self.nonce_commitment
        )

    def problem(self, session: bytes) -> str:
        """Why this announcement is unusable in round ``session``, or ''."""
        if self.session != session:
            return "announcement of another round"
        if not 0 <= self.node < NODE_ID_LIMIT:
            return "node id is not an unsigned 64-bit integer"
        sizes = (self.node_key, self.keys.cipher, self.keys.mask, self.nonce_commitment)
        if any(len(b) != KEY_BYTES for b in sizes) or len(self.signature) != SIGNATURE_BYTES:
            return "announcement fields have the wrong sizes"
        if len({self.node_key, self.keys.cipher, self.keys.mask}) != 3:
            return "node, cipher and mask keys must be three different keys"
        if not valid_cipher_key(self.keys.cipher):
            return "cipher key is a small-order X25519 point"
        if not verify(self.node_key, ANNOUNCE, self.payload(), self.signature):
            return "announcement signature does not verify under its node key"
        return ""

    def to_bytes(self) -> bytes:
        return self.payload() + self.signature

    @classmethod
    def from_bytes(cls, data: bytes) -> Announcement:
        if len(data) != 16 + 8 + 4 * KEY_BYTES + SIGNATURE_BYTES:
            raise ProtocolViolation(f"an announcement is {16 + 8 + 4 * 32 + 64} bytes")
        node = int.from_bytes(data[16:24], "big")
        k = [data[24 + 32 * i : 56 + 32 * i] for i in range(4)]
        return cls(data[:16], node, k[0], PublicKeys(k[1], k[2]), k[3], data[152:])


@dataclass(frozen=True)
class Roster:
    """Every announcement of a round, sorted by node; ``digest`` names it."""

    members: tuple[Announcement, ...]

    @classmethod
    def of(cls, announcements: Iterable[Announcement]) -> Roster:
        members = tuple(sorted(announcements, key=lambda a: a.node))
        nodes = [a.node for a in members]
        keys = [k for a in members for k in (a.node_key, a.keys.cipher, a.keys.mask)]
        if len(set(nodes)) != len(nodes):
            raise ProtocolViolation("the roster lists a node twice")
        if len(set(keys)) != len(keys):
            raise ProtocolViolation("two roster entries share a key")
        return cls(members)

    @property
    def nodes(self) -> tuple[int, ...]:
        return tuple(a.node for a in self.members)

    @cached_property
    def digest(self) -> bytes:
        return digest(*(a.to_bytes() for a in self.members), person=b"fedmarket-roster")

    def member(self, node: int) -> Announcement:
        for a in self.members:
            if a.node == node:
                return a
        raise ProtocolViolation(f"node {node} is not in the roster")

    def by_node(self) -> dict[int, Announcement]:
        return {a.node: a for a in self.members}

    def graph_seed(self, nonces: Mapping[int, bytes]) -> bytes:
        """The 32-byte seed of this round's graph, from every member's revealed nonce.

        Raises ProtocolViolation if a member's nonce is missing or does not open its
        commitment.
        """
        ordered: list[bytes] = []
        for a in self.members:
            nonce = nonces.get(a.node)
            if nonce is None:
                raise ProtocolViolation(f"node {a.node} revealed no nonce: the draw is void")
            if nonce_commitment(nonce, a.session) != a.nonce_commitment:
                raise ProtocolViolation(f"node {a.node}'s nonce does not open its commitment")
            ordered.append(nonce)
        return digest(self.digest, *ordered, person=b"fedmarket-graph")


def encode_roster(roster: Roster) -> list[bytes]:
    return [a.to_bytes() for a in roster.members]


def decode_roster(items: Sequence[bytes]) -> Roster:
    return Roster.of(Announcement.from_bytes(b) for b in items)
