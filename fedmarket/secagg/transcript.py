"""The transcript of a SecAgg+ round: what was summed, as the survivors signed it.

Every survivor signs, in the consistency stage, the dealers it masked with, the survivor set
and the digest of every survivor's masked upload, after checking that its own upload is
there. The server adds the digest of the unmasked sum and publishes the transcript with the
round's evidence (committed on chain by the aggregator in paid rounds), so any device can check
that its upload is in the sum and that the server did not show it a different round.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from fedmarket.exceptions import DataError
from fedmarket.secagg.keys import verify
from fedmarket.secagg.roster import digest

SURVIVORS = b"fedmarket-secagg-survivors-v2"


def _node_id(text: object) -> int:
    """A node id as transcripts write it: canonical decimal text of an unsigned 64-bit int."""
    if not isinstance(text, str) or not text.isdigit() or str(int(text)) != text:
        raise ValueError(f"node id {text!r} is not canonical decimal text")
    value = int(text)
    if value >= 1 << 64:
        raise ValueError(f"node id {text} is not an unsigned 64-bit integer")
    return value


def upload_digest(upload: NDArray[np.uint32]) -> bytes:
    """sha256 of a masked upload, as uint32 little-endian words (what receipts sign too)."""
    return hashlib.sha256(np.ascontiguousarray(upload, dtype="<u4").tobytes()).digest()


def dealers_payload(session: bytes, roster_digest: bytes, dealers: Sequence[int]) -> bytes:
    """What a device signs with its masked vector: the dealers it masked with."""
    ids = b"".join(n.to_bytes(8, "big") for n in sorted(dealers))
    return session + roster_digest + digest(ids, person=b"fedmarket-dealt")


def survivors_payload(dealers: bytes, survivors: Sequence[int], uploads: Sequence[bytes]) -> bytes:
    """What every survivor signs in the consistency stage: the dealers' payload, the survivors
    (sorted) and their uploads' digests (in the survivors' order)."""
    ids = b"".join(n.to_bytes(8, "big") for n in survivors)
    return dealers + digest(ids, *uploads, person=b"fedmarket-alive")


@dataclass(frozen=True)
class Transcript:
    """One round's survivors, their uploads' digests and signatures, and the sum's digest."""

    session: bytes
    roster_digest: bytes
    dealers: tuple[int, ...]
    survivors: tuple[int, ...]
    uploads: tuple[bytes, ...]  # sha256 of each survivor's masked vector
    node_keys: dict[int, bytes]  # survivor -> node key (from the roster)
    signatures: dict[int, bytes]  # survivor -> its consistency signature
    aggregate: bytes  # sha256 of the unmasked sum's words

    def payload(self) -> bytes:
        dealt = dealers_payload(self.session, self.roster_digest, self.dealers)
        return survivors_payload(dealt, self.survivors, self.uploads)

    def problems(self) -> list[str]:
        """Why this transcript does not hold together (empty: it does)."""
        found = []
        if list(self.survivors) != sorted(set(self.survivors)):
            found.append("survivors are not sorted and distinct")
        if len(self.uploads) != len(self.survivors):
            found.append("one upload digest per survivor is required")
        payload = self.payload()
        for node, signature in sorted(self.signatures.items()):
            key = self.node_keys.get(node)
            if node not in self.survivors or key is None:
                found.append(f"node {node} signed but is not a survivor with a node key")
            elif not verify(key, SURVIVORS, payload, signature):
                found.append(f"node {node}'s signature does not verify")
        return found

    def includes(self, node_key: bytes, upload: bytes) -> bool:
        """Whether this (verifying) transcript sums ``upload`` as the device with ``node_key``'s
        (a survivor that dropped before signing is summed, and paid, all the same)."""
        nodes = [n for n, k in self.node_keys.items() if k == node_key]
        if len(nodes) != 1 or self.problems():
            return False
        return self.uploads[self.survivors.index(nodes[0])] == upload

    def to_json(self) -> dict[str, Any]:
        return {
            "session": self.session.hex(),
            "roster_digest": self.roster_digest.hex(),
            "dealers": [str(n) for n in self.dealers],
            "survivors": [
                {
                    "node": str(n),  # 64-bit ids exceed canonical JSON's integer range
                    "node_key": self.node_keys[n].hex(),
                    "upload": u.hex(),
                    "signature": self.signatures[n].hex() if n in self.signatures else None,
                }
                for n, u in zip(self.survivors, self.uploads, strict=True)
            ],
            "aggregate": self.aggregate.hex(),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Transcript:
        try:
            rows = data["survivors"]
            survivors = tuple(_node_id(r["node"]) for r in rows)
            return cls(
                session=bytes.fromhex(data["session"]),
                roster_digest=bytes.fromhex(data["roster_digest"]),
                dealers=tuple(_node_id(n) for n in data["dealers"]),
                survivors=survivors,
                uploads=tuple(bytes.fromhex(r["upload"]) for r in rows),
                node_keys={
                    n: bytes.fromhex(r["node_key"]) for n, r in zip(survivors, rows, strict=True)
                },
                signatures={
                    n: bytes.fromhex(r["signature"])
                    for n, r in zip(survivors, rows, strict=True)
                    if r["signature"] is not None
                },
                aggregate=bytes.fromhex(data["aggregate"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise DataError(f"not a SecAgg+ transcript: {exc}") from None
