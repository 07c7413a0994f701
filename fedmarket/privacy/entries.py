"""Signed, hash-chained entries: the tamper-evident form of a device's privacy ledger.

Every entry names its position (``seq``, from 0), the sha256 digest of the entry before it
(``prev``; 64 zeros for the genesis entry) and carries a signature by the device's identity key
(secp256k1, EIP-191 personal message over ``DOMAIN + digest``). The digest is sha256 of the
entry's canonical JSON (RFC 8785) without its signature, so editing, dropping, inserting or
reordering any entry breaks the link to the next one, and the last entry's signature covers the
whole chain before it. :func:`verify_chain` checks every link, the genesis identity and the
signatures; it raises :class:`~fedmarket.exceptions.LedgerCorrupted` naming the file and the
first bad entry.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

import rfc8785
from eth_account import Account
from eth_account.messages import SignableMessage, encode_defunct
from eth_account.signers.local import LocalAccount

from fedmarket.exceptions import LedgerCorrupted

ENTRY_FORMAT = "fedmarket.privacy-ledger/2"
DOMAIN = b"fedmarket.privacy-ledger/2 entry:"  # a ledger signature signs nothing else
GENESIS_PREV = "00" * 32
EntryKind = Literal["genesis", "reserve", "settle", "new-data", "cap"]
RESTORE = (
    "restore the ledger and its .head file from a backup; never edit, trim or delete them "
    "(a missing or altered ledger is refused, never read as empty)"
)


@dataclass(frozen=True)
class SignedEntry:
    """One ledger entry; ``body`` holds its kind's fields as JSON values."""

    seq: int
    prev: str  # hex sha256 digest of the previous entry
    kind: EntryKind
    at: float  # unix seconds when it was written
    body: Mapping[str, Any]
    signature: str  # hex, 65 bytes

    def unsigned(self) -> dict[str, Any]:
        return {
            "format": ENTRY_FORMAT,
            "seq": self.seq,
            "prev": self.prev,
            "kind": self.kind,
            "at": self.at,
            "body": dict(self.body),
        }

    @functools.cached_property
    def digest(self) -> str:
        """Hex sha256 of the canonical JSON of everything but the signature."""
        return hashlib.sha256(rfc8785.dumps(self.unsigned())).hexdigest()

    def to_json(self) -> dict[str, Any]:
        return {**self.unsigned(), "signature": self.signature}

    @classmethod
    def from_json(cls, item: object, where: str) -> SignedEntry:
        """Parse one stored entry; a wrong shape raises :class:`LedgerCorrupted`."""
        if not isinstance(item, dict):
            raise LedgerCorrupted(f"{where}: not a ledger entry; {RESTORE}")
        try:
            seq, prev, kind, at = item["seq"], item["prev"], item["kind"], item["at"]
            body, signature, form = item["body"], item["signature"], item["format"]
        except KeyError as exc:
            raise LedgerCorrupted(f"{where}: field {exc} is missing; {RESTORE}") from None
        if (
            form != ENTRY_FORMAT
            or isinstance(seq, bool)
            or not isinstance(seq, int)
            or not isinstance(prev, str)
            or kind not in get_args(EntryKind)
            or isinstance(at, bool)
            or not isinstance(at, int | float)
            or not isinstance(body, dict)
            or not isinstance(signature, str)
            or set(item) != {"format", "seq", "prev", "kind", "at", "body", "signature"}
        ):
            raise LedgerCorrupted(f"{where}: malformed ledger entry; {RESTORE}")
        return cls(seq, prev, kind, float(at), body, signature)


def seal(
    identity: LocalAccount,
    *,
    previous: SignedEntry | None,
    kind: EntryKind,
    at: float,
    body: Mapping[str, Any],
) -> SignedEntry:
    """The entry after ``previous`` (None: the genesis entry), signed by ``identity``."""
    seq, prev = (0, GENESIS_PREV) if previous is None else (previous.seq + 1, previous.digest)
    draft = SignedEntry(seq, prev, kind, at, dict(body), "")
    signed = identity.sign_message(_message(draft.digest))
    return SignedEntry(seq, prev, kind, at, dict(body), bytes(signed.signature).hex())


def verify_chain(
    entries: Sequence[SignedEntry], identity: str, path: Path, *, all_signatures: bool
) -> None:
    """Raise :class:`LedgerCorrupted` unless ``entries`` form ``identity``'s chain.

    Every position, link and the genesis entry's identity are checked. With ``all_signatures``
    every entry's signature is recovered (about 8 ms each, pure-Python secp256k1); without, only
    the last one: it signs a digest that commits, link by link, to every earlier entry, so it
    authenticates the same history (what is left unchecked are signature bytes of earlier
    entries, which carry no ε).
    """
    if not entries:
        raise LedgerCorrupted(f"{path}: the ledger has no entries; {RESTORE}")
    if entries[0].kind != "genesis" or entries[0].body.get("identity") != identity:
        raise LedgerCorrupted(
            f"{path}: entry 0 is not the genesis of identity {identity} (another device's "
            f"ledger, or an edited one); {RESTORE}"
        )
    previous: SignedEntry | None = None
    for position, entry in enumerate(entries):
        where = f"{path}: entry {position}"
        if entry.seq != position:
            raise LedgerCorrupted(
                f"{where} says seq {entry.seq}: entries were dropped, added or reordered; {RESTORE}"
            )
        expected = GENESIS_PREV if previous is None else previous.digest
        if entry.prev != expected:
            raise LedgerCorrupted(
                f"{where} does not link to the entry before it: that entry or this one was "
                f"edited, or entries were dropped or reordered; {RESTORE}"
            )
        if position > 0 and entry.kind == "genesis":
            raise LedgerCorrupted(f"{where} is a second genesis entry; {RESTORE}")
        if all_signatures or position == len(entries) - 1:
            check_signature(entry, identity, where)
        previous = entry


def check_signature(entry: SignedEntry, identity: str, where: str) -> None:
    try:
        signer = Account.recover_message(
            _message(entry.digest), signature=bytes.fromhex(entry.signature)
        )
    except Exception:  # eth_keys raises several types for malformed signatures
        signer = None
    if signer != identity:
        raise LedgerCorrupted(
            f"{where} is not signed by identity {identity}: it was edited or written by "
            f"another key; {RESTORE}"
        )


def _message(digest: str) -> SignableMessage:
    return encode_defunct(primitive=DOMAIN + bytes.fromhex(digest))
