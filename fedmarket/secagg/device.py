"""The device's side of SecAgg+ against a malicious server, one round.

Stages run in order, each at most once per round; anything else raises
:class:`ProtocolViolation`:

1. ``setup``: fresh round keys and a nonce commitment, announced and signed with the node key.
2. ``roster``: check the roster (every member's signed announcement, mine unchanged, no
   repeats, big enough for the parameters), then reveal the nonce.
3. ``share_keys``: check every member's nonce, derive the graph from the seed they fix, check
   my neighbours' signatures, and Feldman-share my self-mask seed and mask key among my
   holders (share index = position in the holder list), each share encrypted to its holder.
4. ``mask``: keep the shares dealt to me that decrypt and match their dealers' digests (before
   training, so that a round I must refuse costs no privacy), then mask my update with my self
   mask and a pairwise mask with every dealing neighbour: nothing the server or a neighbour
   says about shares removes a pair, so nobody can peel masks off an honest device. I sign the
   dealer list I masked with. Unusable dealings become complaints.
5. ``consistency``: check that I am a survivor, that the survivors dealt, that the privacy
   bound still holds with the devices that dropped, that enough of my holders survive, that
   the survivors' graph is connected, and that my upload's digest is the one listed; sign the
   survivors and all their uploads' digests (the round's transcript).
6. ``unmask``: for each secret I hold, reveal one share, and only when at least t of its
   holders signed the survivor set I signed: the self-mask seed of a survivor (that signed the
   dealer list I know), the mask key of a dropped dealer (and our pair key, if a neighbour).
   Two different survivor sets cannot both gather t signatures from one holder group, since
   2t > k + 1 + (colluding holders) under the parameters.

Source: Bell et al. 2020 (SecAgg+), Bonawitz et al. 2017 §4 (consistency check), Feldman 1987.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TypeVar

from flwr.app import ConfigRecordValues
from nacl.exceptions import CryptoError
from nacl.secret import SecretBox
from nacl.signing import SigningKey

from fedmarket.exceptions import FedmarketError, InvalidInput, ProtocolViolation
from fedmarket.secagg import vss
from fedmarket.secagg.codec import Encoded, Vector
from fedmarket.secagg.config import RoundParams
from fedmarket.secagg.graph import Graph, ring_order
from fedmarket.secagg.keys import (
    PublicKeys,
    agree,
    mask_public,
    new_private_key,
    pair_secret,
    public_key,
    sign,
    valid_point,
    verify,
)
from fedmarket.secagg.masks import apply_masks, mask_key
from fedmarket.secagg.parameters import Assumptions, bounds
from fedmarket.secagg.roster import (
    ANNOUNCE,
    NONCE_BYTES,
    Announcement,
    Roster,
    decode_roster,
    digest,
    encode_roster,
    nonce_commitment,
)
from fedmarket.secagg.transcript import (
    SURVIVORS,
    dealers_payload,
    survivors_payload,
    upload_digest,
)

T = TypeVar("T")

MASKED_WITH = b"fedmarket-secagg-masked-with-v1"
# src node (8) | dst node (8) | session (16) | seed share | mask-key share
SHARE_PLAINTEXT_BYTES = 8 + 8 + 16 + 2 * vss.SCALAR_BYTES
CIPHERTEXT_BYTES = SecretBox.NONCE_SIZE + SecretBox.MACBYTES + SHARE_PLAINTEXT_BYTES


class Stage(StrEnum):
    SETUP = "setup"
    ROSTER = "roster"
    SHARE_KEYS = "share_keys"
    MASK = "mask"
    CONSISTENCY = "consistency"
    UNMASK = "unmask"


ORDER = tuple(Stage)


@dataclass(frozen=True)
class ShareUpload:
    """A dealing. The server checks a revealed share against its digest (a mismatch: the
    holder lied) and then against the Feldman commitments (a mismatch: the dealer did)."""

    ciphertexts: dict[int, bytes]  # holder -> my encrypted shares
    seed_commitments: bytes  # Feldman commitments of my self-mask seed's polynomial
    key_commitments: bytes  # ... of my mask key's; the first is my mask public key
    seed_digests: dict[int, bytes]  # holder -> digest of its seed share
    key_digests: dict[int, bytes]  # holder -> digest of its mask-key share


@dataclass(frozen=True)
class Dealt:
    """What one dealer sent me: my encrypted shares and the dealer's digests of them."""

    ciphertext: bytes
    seed_digest: bytes
    key_digest: bytes


def share_digest(session: bytes, owner: int, holder: int, share: bytes) -> bytes:
    return digest(
        session,
        owner.to_bytes(8, "big"),
        holder.to_bytes(8, "big"),
        share,
        person=b"fedmarket-share",
    )


@dataclass(frozen=True)
class UnmaskShares:
    seed: dict[int, bytes]  # survivor -> my share of its self-mask seed
    mask_key: dict[int, bytes]  # dropped dealer -> my share of its mask key
    pair: dict[int, bytes]  # dropped dealing neighbour -> our pair mask's stream key


def holder_index(graph: Graph, owner: int, holder: int) -> int:
    """The Shamir index of ``holder``'s share of ``owner``'s secrets (1-based)."""
    return graph.holders(owner).index(holder) + 1


def graph_for(roster: Roster, seed: bytes, params: RoundParams) -> Graph:
    return Graph(ring_order(roster.nodes, seed), min(params.neighbours, len(roster.nodes) - 1))


def privacy_shortfall(params: RoundParams, members: int, missing: int) -> str:
    """Why a graph over ``members`` roster members, ``missing`` of them gone, misses the round's
    privacy target under Bell et al.'s bounds, or ''.

    Every colluder the cohort may hold is assumed to be in the roster, and the missing count
    as removed nodes (they can split the ring). Availability is not judged here: a round that
    is still private goes on, whatever its odds of completing.
    """
    a = params.assumptions
    colluders = a.corrupt(params.cohort_size)
    k = min(params.neighbours, members - 1)
    try:
        seen = Assumptions(
            corrupt_fraction=colluders / members,
            dropout_fraction=missing / members,
            security_bits=a.security_bits,
            draws=a.draws,
        )
        bits = bounds(members, k, params.threshold, seen).privacy_bits
    except InvalidInput as exc:
        return str(exc)
    if bits < a.privacy_target_bits:
        return (
            f"with {missing} of {members} devices gone, k={k}, t={params.threshold} leave a "
            f"2^-{bits:.1f} privacy failure bound; the round needs 2^-{a.privacy_target_bits:.1f}"
        )
    return ""


@dataclass
class DeviceSession:
    node: int
    params: RoundParams
    node_key: bytes  # my Ed25519 verify key
    cipher_sk: bytes
    mask_sk: bytes  # an Ed25519 scalar
    nonce: bytes
    stage: Stage = Stage.SETUP
    roster: Roster | None = None
    graph: Graph | None = None
    seed: bytes = b""  # my self-mask seed, an Ed25519 scalar
    pair_keys: dict[int, bytes] = field(default_factory=dict)  # neighbour -> mask stream key
    box_keys: dict[int, bytes] = field(default_factory=dict)  # neighbour -> crypto_box key
    seed_shares: dict[int, bytes] = field(default_factory=dict)  # owner -> my share
    key_shares: dict[int, bytes] = field(default_factory=dict)
    dealers: tuple[int, ...] = ()  # who dealt shares (the server's list, checked)
    upload: bytes = b""  # the digest of my masked vector
    survivors: tuple[int, ...] = ()
    uploads: tuple[bytes, ...] = ()  # the survivors' upload digests, as I signed them
    shares_accepted: bool = False  # within the mask stage only

    @classmethod
    def setup(
        cls, node: int, params: RoundParams, node_key: SigningKey, policy: Assumptions
    ) -> tuple[DeviceSession, Announcement]:
        """Stage 1: fresh keys for this round, announced under my node key."""
        try:
            params.require(policy)
        except InvalidInput as exc:
            raise ProtocolViolation(str(exc)) from None
        mask_sk = vss.random_scalar()
        session = cls(
            node=node,
            params=params,
            node_key=bytes(node_key.verify_key),
            cipher_sk=new_private_key(),
            mask_sk=mask_sk,
            nonce=os.urandom(NONCE_BYTES),
        )
        return session, session.announce(node_key)

    def announce(self, node_key: SigningKey) -> Announcement:
        unsigned = Announcement(
            session=self.params.session,
            node=self.node,
            node_key=self.node_key,
            keys=self.public_keys,
            nonce_commitment=nonce_commitment(self.nonce, self.params.session),
            signature=bytes(64),
        )
        signature = sign(node_key, ANNOUNCE, unsigned.payload())
        return Announcement(**{**unsigned.__dict__, "signature": signature})

    @property
    def public_keys(self) -> PublicKeys:
        return PublicKeys(public_key(self.cipher_sk), mask_public(self.mask_sk))

    def reveal(self, roster: Roster) -> bytes:
        """Stage 2: check the roster, then reveal my nonce (the roster is fixed from now on)."""
        self._advance(Stage.ROSTER)
        n, members = self.params.cohort_size, len(roster.members)
        try:
            mine = roster.member(self.node)
        except ProtocolViolation:
            raise ProtocolViolation("roster: I am not in it") from None
        if (mine.node_key, mine.keys, mine.nonce_commitment) != (
            self.node_key,
            self.public_keys,
            nonce_commitment(self.nonce, self.params.session),
        ):
            raise ProtocolViolation("roster: my announcement was altered")
        if members > n:
            raise ProtocolViolation(f"roster: {members} members, the round has {n}")
        if any(a.session != self.params.session for a in roster.members):
            raise ProtocolViolation("roster: an announcement of another round")
        expected = self.params.assumptions.dropped(members)
        if why := privacy_shortfall(self.params, members, expected):
            raise ProtocolViolation(f"roster: {why}")
        self.roster = roster
        return self.nonce

    def share_keys(self, nonces: Mapping[int, bytes]) -> ShareUpload:
        """Stage 3: derive the graph, check my neighbours, deal my secrets to my holders."""
        self._advance(Stage.SHARE_KEYS)
        roster = self._roster()
        graph = graph_for(roster, roster.graph_seed(nonces), self.params)
        members = roster.by_node()
        for peer in graph.neighbours(self.node):
            problem = members[peer].problem(self.params.session)
            if problem or not valid_point(members[peer].keys.mask):
                raise ProtocolViolation(f"share_keys: neighbour {peer}: {problem or 'bad key'}")
        self.graph = graph
        session = self.params.session
        for peer in graph.neighbours(self.node):
            keys = members[peer].keys
            self.box_keys[peer] = agree(self.cipher_sk, keys.cipher)
            secret = pair_secret(self.mask_sk, self.public_keys.mask, keys.mask)
            self.pair_keys[peer] = mask_key(secret, session, "pair")
        self.seed = vss.random_scalar()
        holders = graph.holders(self.node)
        t = self.params.threshold
        seeds = vss.deal(self.seed, t, len(holders))
        keys_dealt = vss.deal(self.mask_sk, t, len(holders))
        ciphertexts: dict[int, bytes] = {}
        seed_digests: dict[int, bytes] = {}
        key_digests: dict[int, bytes] = {}
        for holder, seed_share, key_share in zip(
            holders, seeds.shares, keys_dealt.shares, strict=True
        ):
            seed_digests[holder] = share_digest(session, self.node, holder, seed_share)
            key_digests[holder] = share_digest(session, self.node, holder, key_share)
            if holder == self.node:
                self.seed_shares[holder], self.key_shares[holder] = seed_share, key_share
                continue
            plaintext = _pack(self.node, holder, session) + seed_share + key_share
            ciphertexts[holder] = bytes(SecretBox(self.box_keys[holder]).encrypt(plaintext))
        return ShareUpload(
            ciphertexts, seeds.commitments, keys_dealt.commitments, seed_digests, key_digests
        )

    def accept_shares(self, dealers: Sequence[int], dealt: Mapping[int, Dealt]) -> dict[int, str]:
        """Stage 4, first half: ``dealers`` lists every roster member whose shares the server
        accepted; keep the valid shares dealt to me and return complaints (dealer -> why) for
        the rest. A device checks this before it trains."""
        self._advance(Stage.MASK)
        graph = self._graph()
        dealer_set = set(dealers)
        if len(dealer_set) != len(dealers) or not dealer_set <= set(self._roster().nodes):
            raise ProtocolViolation("mask: the dealers must be distinct roster members")
        if self.node not in dealer_set:
            raise ProtocolViolation("mask: my own shares are missing from the dealers")
        if not set(dealt) <= dealer_set & graph.neighbours(self.node):
            raise ProtocolViolation("mask: shares from nodes that are not dealing neighbours")
        complaints: dict[int, str] = {}
        for dealer in sorted(dealer_set & graph.neighbours(self.node)):
            dealing = dealt.get(dealer)
            reason = self._receive(dealer, dealing) if dealing else "no shares reached me"
            if reason:
                complaints[dealer] = reason
        self.dealers = tuple(sorted(dealer_set))
        self.shares_accepted = True
        return complaints

    def mask_update(self, encoded: Encoded, node_key: SigningKey) -> tuple[Vector, bytes]:
        """Stage 4, second half: my encoded update plus my self mask and a pairwise mask with
        every dealing neighbour (+ towards higher node ids, - towards lower), and my signature
        on the dealers I masked with (holders reveal my seed only under the same dealers)."""
        if self.stage != Stage.MASK or not self.shares_accepted:
            raise ProtocolViolation("mask: no shares accepted in this round")
        self.shares_accepted = False  # one masked upload per round
        session = self.params.session
        peers = {j: k for j, k in self.pair_keys.items() if j in self.dealers}
        vector = encoded.values.copy()
        apply_masks(
            vector,
            add=[mask_key(self.seed, session, "self")]
            + [k for j, k in peers.items() if self.node < j],
            subtract=[k for j, k in peers.items() if self.node > j],
        )
        self.upload = upload_digest(vector)
        return vector, sign(node_key, MASKED_WITH, self._dealers_payload())

    def consistency(
        self, survivors: Sequence[int], uploads: Sequence[bytes], node_key: SigningKey
    ) -> bytes:
        """Stage 5: check the survivor set and the digests of their uploads, and sign them."""
        self._advance(Stage.CONSISTENCY)
        alive, graph = set(survivors), self._graph()
        if list(survivors) != sorted(alive):
            raise ProtocolViolation("consistency: survivors must be sorted and distinct")
        if self.node not in alive:
            raise ProtocolViolation("consistency: I sent my vector but am not a survivor")
        if len(uploads) != len(survivors) or any(len(u) != 32 for u in uploads):
            raise ProtocolViolation("consistency: one 32-byte upload digest per survivor")
        if uploads[list(survivors).index(self.node)] != self.upload:
            raise ProtocolViolation("consistency: my upload is not the one in the sum")
        if not alive <= set(self.dealers):
            raise ProtocolViolation("consistency: survivors that did not deal their shares")
        members = len(self._roster().members)
        if why := privacy_shortfall(self.params, members, members - len(alive)):
            raise ProtocolViolation(f"consistency: {why}")
        if len(graph.neighbours(self.node) & alive) + 1 < self.params.threshold:
            raise ProtocolViolation("consistency: too few of my holders survive to unmask me")
        if not graph.connected(alive):
            raise ProtocolViolation(
                "consistency: the survivors' graph is disconnected (its parts' sums would leak)"
            )
        self.survivors, self.uploads = tuple(survivors), tuple(uploads)
        return sign(node_key, SURVIVORS, self._survivors_payload())

    def unmask(
        self, signatures: Mapping[int, bytes], masked_with: Mapping[int, bytes]
    ) -> UnmaskShares:
        """Stage 6: for each secret I hold, one share, where t of its holders signed the
        survivors I signed: a survivor's seed (only if it signed that it masked with the
        dealers I know), a dropped dealer's mask key. For each dropped dealing neighbour also
        our pair secret, which hides nothing once it is out of the sum.

        Never both shares of one node.
        """
        self._advance(Stage.UNMASK)
        graph, members = self._graph(), self._roster().by_node()
        payload, dealt = self._survivors_payload(), self._dealers_payload()
        signed = {
            n
            for n, sig in signatures.items()
            if n in members and verify(members[n].node_key, SURVIVORS, payload, sig)
        } | {self.node}
        alive = set(self.survivors)
        seed, key, pair = {}, {}, {}
        for owner in sorted(
            set(self.seed_shares) | (graph.neighbours(self.node) & set(self.dealers))
        ):
            if len(signed & set(graph.holders(owner))) < self.params.threshold:
                continue  # too few of its holders agree on the survivors: reveal nothing
            if owner in alive:
                vouched = owner == self.node or verify(
                    members[owner].node_key, MASKED_WITH, dealt, masked_with.get(owner, b"")
                )
                if vouched and owner in self.seed_shares:
                    seed[owner] = self.seed_shares[owner]
            elif owner != self.node:
                if owner in self.key_shares:
                    key[owner] = self.key_shares[owner]
                pair[owner] = self.pair_keys[owner]
        return UnmaskShares(seed, key, pair)

    def _dealers_payload(self) -> bytes:
        return dealers_payload(self.params.session, self._roster().digest, self.dealers)

    def _survivors_payload(self) -> bytes:
        return survivors_payload(self._dealers_payload(), self.survivors, self.uploads)

    def _receive(self, dealer: int, dealt: Dealt) -> str:
        """Store the shares ``dealer`` sent me; return why they are unusable, or ''.

        Shares that miss the dealer's digests are not kept, so that I never reveal a share
        the server would blame on me. Whether they lie on the dealer's committed polynomial
        is checked by the server if they are ever needed (a Feldman check per share costs t
        scalar multiplications)."""
        ciphertext = dealt.ciphertext
        if dealer in self.seed_shares:
            return "dealt twice"
        if len(ciphertext) != CIPHERTEXT_BYTES:
            return f"ciphertext of {len(ciphertext)} bytes, expected {CIPHERTEXT_BYTES}"
        try:
            plaintext = SecretBox(self.box_keys[dealer]).decrypt(ciphertext)
        except CryptoError:
            return "ciphertext failed authentication"
        session = self.params.session
        if plaintext[:32] != _pack(dealer, self.node, session):
            return "addressed to another node or round"
        seed_share, key_share = plaintext[32:64], plaintext[64:]
        if (
            share_digest(session, dealer, self.node, seed_share) != dealt.seed_digest
            or share_digest(session, dealer, self.node, key_share) != dealt.key_digest
        ):
            return "shares do not match the dealer's digests"
        self.seed_shares[dealer], self.key_shares[dealer] = seed_share, key_share
        return ""

    def _advance(self, stage: Stage) -> None:
        if ORDER.index(stage) != ORDER.index(self.stage) + 1:
            raise ProtocolViolation(
                f"stage {stage.value} cannot follow {self.stage.value} in this round"
            )
        self.stage = stage

    def _roster(self) -> Roster:
        if self.roster is None:
            raise ProtocolViolation("no roster in this round yet")
        return self.roster

    def _graph(self) -> Graph:
        if self.graph is None:
            raise ProtocolViolation("no graph in this round yet")
        return self.graph

    def to_record(self) -> dict[str, ConfigRecordValues]:
        """The session as a flat record (a Flower ClientApp keeps it in ``Context.state``)."""
        owners, peers = sorted(self.seed_shares), sorted(self.pair_keys)
        params: dict[str, int | float | bytes] = self.params.to_record()
        return {
            **{f"param.{k}": v for k, v in params.items()},
            "node": self.node,
            "node_key": self.node_key,
            "stage": self.stage.value,
            "cipher_sk": self.cipher_sk,
            "mask_sk": self.mask_sk,
            "nonce": self.nonce,
            "roster": encode_roster(self.roster) if self.roster else [],
            "ring": list(self.graph.ring) if self.graph else [],
            "seed": self.seed,
            "peers": peers,
            "pair_keys": [self.pair_keys[p] for p in peers],
            "box_keys": [self.box_keys[p] for p in peers],
            "owners": owners,
            "seed_shares": [self.seed_shares[o] for o in owners],
            "key_shares": [self.key_shares[o] for o in owners],
            "dealers": list(self.dealers),
            "upload": self.upload,
            "survivors": list(self.survivors),
            "uploads": list(self.uploads),
        }

    @classmethod
    def from_record(cls, record: Mapping[str, object]) -> DeviceSession:
        """Rebuild the session this device stored itself (checked for shape all the same)."""
        try:
            params = RoundParams.from_record(
                {k[6:]: v for k, v in record.items() if k.startswith("param.")}
            )
            roster_items = _list(record, "roster", bytes)
            roster = decode_roster(roster_items) if roster_items else None
            ring = tuple(_list(record, "ring", int))
            graph = None
            if ring and roster is not None:
                graph = Graph(ring, min(params.neighbours, len(ring) - 1))
            peers, owners = _list(record, "peers", int), _list(record, "owners", int)
            return cls(
                node=_one(record, "node", int),
                params=params,
                node_key=_one(record, "node_key", bytes),
                cipher_sk=_one(record, "cipher_sk", bytes),
                mask_sk=_one(record, "mask_sk", bytes),
                nonce=_one(record, "nonce", bytes),
                stage=Stage(_one(record, "stage", str)),
                roster=roster,
                graph=graph,
                seed=_one(record, "seed", bytes),
                pair_keys=dict(zip(peers, _list(record, "pair_keys", bytes), strict=True)),
                box_keys=dict(zip(peers, _list(record, "box_keys", bytes), strict=True)),
                seed_shares=dict(zip(owners, _list(record, "seed_shares", bytes), strict=True)),
                key_shares=dict(zip(owners, _list(record, "key_shares", bytes), strict=True)),
                dealers=tuple(_list(record, "dealers", int)),
                upload=_one(record, "upload", bytes),
                survivors=tuple(_list(record, "survivors", int)),
                uploads=tuple(_list(record, "uploads", bytes)),
            )
        except (KeyError, TypeError, ValueError, FedmarketError) as exc:
            raise ProtocolViolation(f"stored secagg session is unreadable: {exc}") from None


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


def _pack(src: int, dst: int, session: bytes) -> bytes:
    return src.to_bytes(8, "big") + dst.to_bytes(8, "big") + session
