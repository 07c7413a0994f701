"""Issue 16's must-hold property: dropouts at every stage and up to t - 1 malicious devices
that deviate at random end in the exact sum of the survivors' inputs or a clean abort.

A malicious device here runs the honest :class:`DeviceSession` (its secrets are captured, as
a real malicious device knows them) and rewrites what it sends through ``aggregate_locally``'s
``tamper`` hook, from a menu of deviations covering every stage (:data:`MENU`). The only
accepted outcomes are:

- a round whose total is, mod 2^32, the sum over its survivors of each one's effective input
  (an honest device's encoding; a malicious one's encoding plus whatever its deviations added),
  with every honest device that stayed online a survivor, and whose decoding fails only if a
  malicious survivor's effective input is out of range;
- :class:`SecAggAborted`.

Anything else escaping the round (a server crash) fails the test.
"""

from __future__ import annotations

import dataclasses
import os
import random
import re
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from itertools import combinations
from typing import Any
from unittest import mock

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from nacl.bindings import crypto_core_ed25519_scalar_add
from nacl.exceptions import CryptoError
from nacl.secret import SecretBox
from nacl.signing import SigningKey
from numpy.typing import NDArray

from fedmarket.exceptions import ProtocolViolation, SecAggAborted
from fedmarket.secagg import local, vss
from fedmarket.secagg.codec import Encoded, Vector, decode
from fedmarket.secagg.config import RoundParams, SecAggConfig
from fedmarket.secagg.device import (
    MASKED_WITH,
    DeviceSession,
    ShareUpload,
    Stage,
    UnmaskShares,
    share_digest,
)
from fedmarket.secagg.keys import PublicKeys, mask_public, sign
from fedmarket.secagg.local import Dropouts, LocalDevices, LocalRound, aggregate_locally
from fedmarket.secagg.masks import mask_key, stream
from fedmarket.secagg.parameters import Assumptions
from fedmarket.secagg.roster import ANNOUNCE, Announcement
from fedmarket.secagg.server import Aggregation
from fedmarket.secagg.transcript import (
    SURVIVORS,
    dealers_payload,
    survivors_payload,
    upload_digest,
)

LENGTH = 16
WORD = 1 << 32

MENU: dict[Stage, tuple[str, ...]] = {
    Stage.SETUP: (
        "bad_signature",  # 64 random bytes
        "truncated",  # a 31-byte nonce commitment
        "other_node",  # another node's announcement (or mine, claiming its id)
        "other_session",  # mine, re-signed for another round
        "replay_previous",  # my announcement of the previous draw
        "bad_mask_key",  # not an Ed25519 point, signed
        "low_order_cipher",  # a small-order X25519 key, signed, and carried on with
        "reused_key",  # another node's cipher key, signed
    ),
    Stage.ROSTER: ("wrong_nonce", "truncated_nonce", "replay_nonce"),
    Stage.SHARE_KEYS: (
        "garbage_some",  # random ciphertexts for some holders
        "garbage_all",
        "truncated_ciphertext",
        "swapped_holders",  # two holders' ciphertexts exchanged
        "missing_holder",
        "extra_holder",  # a ciphertext for a node that is not a neighbour
        "wrong_seed_commitments",  # t random valid points
        "garbage_seed_commitments",  # t * 32 random bytes
        "wrong_key_commitments",  # the mask key first, then random points
        "foreign_mask_key",  # a first key commitment that is not my mask key
        "short_commitments",
        "wrong_digests",  # random digests for some holders
        "missing_digest",
        "redeal_seed",  # a valid dealing of another seed than the one I mask with
        "replay_upload",  # another dealer's upload
    ),
    Stage.MASK: (
        "in_range_offset",  # another in-range input
        "out_of_range_word",  # + 2^31 on one word
        "random_vector",
        "wrong_length",
        "wrong_dtype",
        "big_endian",  # the same words as '>u4'
        "strided",  # the same words, not contiguous
        "bad_vouch",
        "vouch_other_dealers",  # a valid signature on another dealer list
        "false_complaints",  # about honest neighbours
        "foreign_complaints",  # about non-neighbours (or myself)
        "replay_vector",  # another device's masked vector
        "replay_vouch",  # another device's signature on the dealers
    ),
    Stage.CONSISTENCY: ("bad_signature", "truncated", "other_set", "replay"),
    Stage.UNMASK: (
        "random_shares",
        "other_owner",  # one owner's share given as another's
        "shifted",  # share + 1 mod L
        "non_canonical",  # 32 bytes of 0xff
        "unheld_owner",  # a seed share for a node I do not hold or that dropped
        "both_secrets",  # a mask-key share of a survivor too
        "withhold_some",
        "withhold_all",
        "false_pair",  # random pair keys with dropped neighbours
        "foreign_pair",  # a pair key with a surviving neighbour
        "bad_length",
        "replay",  # another holder's answer
    ),
}
STAGES = list(Stage)
DEVIATIONS = [(stage, kind) for stage, kinds in MENU.items() for kind in kinds]


def params_for(n: int) -> RoundParams:
    if n < 6:  # no k, t hold below 6 devices once one may collude
        return SecAggConfig(assumptions=Assumptions(corrupt_fraction=0.0)).for_cohort(n)
    return SecAggConfig().for_cohort(n)


def encodings(nodes: list[int], params: RoundParams, seed: int) -> dict[int, Encoded]:
    rng = np.random.default_rng(seed)
    top = params.levels // len(nodes)
    return {n: Encoded(rng.integers(0, top + 1, LENGTH, dtype=np.uint32), 0.0) for n in nodes}


def wrapping(vector: np.ndarray) -> Vector:
    return (vector.astype(np.int64) % WORD).astype(np.uint32)


def self_stream(seed: bytes, session: bytes) -> Vector:
    return stream(mask_key(seed, session, "self"), LENGTH)


def _pack(src: int, dst: int, session: bytes) -> bytes:
    return src.to_bytes(8, "big") + dst.to_bytes(8, "big") + session


@dataclass
class Adversary:
    """The malicious devices: their deviations, their captured sessions, what they changed."""

    plans: dict[int, list[tuple[Stage, str]]]
    devices: LocalDevices
    rng: random.Random
    sessions: dict[tuple[bytes, int], DeviceSession] = field(default_factory=dict)
    current: bytes = b""
    seen: dict[tuple[bytes, Stage], dict[int, Any]] = field(default_factory=dict)
    announced: dict[int, list[Announcement]] = field(default_factory=dict)
    # session -> node -> what its deviations add to its effective input (mod 2^32)
    added: dict[bytes, dict[int, Vector]] = field(default_factory=dict)
    dealt: dict[tuple[bytes, int], bytes] = field(default_factory=dict)  # re-dealt seeds
    applied: list[str] = field(default_factory=list)
    servers: list[Aggregation] = field(default_factory=list)  # one per draw

    @contextmanager
    def capturing(self) -> Iterator[None]:
        """Run rounds whose device sessions this adversary can read (and, for malicious
        devices, rewrite), keeping each draw's server for the checks."""
        adversary = self

        class Server(Aggregation):
            def __init__(self, params: RoundParams, cohort: Sequence[int], length: int) -> None:
                super().__init__(params, cohort, length)
                adversary.servers.append(self)

        class Captured(DeviceSession):
            @property
            def public_keys(self) -> PublicKeys:
                announced: PublicKeys | None = self.__dict__.get("announced_keys")
                return announced or super().public_keys

            @classmethod
            def setup(
                cls, node: int, params: RoundParams, node_key: SigningKey, policy: Assumptions
            ) -> tuple[DeviceSession, Announcement]:
                session, announcement = super().setup(node, params, node_key, policy)
                adversary.current = params.session
                adversary.sessions[(params.session, node)] = session
                return session, announcement

        with (
            mock.patch.object(local, "DeviceSession", Captured),
            mock.patch.object(local, "Aggregation", Server),
        ):
            yield

    def session(self, node: int) -> DeviceSession:
        return self.sessions[(self.current, node)]

    def add(self, node: int, delta: NDArray[Any]) -> None:
        mine = self.added.setdefault(self.current, {})
        mine[node] = wrapping(mine.get(node, np.zeros(LENGTH, np.uint32)).astype(np.int64) + delta)

    def tamper(self, stage: Stage, node: int, upload: Any) -> Any:
        earlier = self.seen.setdefault((self.current, stage), {})
        honest = upload
        for planned, kind in self.plans.get(node, ()):
            if planned == stage:
                upload = getattr(self, f"_{stage.value}")(kind, node, upload, earlier)
                self.applied.append(f"{stage.value}:{kind}")
        earlier[node] = honest
        if stage == Stage.SETUP:
            self.announced.setdefault(node, []).append(honest)
        return upload

    # --- the deviations, stage by stage --------------------------------------------------

    def _resign(self, node: int, a: Announcement) -> Announcement:
        return dataclasses.replace(a, signature=sign(self.devices.key(node), ANNOUNCE, a.payload()))

    def _setup(self, kind: str, node: int, a: Announcement, earlier: dict[int, Any]) -> Any:
        if kind == "bad_signature":
            return dataclasses.replace(a, signature=self.rng.randbytes(64))
        if kind == "truncated":
            return dataclasses.replace(a, nonce_commitment=a.nonce_commitment[:31])
        if kind == "other_node":
            if earlier:
                return earlier[self.rng.choice(sorted(earlier))]
            return dataclasses.replace(a, node=node + 1)
        if kind == "other_session" or (kind == "replay_previous" and not self.announced.get(node)):
            return self._resign(node, dataclasses.replace(a, session=os.urandom(16)))
        if kind == "replay_previous":
            return self.announced[node][-1]
        if kind == "bad_mask_key":
            return self._resign(
                node, dataclasses.replace(a, keys=PublicKeys(a.keys.cipher, b"\x02" * 32))
            )
        if kind == "low_order_cipher":
            keys = PublicKeys(bytes(32), a.keys.mask)
            self.session(node).__dict__["announced_keys"] = keys  # and it goes on with them
            return self._resign(node, dataclasses.replace(a, keys=keys))
        assert kind == "reused_key"
        cipher = earlier[self.rng.choice(sorted(earlier))].keys.cipher if earlier else a.keys.mask
        return self._resign(node, dataclasses.replace(a, keys=PublicKeys(cipher, a.keys.mask)))

    def _roster(self, kind: str, node: int, nonce: bytes, earlier: dict[int, Any]) -> Any:
        if kind == "wrong_nonce":
            return self.rng.randbytes(32)
        if kind == "truncated_nonce":
            return nonce[:16]
        assert kind == "replay_nonce"
        return earlier[self.rng.choice(sorted(earlier))] if earlier else nonce[::-1]

    def _share_keys(self, kind: str, node: int, up: ShareUpload, earlier: dict[int, Any]) -> Any:
        rng, holders = self.rng, sorted(up.ciphertexts)
        if not holders:
            return up
        t_points = len(up.seed_commitments) // vss.POINT_BYTES
        cts = dict(up.ciphertexts)
        if kind in ("garbage_some", "garbage_all"):
            chosen = (
                holders
                if kind == "garbage_all"
                else rng.sample(holders, rng.randint(1, len(holders)))
            )
            for h in chosen:
                cts[h] = rng.randbytes(len(cts[h]))
            return dataclasses.replace(up, ciphertexts=cts)
        if kind == "truncated_ciphertext":
            h = rng.choice(holders)
            cts[h] = cts[h][:-1]
            return dataclasses.replace(up, ciphertexts=cts)
        if kind == "swapped_holders":
            if len(holders) >= 2:
                a, b = rng.sample(holders, 2)
                cts[a], cts[b] = cts[b], cts[a]
            return dataclasses.replace(up, ciphertexts=cts)
        if kind == "missing_holder":
            del cts[rng.choice(holders)]
            return dataclasses.replace(up, ciphertexts=cts)
        if kind == "extra_holder":
            graph = self.session(node).graph
            members = set(graph.ring) if graph else set()
            others = sorted(members - set(holders) - {node}) or [max(holders) + 1]
            cts[rng.choice(others)] = cts[holders[0]]
            return dataclasses.replace(up, ciphertexts=cts)
        if kind == "wrong_seed_commitments":
            points = b"".join(mask_public(vss.random_scalar()) for _ in range(t_points))
            return dataclasses.replace(up, seed_commitments=points)
        if kind == "garbage_seed_commitments":
            return dataclasses.replace(up, seed_commitments=rng.randbytes(len(up.seed_commitments)))
        if kind == "wrong_key_commitments":
            rest = b"".join(mask_public(vss.random_scalar()) for _ in range(t_points - 1))
            return dataclasses.replace(up, key_commitments=up.key_commitments[:32] + rest)
        if kind == "foreign_mask_key":
            other = mask_public(vss.random_scalar())
            return dataclasses.replace(up, key_commitments=other + up.key_commitments[32:])
        if kind == "short_commitments":
            return dataclasses.replace(up, seed_commitments=up.seed_commitments[:-32])
        if kind == "wrong_digests":
            seed = rng.random() < 0.5
            digests = dict(up.seed_digests if seed else up.key_digests)
            for h in rng.sample(sorted(digests), rng.randint(1, len(digests))):
                digests[h] = rng.randbytes(32)
            if seed:
                return dataclasses.replace(up, seed_digests=digests)
            return dataclasses.replace(up, key_digests=digests)
        if kind == "missing_digest":
            digests = dict(up.seed_digests)
            del digests[rng.choice(sorted(digests))]
            return dataclasses.replace(up, seed_digests=digests)
        if kind == "redeal_seed":
            return self._redeal(node, up, t_points)
        assert kind == "replay_upload"
        return earlier[rng.choice(sorted(earlier))] if earlier else up

    def _redeal(self, node: int, up: ShareUpload, t: int) -> ShareUpload:
        """A valid dealing of a fresh seed s' while I mask with s: the server unmasks s', so my
        effective input gains stream(s) - stream(s')."""
        session = self.session(node)
        sid, graph = session.params.session, session.graph
        assert graph is not None
        holders = graph.holders(node)
        fresh = vss.random_scalar()
        dealing = vss.deal(fresh, t, len(holders))
        cts, digests = {}, {}
        for holder, share in zip(holders, dealing.shares, strict=True):
            digests[holder] = share_digest(sid, node, holder, share)
            if holder == node:
                session.seed_shares[node] = share
                continue
            if holder not in up.ciphertexts:  # an earlier deviation left it out
                continue
            box = SecretBox(session.box_keys[holder])
            try:
                key_share = box.decrypt(up.ciphertexts[holder])[64:]
            except CryptoError:  # an earlier deviation garbled it: garble the key share
                key_share = self.rng.randbytes(32)
            cts[holder] = bytes(box.encrypt(_pack(node, holder, sid) + share + key_share))
        before = self.dealt.get((sid, node), session.seed)  # the seed dealt so far
        self.dealt[(sid, node)] = fresh
        self.add(node, self_stream(before, sid).astype(np.int64) - self_stream(fresh, sid))
        return dataclasses.replace(
            up, ciphertexts=cts, seed_commitments=dealing.commitments, seed_digests=digests
        )

    def _mask(
        self,
        kind: str,
        node: int,
        upload: tuple[Vector, bytes, dict[int, str]],
        earlier: dict[int, Any],
    ) -> Any:
        vector, vouch, complaints = upload
        rng, session = self.rng, self.session(node)
        sid = session.params.session
        if kind in ("in_range_offset", "out_of_range_word", "random_vector", "replay_vector"):
            if vector.shape != (LENGTH,) or vector.dtype != np.uint32:
                return upload  # an earlier deviation broke its shape already
            if kind == "in_range_offset":
                top = session.params.levels // session.params.cohort_size
                delta = np.array([rng.randint(0, top) for _ in range(LENGTH)], np.int64)
                new = wrapping(vector.astype(np.int64) + delta)  # input + delta <= levels
            elif kind == "out_of_range_word":
                new = vector.copy()
                i = rng.randrange(LENGTH)
                new[i] = (int(new[i]) + (1 << 31)) % WORD
            elif kind == "random_vector":
                new = np.frombuffer(rng.randbytes(4 * LENGTH), np.uint32).copy()
            else:
                others = [v[0] for v in earlier.values()]
                new = rng.choice(others).copy() if others else vector
            self.add(node, new.astype(np.int64) - vector.astype(np.int64))
            session.upload = upload_digest(new)  # and it signs the survivors with it
            return new, vouch, complaints
        if kind == "wrong_length":
            return (
                np.append(vector, np.uint32(0)) if rng.random() < 0.5 else vector[:-1],
                vouch,
                complaints,
            )
        if kind == "wrong_dtype":
            return vector.astype(rng.choice([np.int64, np.float64, np.uint64])), vouch, complaints
        if kind == "big_endian":
            return vector.astype(">u4"), vouch, complaints
        if kind == "strided":
            return np.repeat(vector, 2)[::2], vouch, complaints
        if kind == "bad_vouch":
            return vector, rng.randbytes(64), complaints
        if kind == "vouch_other_dealers":
            assert session.roster is not None
            dealers = list(session.dealers)
            dealers.remove(rng.choice([d for d in dealers if d != node] or dealers))
            payload = dealers_payload(sid, session.roster.digest, dealers)
            return vector, sign(self.devices.key(node), MASKED_WITH, payload), complaints
        assert session.graph is not None
        neighbours = session.graph.neighbours(node)
        if kind == "false_complaints":
            chosen = rng.sample(sorted(neighbours), rng.randint(1, len(neighbours)))
            return vector, vouch, {**complaints, **dict.fromkeys(chosen, "made up")}
        if kind == "foreign_complaints":
            others = sorted(set(session.graph.ring) - neighbours)  # always holds me
            return vector, vouch, {**complaints, rng.choice(others): "made up"}
        assert kind == "replay_vouch"
        others = [v[1] for v in earlier.values()]
        return vector, (rng.choice(others) if others else vouch), complaints

    def _consistency(self, kind: str, node: int, sig: bytes, earlier: dict[int, Any]) -> Any:
        if kind == "bad_signature":
            return self.rng.randbytes(64)
        if kind == "truncated":
            return sig[:63]
        if kind == "other_set":  # a valid signature on another survivor set or uploads
            session = self.session(node)
            assert session.roster is not None
            survivors, uploads = list(session.survivors), list(session.uploads)
            i = self.rng.randrange(len(survivors))
            if self.rng.random() < 0.5 and len(survivors) > 1:
                del survivors[i], uploads[i]
            else:
                uploads[i] = self.rng.randbytes(32)
            dealt = dealers_payload(session.params.session, session.roster.digest, session.dealers)
            payload = survivors_payload(dealt, survivors, uploads)
            return sign(self.devices.key(node), SURVIVORS, payload)
        assert kind == "replay"
        return earlier[self.rng.choice(sorted(earlier))] if earlier else sig

    def _unmask(self, kind: str, node: int, up: UnmaskShares, earlier: dict[int, Any]) -> Any:
        rng, session = self.rng, self.session(node)

        def each(f: Any) -> UnmaskShares:
            return UnmaskShares(
                {o: f(s) for o, s in up.seed.items()},
                {o: f(s) for o, s in up.mask_key.items()},
                up.pair,
            )

        if kind == "random_shares":
            return each(lambda s: rng.randbytes(32))
        if kind == "shifted":
            return each(lambda s: crypto_core_ed25519_scalar_add(s, (1).to_bytes(32, "little")))
        if kind == "non_canonical":
            return each(lambda s: b"\xff" * 32)
        if kind == "other_owner":
            owners = list(up.seed)
            values = [up.seed[o] for o in owners[1:] + owners[:1]]
            return dataclasses.replace(up, seed=dict(zip(owners, values, strict=True)))
        if kind == "unheld_owner":
            assert session.graph is not None
            held = (session.graph.neighbours(node) | {node}) & set(session.survivors)
            unheld = sorted(set(session.graph.ring) - held)  # non-neighbours, dropped nodes
            if not unheld:
                return up
            return dataclasses.replace(up, seed={**up.seed, rng.choice(unheld): rng.randbytes(32)})
        if kind == "both_secrets":
            extra = {o: session.key_shares[o] for o in up.seed if o in session.key_shares}
            return dataclasses.replace(up, mask_key={**up.mask_key, **extra})
        if kind == "withhold_some":

            def some(d: Mapping[int, bytes]) -> dict[int, bytes]:
                return {o: s for o, s in d.items() if rng.random() < 0.5}

            return UnmaskShares(some(up.seed), some(up.mask_key), some(up.pair))
        if kind == "withhold_all":
            return UnmaskShares({}, {}, {})
        if kind == "false_pair":
            return dataclasses.replace(up, pair={g: rng.randbytes(32) for g in up.pair})
        if kind == "foreign_pair":
            assert session.graph is not None
            alive = sorted(session.graph.neighbours(node) & set(session.survivors))
            if not alive:
                return up
            return dataclasses.replace(up, pair={**up.pair, rng.choice(alive): rng.randbytes(32)})
        if kind == "bad_length":
            return each(lambda s: s[:31])
        assert kind == "replay"
        return earlier[rng.choice(sorted(earlier))] if earlier else up


# --- the property -----------------------------------------------------------------------


def expected_totals(
    round_: LocalRound, encoded: Mapping[int, Encoded], adversary: Adversary, malicious: set[int]
) -> list[tuple[Vector, dict[int, Vector]]]:
    """Every total the round may correctly produce, each with the malicious survivors'
    effective inputs. A malicious survivor's false pair key with a dropped neighbour g
    changes its own input only if the server falls back on pair keys for g (g's mask key
    cannot be rebuilt), so each subset of such g gives one candidate."""
    server, result = round_.server, round_.result
    sid = server.params.session
    added = adversary.added.get(sid, {})
    base = np.zeros(LENGTH, np.int64)
    effective: dict[int, np.ndarray] = {}
    for s in result.survivors:
        mine = encoded[s].values.astype(np.int64)
        if s in malicious:
            mine = mine + added.get(s, np.zeros(LENGTH, np.uint32))
            effective[s] = mine
        base += mine
    lies: dict[int, list[tuple[int, np.ndarray]]] = {}  # dropped g -> (liar, its delta)
    for i in sorted(malicious & set(server.unmasked)):
        truth = adversary.sessions[(sid, i)].pair_keys
        for g, key in server.unmasked[i].pair.items():
            if key != truth[g]:
                true, told = stream(truth[g], LENGTH), stream(key, LENGTH)
                delta = true.astype(np.int64) - told if i < g else told.astype(np.int64) - true
                lies.setdefault(g, []).append((i, delta))
    out = []
    gones = sorted(lies)
    for size in range(len(gones) + 1):
        for fallen in combinations(gones, size):
            total, inputs = base.copy(), {s: v.copy() for s, v in effective.items()}
            for g in fallen:
                for i, delta in lies[g]:
                    total += delta
                    inputs[i] += delta
            out.append((wrapping(total), {s: wrapping(v) for s, v in inputs.items()}))
    return out


ABORTS = [
    ("the roster of", "roster too small"),
    ("dropout allowance", "too many dropped"),
    ("privacy failure bound", "too many gone for privacy"),
    ("disconnected", "survivors disconnected"),
    ("seed cannot be rebuilt", "a seed cannot be rebuilt"),
    ("mask key cannot be rebuilt", "a mask key cannot be rebuilt (no pair keys)"),
    (r"only \d+ device", "below the threshold"),
    ("no complete draw", "no complete draw"),
    ("no safe redraw", "no safe redraw"),
]


def abort_reason(message: str) -> str:
    return next((name for pattern, name in ABORTS if re.search(pattern, message)), message[:60])


def run_adversarial(
    n: int,
    seed: int,
    plans: dict[int, list[tuple[Stage, str]]],
    drops: Dropouts,
) -> str:
    """One round under ``plans``; assert the property and return the outcome's name."""
    params = params_for(n)
    rng = np.random.default_rng(seed)
    nodes = [int(x) for x in rng.choice(1 << 40, size=n, replace=False)]
    return check_round(params, encodings(nodes, params, seed), plans, drops, seed)


def check_round(
    params: RoundParams,
    encoded: dict[int, Encoded],
    plans: dict[int, list[tuple[Stage, str]]],
    drops: Dropouts,
    seed: int = 0,
) -> str:
    malicious = set(plans)
    honest = set(encoded) - malicious
    devices = LocalDevices()
    adversary = Adversary(plans, devices, random.Random(seed))
    with adversary.capturing():
        try:
            round_ = aggregate_locally(
                params, encoded, drops=drops, tamper=adversary.tamper, devices=devices
            )
        except SecAggAborted as exc:
            round_, outcome = None, f"aborted: {abort_reason(str(exc))}"
    for server in adversary.servers:  # never both secrets of one owner from an honest holder
        for holder, shares in server.unmasked.items():
            if holder in honest:
                assert not set(shares.seed) & set(shares.mask_key), holder
    if round_ is None:
        return outcome
    result, server = round_.result, round_.server
    survivors = set(result.survivors)
    # No honest eviction: an honest device of the final draw that did not go silent up to
    # the mask stage is summed.
    silent = {n for s in STAGES[: STAGES.index(Stage.MASK) + 1] for n in drops.at(s)}
    kept = (set(server.cohort) & honest) - silent
    assert kept <= survivors, (kept - survivors, round_.rejected)
    # The transcript holds together and shows each honest signer its own upload.
    transcript, sid = result.transcript, server.params.session
    assert not transcript.problems(), transcript.problems()
    for node in honest & set(transcript.signatures):
        session = adversary.sessions[(sid, node)]
        assert transcript.includes(session.node_key, session.upload), node
    candidates = expected_totals(round_, encoded, adversary, malicious)
    matched = [mine for total, mine in candidates if np.array_equal(total, result.total)]
    assert matched, "the total is not the sum of the survivors' effective inputs"
    if any(h in result.liars for h in honest):
        event("an honest holder named a liar")
    try:
        decode(result.total, len(result.survivors), params)
    except SecAggAborted:
        assert any(bool((v > params.levels).any()) for mine in matched for v in mine.values()), (
            "decoding failed though every survivor's input is in range"
        )
        return "completed, decode refused (out-of-range malicious input)"
    return "completed"


# n <= 20 twice as often as larger cohorts (a round of 50 takes ~1 s).
SIZES = [*range(3, 21), *range(3, 21), *range(21, 51)]
# A deviation at setup or roster only takes its device out of the draw, so the later stages,
# where a deviation meets the rest of the protocol, are drawn more often.
WEIGHTED_STAGES = [Stage.SETUP, Stage.ROSTER, *[Stage.SHARE_KEYS] * 2, *[Stage.MASK] * 2]
WEIGHTED_STAGES += [Stage.CONSISTENCY, *[Stage.UNMASK] * 4]
deviations = st.sampled_from(WEIGHTED_STAGES).flatmap(
    lambda stage: st.tuples(st.just(stage), st.sampled_from(MENU[stage]))
)


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[int, int, dict[int, list[tuple[Stage, str]]], Dropouts]:
    n = draw(st.sampled_from(SIZES))
    seed = draw(st.integers(0, 2**32 - 1))
    params = params_for(n)
    rng = np.random.default_rng(seed)
    nodes = [int(x) for x in rng.choice(1 << 40, size=n, replace=False)]
    bad = draw(st.lists(st.sampled_from(nodes), max_size=params.threshold - 1, unique=True))
    plans = {m: draw(st.lists(deviations, min_size=1, max_size=2)) for m in bad}
    drops: dict[str, list[int]] = {s.value: [] for s in Stage}
    for m in bad:  # a malicious device may also go silent
        if draw(st.integers(0, 3)) == 0:
            stage = draw(st.sampled_from(STAGES))
            drops[stage.value].append(m)
    good = [x for x in nodes if x not in plans]
    for x in draw(st.lists(st.sampled_from(good), max_size=2, unique=True)):
        drops[draw(st.sampled_from(STAGES)).value].append(x)
    return n, seed, plans, Dropouts(**drops)


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(scenario=scenarios())
def test_malicious_devices_and_dropouts_give_the_exact_sum_or_a_clean_abort(
    scenario: tuple[int, int, dict[int, list[tuple[Stage, str]]], Dropouts],
) -> None:
    n, seed, plans, drops = scenario
    outcome = run_adversarial(n, seed, plans, drops)
    event(outcome)
    if outcome.startswith("aborted") and len(plans) == 1 and not any(drops.at(s) for s in Stage):
        kinds = sorted({f"{s.value}:{k}" for s, k in next(iter(plans.values()))})
        event(f"one malicious device, no dropouts, {kinds} -> {outcome}")


# --- every deviation on its own, and regressions -----------------------------------------

# A dealer whose shares are off its own Feldman commitments (its holders cannot tell without a
# Feldman check per share) makes its seed unrebuildable: the round aborts cleanly, the server
# names it (DealerCheated) and leaves it out of every later round, so it stops one round only.
# Shares its holders can tell are bad (garbage, wrong digests) get it left out of the sum.
DEALINGS_THAT_STOP_A_ROUND = {"wrong_seed_commitments", "garbage_seed_commitments"}
# Their partial versions stop it when they spoil more than k + 1 - t holders' shares.
DEALINGS_THAT_MAY_STOP_A_ROUND = {"garbage_some", "wrong_digests"}


@pytest.mark.parametrize(
    ("stage", "kind"),
    [pytest.param(s, k, id=f"{s.value}-{k}") for s, k in DEVIATIONS],
)
def test_no_single_deviation_breaks_or_stops_a_round(stage: Stage, kind: str) -> None:
    """One malicious device of 12, no dropouts: the exact sum (its own input changed at most),
    and no abort, since no single device may stop a round; but a dealing off its own
    commitments, which aborts that round once and names the dealer (DealerCheated)."""
    n, seed = 12, 16
    nodes = [int(x) for x in np.random.default_rng(seed).choice(1 << 40, size=n, replace=False)]
    outcome = run_adversarial(n, seed, {sorted(nodes)[5]: [(stage, kind)]}, Dropouts())
    if stage == Stage.SHARE_KEYS and kind in DEALINGS_THAT_STOP_A_ROUND:
        assert outcome.startswith("aborted"), outcome
        assert "dealt them" in outcome or "rebuilt" in outcome, outcome
    elif not (stage == Stage.SHARE_KEYS and kind in DEALINGS_THAT_MAY_STOP_A_ROUND):
        assert outcome.startswith("completed"), outcome


def test_a_small_order_cipher_key_is_refused_at_setup_not_fatal_to_the_neighbours() -> None:
    """A device that announced the all-zero X25519 key (signed) and went on with the round
    used to crash each honest neighbour's share_keys with nacl's RuntimeError (libsodium
    refuses small-order points), which the server cannot tell from a dropout: one device
    evicted k honest ones. The announcement is refused now, by the server and by devices."""
    params = params_for(8)
    key = SigningKey.generate()
    _, honest = DeviceSession.setup(3, params, key, params.assumptions)
    for u in (0, 1, (1 << 255) - 20):  # small-order u-coordinates: 0, 1 and p - 1
        cipher = u.to_bytes(32, "little")
        bad = dataclasses.replace(honest, keys=PublicKeys(cipher, honest.keys.mask))
        bad = dataclasses.replace(bad, signature=sign(key, ANNOUNCE, bad.payload()))
        assert "small-order" in bad.problem(params.session)
        server = Aggregation(params, range(1, 9), LENGTH)
        with pytest.raises(ProtocolViolation, match="small-order"):
            server.receive_announcement(3, bad)
    assert honest.problem(params.session) == ""
    n, seed = 12, 7
    nodes = [int(x) for x in np.random.default_rng(seed).choice(1 << 40, size=n, replace=False)]
    plans = {sorted(nodes)[0]: [(Stage.SETUP, "low_order_cipher")]}
    assert run_adversarial(n, seed, plans, Dropouts()) == "completed"


def test_a_dealer_cannot_frame_an_honest_holder_with_a_false_digest() -> None:
    """The server blames a revealed share that misses its digest on the holder. Holders get
    the dealer's digests of their shares and keep no share that misses them, so a dealer that
    gives one holder a false digest cannot get an honest holder named a liar."""
    params = params_for(12)
    nodes = [int(x) for x in np.random.default_rng(3).choice(1 << 40, size=12, replace=False)]
    encoded = encodings(nodes, params, 3)
    dealer = sorted(nodes)[4]
    framed: list[int] = []

    def frame(stage: Stage, node: int, upload: Any) -> Any:
        if stage == Stage.SHARE_KEYS and node == dealer:
            victim = min(h for h in upload.seed_digests if h != dealer)
            framed.append(victim)
            return dataclasses.replace(
                upload, seed_digests={**upload.seed_digests, victim: bytes(32)}
            )
        return upload

    result = aggregate_locally(params, encoded, tamper=frame).result
    total = wrapping(np.sum([encoded[s].values.astype(np.int64) for s in result.survivors], 0))
    assert np.array_equal(result.total, total)
    assert framed[0] not in result.liars, result.liars[framed[0]]
