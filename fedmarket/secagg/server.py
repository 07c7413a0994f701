"""The server's side of SecAgg+, one round: roster, graph seed, routing, survivors, unmasking.

The server only ever holds signed public announcements, ciphertexts it cannot open, masked
vectors, and the shares honest devices release under a survivor set that t holders of each
secret signed. Each ``receive_*`` validates one device's message and raises
:class:`ProtocolViolation` naming the problem; the caller logs it and drops the device. Each
``close_*`` ends a stage; :class:`SecAggAborted` means no sum can be produced safely (too few
devices, a graph that would leak partial sums, a secret that cannot be rebuilt, an aggregate
outside the range honest inputs can reach). :class:`Redraw` means a roster member withheld its
nonce: the caller starts a new draw without it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Container, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from fedmarket.exceptions import DealerCheated, ProtocolViolation, SecAggAborted
from fedmarket.secagg import vss
from fedmarket.secagg.codec import Vector
from fedmarket.secagg.config import RoundParams
from fedmarket.secagg.device import (
    CIPHERTEXT_BYTES,
    MASKED_WITH,
    Dealt,
    ShareUpload,
    Stage,
    UnmaskShares,
    graph_for,
    holder_index,
    privacy_shortfall,
    share_digest,
)
from fedmarket.secagg.graph import Graph
from fedmarket.secagg.keys import mask_public, pair_secret, valid_point, verify
from fedmarket.secagg.masks import apply_masks, mask_key
from fedmarket.secagg.roster import Announcement, Roster, nonce_commitment
from fedmarket.secagg.transcript import (
    SURVIVORS,
    Transcript,
    dealers_payload,
    survivors_payload,
    upload_digest,
)


class Redraw(Exception):
    """Roster members withheld their nonces; the draw is void. ``missing`` lists them."""

    def __init__(self, missing: Collection[int]) -> None:
        super().__init__(f"nodes {sorted(missing)} revealed no nonce")
        self.missing = frozenset(missing)


@dataclass(frozen=True)
class SecureSum:
    """The unmasked sum of the survivors' encoded vectors, mod 2^32."""

    total: Vector
    survivors: tuple[int, ...]
    dropped: tuple[int, ...]  # cohort members not in the sum
    transcript: Transcript
    liars: dict[int, str] = field(default_factory=dict)  # node -> what it lied about


class Aggregation:
    """One round of SecAgg+ over ``cohort`` with vectors of ``length`` uint32 words."""

    def __init__(
        self,
        params: RoundParams,
        cohort: Sequence[int],
        length: int,
        banned: Collection[bytes] = (),
    ) -> None:
        self.params = params
        self.banned = frozenset(banned)  # node keys that provably broke an earlier round
        self.cohort = tuple(sorted(cohort))
        if len(self.cohort) != params.cohort_size or len(set(self.cohort)) != len(cohort):
            raise ProtocolViolation(
                f"cohort of {len(set(self.cohort))} nodes, parameters say {params.cohort_size}"
            )
        self.length = length
        self.stage = Stage.SETUP
        self.announcements: dict[int, Announcement] = {}
        self.roster: Roster | None = None
        self.nonces: dict[int, bytes] = {}
        self.graph: Graph | None = None
        self.uploads: dict[int, ShareUpload] = {}
        self.dealers: tuple[int, ...] = ()
        self.vectors: dict[int, Vector] = {}
        self.masked_with: dict[int, bytes] = {}
        self.complaints: dict[int, dict[int, str]] = {}
        self.excluded: dict[int, str] = {}  # uploaded, but left out of the sum: why
        self.dropped_at_setup: dict[int, str] = {}  # announcements refused in close_setup
        self.survivors: tuple[int, ...] = ()
        self.upload_digests: tuple[bytes, ...] = ()
        self.signatures: dict[int, bytes] = {}
        self.unmasked: dict[int, UnmaskShares] = {}

    # Stage 1: signed announcements
    def receive_announcement(self, node: int, announcement: Announcement) -> None:
        self._expect(Stage.SETUP, node, self.cohort, self.announcements)
        if announcement.node != node:
            raise ProtocolViolation(f"node {node}: announced itself as node {announcement.node}")
        problem = announcement.problem(self.params.session)
        if not problem and not valid_point(announcement.keys.mask):
            problem = "mask key is not a valid Ed25519 point"
        if not problem and announcement.node_key in self.banned:
            problem = "its node key broke an earlier round (it dealt shares off its commitments)"
        if problem:
            raise ProtocolViolation(f"node {node}: {problem}")
        self.announcements[node] = announcement

    def close_setup(self) -> Roster:
        """The roster every member gets (and checks) before it reveals its nonce.

        Keys must be unique across the roster. Node keys are long-term and public, so a round
        key equal to someone's node key was copied: its announcer is dropped, whoever came
        first. Two equal node keys drop both announcers; a repeated round key drops the later
        one (an honest device's round keys are fresh and seen by nobody before the roster)."""
        self.stage = Stage.ROSTER
        self.dropped_at_setup = _key_collisions(self.announcements)
        for node in self.dropped_at_setup:
            del self.announcements[node]
        self._require(len(self.announcements), "announced their keys")
        roster = Roster.of(self.announcements.values())
        members = len(roster.members)
        if why := privacy_shortfall(self.params, members, self.params.assumptions.dropped(members)):
            raise SecAggAborted(f"the roster of {members} devices is too small: {why}")
        self.roster = roster
        return roster

    # Stage 2: nonces
    def receive_nonce(self, node: int, nonce: bytes) -> None:
        roster = self._roster()
        self._expect(Stage.ROSTER, node, roster.nodes, self.nonces)
        if nonce_commitment(nonce, self.params.session) != roster.member(node).nonce_commitment:
            raise ProtocolViolation(f"node {node}: its nonce does not open its commitment")
        self.nonces[node] = nonce

    def close_roster(self) -> dict[int, bytes]:
        """Every member's nonce (each member gets all of them); :class:`Redraw` if some
        member withheld its nonce."""
        roster = self._roster()
        missing = set(roster.nodes) - set(self.nonces)
        if missing:
            raise Redraw(missing)
        self.stage = Stage.SHARE_KEYS
        self.graph = graph_for(roster, roster.graph_seed(self.nonces), self.params)
        return dict(self.nonces)

    # Stage 3: dealings
    def receive_shares(self, node: int, upload: ShareUpload) -> None:
        graph = self._graph()
        self._expect(Stage.SHARE_KEYS, node, graph.ring, self.uploads)
        if set(upload.ciphertexts) != graph.neighbours(node):
            raise ProtocolViolation(f"node {node}: shares must go to exactly its neighbours")
        if any(len(c) != CIPHERTEXT_BYTES for c in upload.ciphertexts.values()):
            raise ProtocolViolation(f"node {node}: a ciphertext is not {CIPHERTEXT_BYTES} bytes")
        size = self.params.threshold * vss.POINT_BYTES
        if len(upload.seed_commitments) != size or len(upload.key_commitments) != size:
            raise ProtocolViolation(f"node {node}: commitments must be t = {size // 32} points")
        if upload.key_commitments[: vss.POINT_BYTES] != self._roster().member(node).keys.mask:
            raise ProtocolViolation(f"node {node}: mask-key commitments miss its mask key")
        holders = set(graph.holders(node))
        for digests in (upload.seed_digests, upload.key_digests):
            if set(digests) != holders or any(len(d) != 32 for d in digests.values()):
                raise ProtocolViolation(f"node {node}: one 32-byte share digest per holder")
        self.uploads[node] = upload

    def close_share_keys(self) -> tuple[tuple[int, ...], dict[int, dict[int, Dealt]]]:
        """The dealers, and for each holder: the shares addressed to it with their digests."""
        self.stage = Stage.MASK
        self._require(len(self.uploads), "dealt their shares")
        self.dealers = tuple(sorted(self.uploads))
        inboxes: dict[int, dict[int, Dealt]] = {node: {} for node in self.dealers}
        for dealer, upload in self.uploads.items():
            for holder, ciphertext in upload.ciphertexts.items():
                if holder in inboxes:
                    inboxes[holder][dealer] = Dealt(
                        ciphertext, upload.seed_digests[holder], upload.key_digests[holder]
                    )
        return self.dealers, inboxes

    # Stage 4: masked vectors
    def receive_masked(
        self, node: int, vector: Vector, masked_with: bytes, complaints: Mapping[int, str]
    ) -> None:
        self._expect(Stage.MASK, node, self.dealers, self.vectors)
        if vector.dtype != np.uint32 or vector.shape != (self.length,):
            raise ProtocolViolation(
                f"node {node}: masked vector must be {self.length} uint32 words, "
                f"got {vector.shape} {vector.dtype}"
            )
        payload = dealers_payload(self.params.session, self._roster().digest, self.dealers)
        if not verify(self._key(node), MASKED_WITH, payload, masked_with):
            raise ProtocolViolation(f"node {node}: did not sign the dealers it masked with")
        if not set(complaints) <= self._graph().neighbours(node):
            raise ProtocolViolation(f"node {node}: complaints about non-neighbours")
        self.vectors[node] = vector
        self.masked_with[node] = masked_with
        self.complaints[node] = dict(complaints)

    def close_masking(self) -> tuple[tuple[int, ...], tuple[bytes, ...]]:
        """The survivor set each survivor is asked to sign, with their uploads' digests;
        aborts if it would be unsafe."""
        self.stage = Stage.CONSISTENCY
        graph = self._graph()
        self.excluded = self._proven_bad_dealers()
        survivors = tuple(sorted(set(self.vectors) - set(self.excluded)))
        self._require(len(survivors), "sent a masked vector")
        members = len(self._roster().members)
        if why := privacy_shortfall(self.params, members, members - len(survivors)):
            raise SecAggAborted(why)
        if not graph.connected(survivors):
            raise SecAggAborted("the survivors' graph is disconnected: its parts' sums would leak")
        self.survivors = survivors
        self.upload_digests = tuple(upload_digest(self.vectors[n]) for n in survivors)
        return survivors, self.upload_digests

    def _proven_bad_dealers(self) -> dict[int, str]:
        """Uploaders to leave out of the sum, and why: dealers whose secrets too few holders
        can help rebuild (fewer than t kept usable shares) *and* that more holders complain
        about than can collude under the parameters (2t - k - 1 or more, so at least one
        complainer is honest). Complaints alone never leave an honest dealer out; a bad
        dealing that fewer holders report may still abort the round at unmask."""
        graph, uploaded, t = self._graph(), set(self.vectors), self.params.threshold
        k = min(self.params.neighbours, len(self._roster().members) - 1)
        proof = max(1, 2 * t - k - 1)
        out = {}
        for dealer in sorted(uploaded):
            holders = [h for h in graph.holders(dealer) if h in uploaded and h != dealer]
            accusers = [h for h in holders if dealer in self.complaints.get(h, {})]
            holding = len(holders) - len(accusers)  # not its own share: it may withhold it
            if holding < t and len(accusers) >= proof:
                out[dealer] = (
                    f"{len(accusers)} of its holders could not use its shares, more than can "
                    f"collude, and only {holding} hold usable ones (threshold {t}): left out"
                )
        return out

    # Stage 5: signatures on the survivor set
    def receive_signature(self, node: int, signature: bytes) -> None:
        self._expect(Stage.CONSISTENCY, node, self.survivors, self.signatures)
        if not verify(self._key(node), SURVIVORS, self._survivors_payload(), signature):
            raise ProtocolViolation(f"node {node}: its signature on the survivors is invalid")
        self.signatures[node] = signature

    def close_consistency(self) -> dict[int, tuple[dict[int, bytes], dict[int, bytes]]]:
        """For each signer: the signatures of its window, and its neighbours' (and its own)
        signatures on the dealers they masked with."""
        self.stage = Stage.UNMASK
        self._require(len(self.signatures), "signed the survivors")
        graph = self._graph()
        out = {}
        for node in self.signatures:
            window = graph.window(node)
            sigs = {n: s for n, s in self.signatures.items() if n in window}
            vouch = {
                n: self.masked_with[n]
                for n in graph.neighbours(node) | {node}
                if n in self.masked_with
            }
            out[node] = (sigs, vouch)
        return out

    # Stage 6: shares that remove the masks
    def receive_unmask(self, node: int, shares: UnmaskShares) -> None:
        self._expect(Stage.UNMASK, node, self.signatures, self.unmasked)
        graph, alive = self._graph(), set(self.survivors)
        dropped = set(self.dealers) - alive
        holds = graph.neighbours(node) | {node}
        if not set(shares.seed) <= holds & alive or not set(shares.mask_key) <= holds & dropped:
            raise ProtocolViolation(f"node {node}: shares for nodes it does not hold")
        if not set(shares.pair) <= graph.neighbours(node) & dropped:
            raise ProtocolViolation(f"node {node}: pair keys for nodes that are not dropped peers")
        everything = [*shares.seed.values(), *shares.mask_key.values(), *shares.pair.values()]
        if any(len(s) != vss.SCALAR_BYTES for s in everything):
            raise ProtocolViolation(f"node {node}: a share is not {vss.SCALAR_BYTES} bytes")
        self.unmasked[node] = shares

    def finish(self) -> SecureSum:
        """Sum the survivors' vectors and remove every mask left in the sum."""
        graph, session, alive = self._graph(), self.params.session, set(self.survivors)
        liars: dict[int, str] = {}
        total = np.zeros(self.length, dtype=np.uint32)
        for node in self.survivors:
            np.add(total, self.vectors[node], out=total)
        add: list[bytes] = []
        subtract: list[bytes] = []
        for node in self.survivors:
            seed = self._rebuild(node, "seed", liars)
            subtract.append(mask_key(seed, session, "self"))
        for gone in sorted(set(self.dealers) - alive):
            peers = sorted(graph.neighbours(gone) & alive)
            if not peers:
                continue
            keys = self._pair_keys(gone, peers, liars)
            for i in peers:  # survivor i added +stream if i < gone, -stream otherwise
                (subtract if i < gone else add).append(keys[i])
        apply_masks(total, add=add, subtract=subtract)
        not_summed = tuple(n for n in self.cohort if n not in alive)
        roster = self._roster()
        transcript = Transcript(
            session=session,
            roster_digest=roster.digest,
            dealers=self.dealers,
            survivors=self.survivors,
            uploads=self.upload_digests,
            node_keys={n: roster.member(n).node_key for n in self.survivors},
            signatures=dict(self.signatures),
            aggregate=upload_digest(total),
        )
        return SecureSum(total, self.survivors, not_summed, transcript, liars)

    def _pair_keys(
        self, gone: int, peers: Sequence[int], liars: dict[int, str]
    ) -> dict[int, bytes]:
        """The stream keys of ``gone``'s pairs with surviving ``peers``: from its rebuilt mask
        key, or else from the pair keys its peers revealed."""
        members = self._roster().by_node()
        session = self.params.session
        try:
            secret = self._rebuild(gone, "key", liars)
        except SecAggAborted:
            revealed = {i: self.unmasked[i].pair.get(gone) for i in peers if i in self.unmasked}
            missing = [i for i in peers if revealed.get(i) is None]
            if missing:
                raise SecAggAborted(
                    f"node {gone}'s mask key cannot be rebuilt and survivors {missing} did not "
                    "reveal their pair keys with it"
                ) from None
            return {i: k for i, k in revealed.items() if k is not None}
        mine = mask_public(secret)
        return {
            i: mask_key(pair_secret(secret, mine, members[i].keys.mask), session, "pair")
            for i in peers
        }

    def _rebuild(self, owner: int, which: str, liars: dict[int, str]) -> bytes:
        """``owner``'s seed or mask key from the revealed shares. A share that misses its
        digest was altered by its holder; one that matches its digest but not the Feldman
        commitments was dealt wrong by ``owner``. Both are named in ``liars`` and left out."""
        graph, upload, session = self._graph(), self.uploads[owner], self.params.session
        seed = which == "seed"
        commitments = upload.seed_commitments if seed else upload.key_commitments
        digests = upload.seed_digests if seed else upload.key_digests
        shares = {}
        for holder, answer in self.unmasked.items():
            share = (answer.seed if seed else answer.mask_key).get(owner)
            if share is None:
                continue
            if share_digest(session, owner, holder, share) != digests[holder]:
                liars[holder] = f"revealed a false share of node {owner}'s {which}"
                continue
            shares[holder_index(graph, owner, holder)] = share
        try:
            rebuilt = vss.rebuild(commitments, shares, self.params.threshold)
        except ProtocolViolation as exc:
            message = f"node {owner}'s {which} cannot be rebuilt: {exc}"
            bad = [i for i, s in shares.items() if not vss.verify_share(commitments, i, s)]
            if bad:  # shares its holders kept as dealt (digests match) are off its commitments
                raise DealerCheated(f"{message}; it dealt them", (owner,)) from None
            raise SecAggAborted(message) from None
        if rebuilt.liars:
            liars[owner] = f"dealt {len(rebuilt.liars)} share(s) off its committed {which}"
        return rebuilt.secret

    def _survivors_payload(self) -> bytes:
        dealt = dealers_payload(self.params.session, self._roster().digest, self.dealers)
        return survivors_payload(dealt, self.survivors, self.upload_digests)

    def _key(self, node: int) -> bytes:
        return self._roster().member(node).node_key

    def _roster(self) -> Roster:
        if self.roster is None:
            raise ProtocolViolation("no roster yet")
        return self.roster

    def _graph(self) -> Graph:
        if self.graph is None:
            raise ProtocolViolation("no graph yet")
        return self.graph

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


def _key_collisions(announcements: Mapping[int, Announcement]) -> dict[int, str]:
    """Announcers (in arrival order) whose keys collide with another announcement's, and why.

    Node keys are long-term and public: a round key equal to one was copied, so its announcer
    goes, whoever came first. Fresh round keys are seen by nobody before the roster, so a
    repeated one is the later announcer's copy."""
    node_keys = Counter(a.node_key for a in announcements.values())
    out: dict[int, str] = {}
    seen: set[bytes] = set()
    for node, a in announcements.items():
        mine = {a.keys.cipher, a.keys.mask}
        if node_keys[a.node_key] > 1:
            out[node] = "its node key is another announcer's too"
        elif mine & node_keys.keys():
            out[node] = "a round key of it is someone's node key (copied)"
        elif mine & seen:
            out[node] = "a round key of it was announced before by another node"
        seen |= mine
    return out
