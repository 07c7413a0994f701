"""The server's side of SecAgg+, one round: route keys and shares, sum, unmask.

The server only ever holds public keys, ciphertexts it cannot open, masked vectors, and shares
that honest devices release for survivors' seeds or dropped devices' mask keys, never both for
one device. Each ``receive_*`` validates one device's message and raises
:class:`ProtocolViolation` naming the problem; the caller logs it and treats the device as
dropped. Each ``close_*`` ends a stage, drops the silent, and raises :class:`SecAggAborted` when
too few devices are left to ever unmask.
"""

from __future__ import annotations

import random
from collections.abc import Container, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from fedmarket.exceptions import ProtocolViolation, SecAggAborted
from fedmarket.secagg import shamir
from fedmarket.secagg.codec import Vector
from fedmarket.secagg.config import RoundParams
from fedmarket.secagg.device import CIPHERTEXT_BYTES, Stage, seed_commitment
from fedmarket.secagg.graph import neighbour_graph
from fedmarket.secagg.keys import KEY_BYTES, PublicKeys, agree, public_key
from fedmarket.secagg.masks import apply_masks, mask_key


@dataclass(frozen=True)
class UnmaskRequest:
    survivors: tuple[int, ...]
    dropped: tuple[int, ...]


@dataclass(frozen=True)
class SecureSum:
    """The unmasked sum of the survivors' encoded vectors, mod 2^32."""

    total: Vector
    survivors: tuple[int, ...]
    dropped: tuple[int, ...]


class Aggregation:
    """One round of SecAgg+ over ``cohort`` with vectors of ``length`` uint32 words."""

    def __init__(
        self, params: RoundParams, cohort: Sequence[int], length: int, rng: random.Random
    ) -> None:
        self.params = params
        self.cohort = tuple(sorted(cohort))
        if len(self.cohort) != params.cohort_size:
            raise ProtocolViolation(
                f"cohort of {len(self.cohort)} nodes, parameters say {params.cohort_size}"
            )
        self.length = length
        self.graph = neighbour_graph(self.cohort, params.neighbours, rng)
        self.stage = Stage.SETUP
        self.keys: dict[int, PublicKeys] = {}
        self.commitments: dict[int, bytes] = {}
        self.outboxes: dict[int, dict[int, bytes]] = {}
        self.vectors: dict[int, Vector] = {}
        self.mask_peers: dict[int, frozenset[int]] = {}
        self.sharers: set[int] = set()
        self.survivors: set[int] = set()
        self.requests: dict[int, UnmaskRequest] = {}
        self.seed_shares: dict[int, list[bytes]] = {}
        self.key_shares: dict[int, list[bytes]] = {}
        self.answered: set[int] = set()

    # Stage 0: public keys
    def receive_keys(self, node: int, keys: PublicKeys) -> None:
        self._expect(Stage.SETUP, node, self.cohort, self.keys)
        if len(keys.cipher) != KEY_BYTES or len(keys.mask) != KEY_BYTES:
            raise ProtocolViolation(f"node {node}: public keys must be {KEY_BYTES} bytes")
        seen = {k for pk in self.keys.values() for k in (pk.cipher, pk.mask)}
        if keys.cipher == keys.mask or {keys.cipher, keys.mask} & seen:
            raise ProtocolViolation(f"node {node}: reuses a public key")
        self.keys[node] = keys

    def close_setup(self) -> dict[int, dict[int, PublicKeys]]:
        """Each live node's neighbours' keys (and its own), for those that can still share."""
        self.stage = Stage.SHARE_KEYS
        live = set(self.keys)
        out = {}
        for node in sorted(live):
            group = (self.graph[node] & live) | {node}
            if len(group) >= self.params.threshold:
                out[node] = {n: self.keys[n] for n in sorted(group)}
        self._require(len(out), "sent their public keys")
        self.sharers = set(out)
        return out

    # Stage 1: encrypted shares
    def receive_shares(
        self, node: int, ciphertexts: Mapping[int, bytes], commitment: bytes
    ) -> None:
        self._expect(Stage.SHARE_KEYS, node, self.sharers, self.outboxes)
        allowed = self.graph[node] & set(self.keys)
        unknown = set(ciphertexts) - allowed
        if unknown:
            raise ProtocolViolation(
                f"node {node}: shares addressed to non-neighbours {sorted(unknown)}"
            )
        if len(ciphertexts) + 1 < self.params.threshold:
            raise ProtocolViolation(f"node {node}: shares for too few neighbours")
        if any(len(c) != CIPHERTEXT_BYTES for c in ciphertexts.values()):
            raise ProtocolViolation(f"node {node}: a ciphertext is not {CIPHERTEXT_BYTES} bytes")
        if len(commitment) != 32:
            raise ProtocolViolation(f"node {node}: seed commitment must be 32 bytes")
        self.outboxes[node] = dict(ciphertexts)
        self.commitments[node] = commitment

    def close_share_keys(self) -> dict[int, dict[int, bytes]]:
        """Each node that shared: the ciphertexts the other sharers addressed to it."""
        self.stage = Stage.MASK
        self._require(len(self.outboxes), "shared their keys")
        return {
            node: {src: box[node] for src, box in sorted(self.outboxes.items()) if node in box}
            for node in self.outboxes
        }

    # Stage 2: masked vectors
    def receive_masked(self, node: int, vector: Vector, mask_peers: Sequence[int]) -> None:
        self._expect(Stage.MASK, node, self.outboxes, self.vectors)
        if vector.dtype != np.uint32 or vector.shape != (self.length,):
            raise ProtocolViolation(
                f"node {node}: masked vector must be {self.length} uint32 words, "
                f"got {vector.shape} {vector.dtype}"
            )
        peers = frozenset(mask_peers)
        senders = {src for src, box in self.outboxes.items() if node in box}
        if len(peers) != len(mask_peers) or not peers <= senders:
            raise ProtocolViolation(f"node {node}: mask peers are not nodes that sent it shares")
        if len(peers) + 1 < self.params.threshold:
            raise ProtocolViolation(f"node {node}: masked with too few neighbours")
        self.vectors[node] = vector
        self.mask_peers[node] = peers

    def close_masking(self) -> dict[int, UnmaskRequest]:
        """What each survivor is asked to reveal; settles one-sided pairs first."""
        self.stage = Stage.UNMASK
        survivors = set(self.vectors)
        changed = True
        while changed:  # i used j's shares but j refused i's: i's masks cannot cancel, drop i
            changed = False
            for i in sorted(survivors):
                if any(i not in self.mask_peers[j] for j in self.mask_peers[i] & survivors):
                    survivors.discard(i)
                    changed = True
        self._require(len(survivors), "sent a masked vector")
        self.survivors = survivors
        dropped = set(self.outboxes) - survivors
        for node in sorted(survivors):
            holds = self.mask_peers[node] | {node}
            request = UnmaskRequest(
                tuple(sorted(holds & survivors)), tuple(sorted(holds & dropped))
            )
            if len(request.survivors) < self.params.threshold:
                continue  # it could not answer safely; the others may still cover it
            self.requests[node] = request
        self._require(len(self.requests), "can be asked to unmask")
        return dict(self.requests)

    # Stage 3: shares that remove the masks
    def receive_unmask(
        self, node: int, seed_shares: Mapping[int, bytes], key_shares: Mapping[int, bytes]
    ) -> None:
        self._expect(Stage.UNMASK, node, self.requests, self.answered)
        request = self.requests[node]
        if set(seed_shares) != set(request.survivors) or set(key_shares) != set(request.dropped):
            raise ProtocolViolation(f"node {node}: shares for nodes it was not asked about")
        shares = [*seed_shares.values(), *key_shares.values()]
        if any(len(s) != shamir.SHARE_BYTES for s in shares):
            raise ProtocolViolation(f"node {node}: a share is not {shamir.SHARE_BYTES} bytes")
        self.answered.add(node)
        for owner, share in seed_shares.items():
            self.seed_shares.setdefault(owner, []).append(share)
        for owner, share in key_shares.items():
            self.key_shares.setdefault(owner, []).append(share)

    def finish(self) -> SecureSum:
        """Sum the survivors' vectors and remove every mask left in the sum."""
        survivors = sorted(self.survivors)
        dropped = sorted(set(self.outboxes) - self.survivors)
        session, _t = self.params.session, self.params.threshold
        total = np.zeros(self.length, dtype=np.uint32)
        for node in survivors:
            np.add(total, self.vectors[node], out=total)
        add: list[bytes] = []
        subtract: list[bytes] = []
        for node in survivors:
            seed = self._rebuild(self.seed_shares.get(node, []), node, "self-mask seed")
            if seed_commitment(seed, session) != self.commitments[node]:
                raise SecAggAborted(f"node {node}: the rebuilt seed does not match its commitment")
            subtract.append(mask_key(seed, session, "self"))
        for gone in dropped:
            holders = [i for i in survivors if gone in self.mask_peers[i]]
            if not holders:
                continue  # nobody masked with it
            secret = self._rebuild(self.key_shares.get(gone, []), gone, "mask key")
            if public_key(secret) != self.keys[gone].mask:
                raise SecAggAborted(f"node {gone}: the rebuilt mask key does not match its key")
            for i in holders:  # survivor i added +stream if i < gone, -stream otherwise
                key = mask_key(agree(secret, self.keys[i].mask), session, "pair")
                (subtract if i < gone else add).append(key)
        apply_masks(total, add=add, subtract=subtract)
        not_survived = tuple(n for n in self.cohort if n not in self.survivors)
        return SecureSum(total, tuple(survivors), not_survived)

    def _rebuild(self, shares: list[bytes], owner: int, what: str) -> bytes:
        if len(shares) < self.params.threshold:
            raise SecAggAborted(
                f"only {len(shares)} shares of node {owner}'s {what} arrived; "
                f"the threshold is {self.params.threshold}"
            )
        try:
            return shamir.combine(shares, self.params.threshold)
        except ProtocolViolation as exc:
            raise SecAggAborted(f"node {owner}'s {what}: {exc}") from None

    def _expect(
        self, stage: Stage, node: int, allowed: Container[int], done: Container[int]
    ) -> None:
        if self.stage != stage:
            raise ProtocolViolation(f"node {node}: {stage.value} message outside its stage")
        if node not in allowed:
            raise ProtocolViolation(f"node {node}: not expected in stage {stage.value}")
        if node in done:
            raise ProtocolViolation(f"node {node}: second {stage.value} message (replay)")

    def _require(self, count: int, what: str) -> None:
        needed = max(self.params.threshold, 2)
        if count < needed:
            raise SecAggAborted(
                f"only {count} device(s) {what}; secure aggregation needs at least {needed} "
                f"(threshold t={self.params.threshold}); the sum stays masked"
            )
