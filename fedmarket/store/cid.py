"""CIDs: ``multiformats`` parses and prints them; :class:`BlockRef` names blocks on hot paths.

``multiformats`` checks types at run time and costs ~0.3 ms per CID, as much as hashing a
256 KiB block, so the DAG code works on :class:`BlockRef` (codec + sha2-256 digest), whose
binary form is a constant prefix derived once from ``multiformats`` plus the digest.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from multiformats import CID, multihash

from fedmarket.exceptions import IntegrityError, InvalidInput
from fedmarket.types import Cid

RAW = "raw"
DAG_PB = "dag-pb"
_SHA2_256 = "sha2-256"
_DIGEST_BYTES = 32
_PREFIX = {
    codec: bytes(CID("base32", 1, codec, multihash.wrap(bytes(_DIGEST_BYTES), _SHA2_256)))[
        :-_DIGEST_BYTES
    ]
    for codec in (RAW, DAG_PB)
}


def parse_cid(text: str) -> CID:
    """Parse a CID given by a user or a peer; raise :class:`InvalidInput` naming the problem."""
    try:
        cid = CID.decode(text.strip())
    except (ValueError, KeyError) as exc:
        raise InvalidInput(
            f"{text!r} is not a CID ({exc}); pass the CID printed by `fedmarket store add`, "
            "e.g. bafkrei… or bafybei…"
        ) from None
    if cid.codec.name not in _PREFIX:
        raise InvalidInput(
            f"CID {text} has codec {cid.codec.name}; only files ({RAW} or {DAG_PB} UnixFS) "
            "can be stored and fetched"
        )
    if cid.hashfun.name != _SHA2_256:
        raise InvalidInput(f"CID {text} uses {cid.hashfun.name}; only {_SHA2_256} is supported")
    return cid


def canonical(cid: CID) -> Cid:
    """The text form we print and store: CIDv1 in base32, as ``ipfs add --cid-version=1`` prints."""
    if cid.version == 0:
        cid = cid.set(version=1)
    return Cid(cid.encode("base32"))


@dataclass(frozen=True, slots=True)
class BlockRef:
    """A block's address: its codec (raw or dag-pb) and sha2-256 digest."""

    codec: str
    digest: bytes

    @classmethod
    def of(cls, codec: str, block: bytes | memoryview) -> BlockRef:
        return cls(codec, hashlib.sha256(block).digest())

    @classmethod
    def from_cid(cls, cid: CID) -> BlockRef:
        return cls(cid.codec.name, bytes(cid.raw_digest))

    @classmethod
    def from_binary(cls, data: bytes) -> BlockRef:
        """Decode a binary CID as found in dag-pb links (CIDv0 or v1)."""
        for codec, prefix in _PREFIX.items():
            if len(data) == len(prefix) + _DIGEST_BYTES and data.startswith(prefix):
                return cls(codec, data[len(prefix) :])
        return cls.from_cid(parse_cid_bytes(data))

    @property
    def binary(self) -> bytes:
        return _PREFIX[self.codec] + self.digest

    def to_cid(self) -> CID:
        return CID.decode(self.binary)

    def __str__(self) -> str:
        return canonical(self.to_cid())

    def check(self, block: bytes, *, root: BlockRef | None = None) -> None:
        """Raise :class:`IntegrityError` naming this CID unless ``block`` hashes to it."""
        if hashlib.sha256(block).digest() != self.digest:
            part = f" of {root}" if root is not None and root != self else ""
            raise IntegrityError(
                f"block {self}{part} is corrupt: its {len(block)} stored bytes do not hash to "
                "its CID; delete the store's copy and add or fetch the content again"
            )


def parse_cid_bytes(data: bytes) -> CID:
    try:
        cid = CID.decode(data)
    except (ValueError, KeyError) as exc:
        raise IntegrityError(f"a dag-pb link holds an invalid CID ({exc})") from None
    if cid.codec.name not in _PREFIX or cid.hashfun.name != _SHA2_256:
        raise InvalidInput(
            f"a link points to {cid.codec.name}/{cid.hashfun.name}; only raw or dag-pb "
            f"blocks hashed with {_SHA2_256} can be read"
        )
    return cid
