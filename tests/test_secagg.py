"""SecAgg+: exact sums under dropouts, masks that hide each update, and the attacks of issue 16.

Each attack test plays the hostile server or device and checks that the round either gives
the honest survivors' exact sum or fails cleanly with nothing counted.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from nacl.signing import SigningKey

from fedmarket.exceptions import InvalidInput, ProtocolViolation, SecAggAborted
from fedmarket.secagg.codec import Encoded, decode, encode, flatten, unflatten
from fedmarket.secagg.config import RoundParams, SecAggConfig
from fedmarket.secagg.device import Dealt, DeviceSession, ShareUpload, Stage, privacy_shortfall
from fedmarket.secagg.graph import Graph, ring_order
from fedmarket.secagg.keys import PublicKeys, mask_public, pair_secret, sign
from fedmarket.secagg.local import Dropouts, LocalDevices, aggregate_locally
from fedmarket.secagg.masks import apply_masks, stream
from fedmarket.secagg.parameters import Assumptions
from fedmarket.secagg.roster import Announcement, Roster
from fedmarket.secagg.vss import random_scalar

SESSION = bytes(range(16))


def params_for(n: int, **overrides: Any) -> RoundParams:
    return SecAggConfig(**overrides).for_cohort(n, session=SESSION)


def encodings(n: int, length: int, params: RoundParams, seed: int = 0) -> dict[int, Encoded]:
    rng = np.random.default_rng(seed)
    nodes = [int(x) for x in rng.choice(1 << 40, size=n, replace=False)]
    return {
        i: Encoded(rng.integers(0, params.levels // 2, length, dtype=np.uint32), 0.0) for i in nodes
    }


def dealt(upload: ShareUpload, holder: int) -> Dealt:
    """What the server forwards to ``holder`` of ``upload``."""
    return Dealt(
        upload.ciphertexts[holder], upload.seed_digests[holder], upload.key_digests[holder]
    )


def exact(encoded: dict[int, Encoded], nodes: Any) -> np.ndarray:
    total = np.zeros_like(next(iter(encoded.values())).values)
    for node in nodes:
        total += encoded[node].values
    return total


# --- building blocks ------------------------------------------------------------------------


def test_both_ends_of_a_pair_derive_the_same_secret() -> None:
    a, b = random_scalar(), random_scalar()
    pa, pb = mask_public(a), mask_public(b)
    assert pair_secret(a, pa, pb) == pair_secret(b, pb, pa)
    assert pair_secret(a, pa, pb) != pair_secret(a, pa, mask_public(random_scalar()))


def test_streams_look_uniform_and_masks_cancel() -> None:
    a = stream(bytes(32), 200_000)
    counts = np.bincount(a.view(np.uint8), minlength=256)
    expected = a.size * 4 / 256
    assert float(((counts - expected) ** 2 / expected).sum()) < 350
    keys = [bytes([i]) * 32 for i in range(4)]
    vector = np.arange(50_000, dtype=np.uint32)
    masked = vector.copy()
    apply_masks(masked, keys[:2], keys[2:])
    assert not np.array_equal(masked, vector)
    apply_masks(masked, keys[2:], keys[:2])
    assert np.array_equal(masked, vector)


def test_the_ring_is_k_regular_symmetric_and_fixed_by_the_seed() -> None:
    nodes = list(range(100, 150))
    graph = Graph(ring_order(nodes, bytes(32)), 6)
    assert all(len(graph.neighbours(v)) == 6 for v in nodes)
    assert all(v in graph.neighbours(u) for v in nodes for u in graph.neighbours(v))
    assert graph.ring == ring_order(list(reversed(nodes)), bytes(32))  # input order is moot
    assert graph.ring != ring_order(nodes, bytes(31) + b"\x01")
    with pytest.raises(InvalidInput, match="twice"):
        Graph((1, 1, 2, 3), 2)


def test_two_gaps_of_k_over_2_disconnect_the_survivors() -> None:
    graph = Graph(tuple(range(20)), 4)
    assert graph.connected(set(range(20)) - {3, 4})  # one gap: still a path
    assert not graph.connected(set(range(20)) - {3, 4, 12, 13})  # two gaps: two arcs
    assert graph.connected(set(range(20)) - {3, 12, 13})


def test_parameters_follow_the_bounds_and_weak_ones_are_refused() -> None:
    assert (params_for(20).neighbours, params_for(20).threshold) == (8, 6)
    with pytest.raises(InvalidInput, match="privacy"):  # the old rule: k = 2 ceil(log2 n / 2)
        params_for(20, neighbours=6, threshold=4)
    with pytest.raises(InvalidInput, match="at least 3 devices"):
        params_for(2)
    with pytest.raises(InvalidInput):  # three devices cannot hold if one may collude
        params_for(3)
    few = params_for(3, assumptions=Assumptions(corrupt_fraction=0.0))
    assert (few.neighbours, few.threshold) == (2, 2)


def test_flatten_round_trips_and_infinity_is_refused_not_clipped() -> None:
    like = {"b": np.ones(3, np.float32), "a": np.arange(6, dtype=np.float32).reshape(2, 3)}
    back = unflatten(flatten(like), like)
    assert all(np.array_equal(back[k], like[k]) for k in like)
    params = params_for(6, clip_range=1.0)
    assert encode(np.array([0.5, -2.0, 3.0, 1.0], np.float32), params).clip_fraction == 0.5
    for bad in (np.inf, -np.inf, np.nan):
        with pytest.raises(InvalidInput, match="NaN or infinity"):
            encode(np.array([0.0, bad], np.float32), params)


# --- exactness under dropouts ---------------------------------------------------------------


def test_the_secure_sum_is_the_exact_sum_with_no_dropouts() -> None:
    params = params_for(12)
    encoded = encodings(12, 3000, params)
    round_ = aggregate_locally(params, encoded)
    assert round_.result.survivors == tuple(sorted(encoded))
    assert np.array_equal(round_.result.total, exact(encoded, encoded))


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(n=st.integers(6, 24), data=st.data())
def test_dropouts_at_every_stage_leave_the_exact_sum_of_survivors_or_abort(
    n: int, data: st.DataObject
) -> None:
    params = params_for(n)
    encoded = encodings(n, 64, params, seed=n)
    nodes = sorted(encoded)
    drops = Dropouts(
        **{
            stage.value: data.draw(st.lists(st.sampled_from(nodes), max_size=2, unique=True))
            for stage in Stage
        }
    )
    try:
        round_ = aggregate_locally(params, encoded, drops=drops)
    except SecAggAborted:
        return
    result = round_.result
    assert not set(result.survivors) & (set(drops.setup) | set(drops.roster) | set(drops.mask))
    assert np.array_equal(result.total, exact(encoded, result.survivors))


def test_dropouts_that_could_split_the_ring_abort_cleanly_and_fewer_do_not() -> None:
    """The privacy bound is rechecked with the dropouts seen: with k = 8 at n = 20, 3 gone keep
    2^-40 (two gaps of 4 cannot form), 8 gone do not, and the round stops before unmasking."""
    params = params_for(20)
    encoded = encodings(20, 32, params)
    nodes = sorted(encoded)
    few = aggregate_locally(params, encoded, drops=Dropouts(mask=nodes[:3])).result
    assert len(few.survivors) == 17
    assert privacy_shortfall(params, 20, 3) == ""
    assert "privacy failure bound" in privacy_shortfall(params, 20, 8)
    with pytest.raises(SecAggAborted):
        aggregate_locally(params, encoded, drops=Dropouts(mask=nodes[:8]))


# --- attacks (issue 16) ---------------------------------------------------------------------


def test_a_withheld_nonce_voids_the_draw_and_the_round_goes_on_without_it() -> None:
    params = params_for(10)
    encoded = encodings(10, 32, params)
    liar = sorted(encoded)[0]
    round_ = aggregate_locally(params, encoded, drops=Dropouts(roster=[liar]))
    assert round_.draws == 2
    assert liar not in round_.result.survivors
    assert np.array_equal(round_.result.total, exact(encoded, round_.result.survivors))


def test_the_graph_cannot_be_ground_by_the_server_or_its_colluders() -> None:
    """The seed hashes every member's nonce, revealed only after the roster is fixed: one
    honest nonce the server cannot predict moves every position."""
    params = params_for(20)
    devices = {
        n: DeviceSession.setup(n, params, SigningKey.generate(), params.assumptions)
        for n in range(1, 21)
    }
    roster = Roster.of(a for _, a in devices.values())
    nonces = {n: s.reveal(roster) for n, (s, _) in devices.items()}
    seed = roster.graph_seed(nonces)
    with pytest.raises(ProtocolViolation, match="does not open"):
        roster.graph_seed({**nonces, 20: os.urandom(32)})  # no nonce changes after the roster
    orders = {ring_order(roster.nodes, roster.graph_seed(nonces))}
    for _ in range(3):  # the same roster with fresh honest nonces: a fresh ring each time
        fresh = {
            n: DeviceSession.setup(n, params, SigningKey.generate(), params.assumptions)
            for n in range(1, 21)
        }
        other = Roster.of(a for _, a in fresh.values())
        orders.add(
            ring_order(
                other.nodes, other.graph_seed({n: s.reveal(other) for n, (s, _) in fresh.items()})
            )
        )
    assert len(orders) == 4
    assert len(seed) == 32
    with pytest.raises(ProtocolViolation, match="revealed no nonce"):
        roster.graph_seed({n: v for n, v in nonces.items() if n != 3})


def test_a_swapped_key_in_the_roster_is_refused_by_the_devices() -> None:
    params = params_for(10)
    devices = {
        n: DeviceSession.setup(n, params, SigningKey.generate(), params.assumptions)
        for n in range(1, 11)
    }
    members = [a for _, a in devices.values()]
    victim = members[1]
    server_key = mask_public(random_scalar())
    members[1] = dataclasses.replace(victim, keys=PublicKeys(victim.keys.cipher, server_key))
    roster = Roster.of(members)
    nonces = {n: s.reveal(roster) for n, (s, _) in devices.items() if n != victim.node}
    nonces[victim.node] = devices[victim.node][0].nonce
    refusals = []
    for node, (session, _) in devices.items():
        if node == victim.node:
            continue
        try:
            session.share_keys(nonces)
        except ProtocolViolation as exc:
            refusals.append(str(exc))
    assert refusals
    assert all("signature does not verify" in r for r in refusals)
    with pytest.raises(ProtocolViolation, match="altered"):  # and the victim sees it too
        DeviceSession.setup(2, params, SigningKey.generate(), params.assumptions)[0].reveal(roster)


def test_different_survivor_sets_for_different_devices_release_nothing() -> None:
    """The server shows half the holders one survivor set and half another: neither set gathers
    t signatures from a holder group, so no holder reveals a share."""
    params = params_for(6)  # complete graph, t = 4 of 6 holders
    keys = {n: SigningKey.generate() for n in range(1, 7)}
    sessions = {n: DeviceSession.setup(n, params, keys[n], params.assumptions)[0] for n in keys}
    roster = Roster.of(s.announce(keys[n]) for n, s in sessions.items())
    nonces = {n: s.reveal(roster) for n, s in sessions.items()}
    uploads = {n: s.share_keys(nonces) for n, s in sessions.items()}
    dealers = sorted(sessions)
    vouches = {}
    for n, s in sessions.items():
        s.accept_shares(dealers, {d: dealt(u, n) for d, u in uploads.items() if d != n})
        _, vouches[n] = s.mask_update(Encoded(np.zeros(4, np.uint32), 0.0), keys[n])
    everyone, without_1 = dealers, dealers[1:]
    signatures = {}
    for n, s in sessions.items():  # node 1 hears it dropped; 2, 3 hear it survived
        view = everyone if n in (1, 2, 3) else without_1
        try:
            digests = [sessions[m].upload for m in view]
            signatures[n] = (view, s.consistency(view, digests, keys[n]))
        except ProtocolViolation:
            continue
    for n, s in sessions.items():
        if n not in signatures:
            continue
        view = signatures[n][0]
        same = {m: sig for m, (v, sig) in signatures.items() if v == view}
        shares = s.unmask(same, vouches)
        assert 1 not in shares.seed or 1 not in shares.mask_key
        assert not shares.seed
        assert not shares.mask_key


def test_a_poisoned_word_fails_the_round_cleanly() -> None:
    params = params_for(8)
    encoded = encodings(8, 64, params)
    cheat = sorted(encoded)[2]
    encoded[cheat] = Encoded(encoded[cheat].values + np.uint32(1 << 31), 0.0)
    round_ = aggregate_locally(params, encoded)
    with pytest.raises(SecAggAborted, match="out-of-range"):
        decode(round_.result.total, len(round_.result.survivors), params)


def test_a_false_share_at_unmask_is_caught_and_the_sum_is_still_exact() -> None:
    params = params_for(12)
    encoded = encodings(12, 64, params)
    liar = sorted(encoded)[5]

    def lie(stage: Stage, node: int, upload: Any) -> Any:
        if stage == Stage.UNMASK and node == liar:
            bad = {o: bytes(32 - 1) + b"\x07" for o in upload.seed}
            return dataclasses.replace(upload, seed=bad)
        return upload

    round_ = aggregate_locally(params, encoded, tamper=lie)
    assert np.array_equal(round_.result.total, exact(encoded, round_.result.survivors))
    assert liar in round_.result.liars
    assert liar in round_.result.survivors


def test_a_device_cannot_evict_an_honest_neighbour_by_complaining() -> None:
    params = params_for(12)
    encoded = encodings(12, 64, params)
    nodes = sorted(encoded)
    accuser = nodes[0]

    def accuse(stage: Stage, node: int, upload: Any) -> Any:
        if stage == Stage.MASK and node == accuser:
            vector, vouch, _ = upload
            return vector, vouch, {n: "made up" for n in nodes[1:4] if n != node}
        return upload

    result = aggregate_locally(params, encoded, tamper=accuse).result
    assert set(nodes) - {accuser} <= set(result.survivors)
    assert np.array_equal(result.total, exact(encoded, result.survivors))


def test_a_dealer_off_its_commitments_is_named_and_the_sum_is_exact() -> None:
    params = params_for(12)
    encoded = encodings(12, 64, params)
    cheat = sorted(encoded)[3]

    def deal_badly(stage: Stage, node: int, upload: Any) -> Any:
        if stage == Stage.SHARE_KEYS and node == cheat:
            assert isinstance(upload, ShareUpload)
            holder = next(iter(upload.ciphertexts))
            shuffled = dict(upload.ciphertexts)
            shuffled[holder] = os.urandom(len(shuffled[holder]))  # garbage to one holder
            return dataclasses.replace(upload, ciphertexts=shuffled)
        return upload

    round_ = aggregate_locally(params, encoded, tamper=deal_badly)
    assert np.array_equal(round_.result.total, exact(encoded, round_.result.survivors))
    assert cheat in round_.result.survivors


def test_an_announcement_for_another_node_is_refused() -> None:
    params = params_for(6)
    session, announcement = DeviceSession.setup(
        1, params, SigningKey.generate(), params.assumptions
    )
    assert announcement.problem(SESSION) == ""
    moved = dataclasses.replace(announcement, node=2)
    assert "signature" in moved.problem(SESSION)
    assert Announcement.from_bytes(announcement.to_bytes()) == announcement
    with pytest.raises(ProtocolViolation, match="cannot follow"):
        session.share_keys({})


def test_session_round_trips_through_its_record() -> None:
    params = params_for(6)
    keys = {n: SigningKey.generate() for n in range(1, 7)}
    sessions = {n: DeviceSession.setup(n, params, keys[n], params.assumptions)[0] for n in keys}
    roster = Roster.of(s.announce(keys[n]) for n, s in sessions.items())
    nonces = {n: s.reveal(roster) for n, s in sessions.items()}
    sessions[1].share_keys(nonces)
    back = DeviceSession.from_record(sessions[1].to_record())
    assert back.to_record() == sessions[1].to_record()
    with pytest.raises(ProtocolViolation, match="unreadable"):
        DeviceSession.from_record({"node": 1})


def test_devices_refuse_rounds_weaker_than_their_policy() -> None:
    params = params_for(6, assumptions=Assumptions(corrupt_fraction=0.0))
    with pytest.raises(ProtocolViolation, match="collude"):
        DeviceSession.setup(1, params, SigningKey.generate(), Assumptions())


def test_a_receipt_that_is_not_an_address_or_not_its_signers_is_refused_not_fatal() -> None:
    """It used to stop the paid federation: the server now reads each receipt on arrival and a
    bad one costs only its sender's reward."""
    from eth_account import Account
    from flwr.app import ConfigRecord

    from fedmarket.market.terms import MarketTerms, RoundTerms, read_receipt, sign_upload

    terms = RoundTerms(
        MarketTerms(7, 31337, "0x" + "ab" * 20, "0x" + "cd" * 20), 1, bytes(32), bytes(32)
    )
    upload = np.arange(8, dtype=np.uint32)
    device, other = Account.create(), Account.create()
    good = sign_upload(terms, device, upload, weight=1, epsilon=1.0, delta=1e-5)
    assert read_receipt(good, terms, upload).receipt.device == device.address
    forged = {**dict(good), "device": other.address}
    for bad, why in [
        ({**dict(good), "device": "not an address"}, "unusable receipt"),
        (forged, "signed by"),
        ({**dict(good), "weight": 2**32}, "weight must be 1"),
        ({**dict(good), "signature": b"\x00" * 65}, "unusable receipt"),
    ]:
        with pytest.raises(ProtocolViolation, match=why):
            read_receipt(ConfigRecord(bad), terms, upload)
    with pytest.raises(ProtocolViolation, match="unusable receipt"):
        read_receipt(good, terms, upload + 1)  # not the bytes the device signed


def test_plain_rounds_clip_each_update_so_one_device_cannot_blow_up_the_model() -> None:
    from fedmarket.protocol import TrainReply
    from fedmarket.server.rounds import _clipped

    huge = TrainReply("device-0", "trained", "", 1.0, 1e-5, {"w": np.full(3, 1e30, np.float32)})
    assert np.array_equal(_clipped(huge, 4.0).update["w"], np.full(3, 4.0, np.float32))


def test_the_transcript_holds_every_survivor_and_a_doctored_one_does_not_verify() -> None:
    from fedmarket.market.bundle import ReceiptsBundle
    from fedmarket.secagg.transcript import Transcript, upload_digest

    params = params_for(8)
    encoded = encodings(8, 32, params)
    keys = LocalDevices()
    round_ = aggregate_locally(params, encoded, devices=keys)
    transcript = round_.result.transcript
    assert transcript.problems() == []
    assert transcript.aggregate == upload_digest(round_.result.total)
    for node in round_.result.survivors:
        mine = bytes(keys.key(node).verify_key)
        assert transcript.includes(mine, upload_digest(round_.server.vectors[node]))
    again = Transcript.from_json(transcript.to_json())
    assert again == transcript
    bundle = ReceiptsBundle(1, 1, 31337, "0x" + "ab" * 20, (), transcript.to_json())
    assert ReceiptsBundle.from_bytes(bundle.to_bytes()).transcript == transcript.to_json()
    doctored = dataclasses.replace(transcript, uploads=(bytes(32), *transcript.uploads[1:]))
    assert doctored.problems()  # every signature covers every upload digest
    first = transcript.survivors[0]
    assert not doctored.includes(bytes(keys.key(first).verify_key), transcript.uploads[0])


def test_a_device_refuses_to_sign_survivors_whose_digest_for_it_is_not_its_upload() -> None:
    params = params_for(6)
    keys = {n: SigningKey.generate() for n in range(1, 7)}
    sessions = {n: DeviceSession.setup(n, params, keys[n], params.assumptions)[0] for n in keys}
    roster = Roster.of(s.announce(keys[n]) for n, s in sessions.items())
    nonces = {n: s.reveal(roster) for n, s in sessions.items()}
    uploads = {n: s.share_keys(nonces) for n, s in sessions.items()}
    digests = []
    for n, s in sessions.items():
        s.accept_shares(sorted(keys), {d: dealt(u, n) for d, u in uploads.items() if d != n})
        s.mask_update(Encoded(np.zeros(4, np.uint32), 0.0), keys[n])
        digests.append(s.upload)
    swapped = [digests[1], digests[0], *digests[2:]]  # the server shows node 1 another upload
    with pytest.raises(ProtocolViolation, match="not the one in the sum"):
        sessions[1].consistency(sorted(keys), swapped, keys[1])
    assert len(sessions[2].consistency(sorted(keys), digests, keys[2])) == 64


def test_a_round_whose_clip_fraction_is_not_finite_still_publishes() -> None:
    """It used to stop the paid federation on every resume: canonical JSON has no NaN."""
    from fedmarket.market.bundle import canonical_json
    from fedmarket.server.paid import round_evidence
    from fedmarket.server.results import RoundResult

    result = RoundResult(
        round=1,
        accuracy=float("nan"),
        loss=float("inf"),
        trained=(),
        declined={},
        failed=(),
        epsilon={},
        total_weight=0.0,
        seconds=1.0,
        clip_fraction=float("nan"),
    )
    evidence = round_evidence(result)
    assert evidence["clip_fraction"] is None
    assert canonical_json(evidence)
    params = params_for(6)
    honest = decode(np.full(5, params.levels * 6, np.uint32), 6, params)  # the most it can be
    assert honest.clip_fraction == 1.0


def test_a_dealing_off_its_commitments_aborts_once_naming_the_dealer() -> None:
    """Its holders cannot tell (that would cost a Feldman check per share on every device), so
    the round aborts cleanly; the server names the dealer, and rounds leave it out from then."""
    from fedmarket.exceptions import DealerCheated
    from fedmarket.secagg import vss

    params = params_for(10)
    encoded = encodings(10, 16, params)
    cheat = sorted(encoded)[4]

    def commit_to_another_seed(stage: Stage, node: int, upload: Any) -> Any:
        if stage == Stage.SHARE_KEYS and node == cheat:
            other = vss.deal(vss.random_scalar(), params.threshold, params.neighbours + 1)
            return dataclasses.replace(upload, seed_commitments=other.commitments)
        return upload

    with pytest.raises(DealerCheated) as caught:
        aggregate_locally(params, encoded, tamper=commit_to_another_seed)
    assert caught.value.culprits == (cheat,)


@pytest.mark.parametrize("slot", ["cipher", "mask"])
def test_a_device_announcing_its_node_key_as_a_round_key_drops_only_itself(slot: str) -> None:
    """Red team: Roster.of raised on it and the whole federation stopped."""
    from fedmarket.secagg.roster import ANNOUNCE

    params = params_for(10)
    devices = LocalDevices()
    cheat = sorted(encodings(10, 8, params))[3]

    def tamper(stage: Stage, node: int, upload: Any) -> Any:
        if stage == Stage.SETUP and node == cheat:
            own = upload.node_key
            keys = (
                PublicKeys(own, upload.keys.mask)
                if slot == "cipher"
                else PublicKeys(upload.keys.cipher, own)
            )
            copied = dataclasses.replace(upload, keys=keys)
            signature = sign(devices.key(node), ANNOUNCE, copied.payload())
            return dataclasses.replace(copied, signature=signature)
        return upload

    round_ = aggregate_locally(params, encodings(10, 8, params), tamper=tamper, devices=devices)
    assert cheat not in round_.result.survivors
    assert len(round_.result.survivors) == 9


def test_a_device_cannot_squat_an_honest_node_key_to_evict_it() -> None:
    """Node keys are public (rosters, transcripts): a round key equal to one is a copy, and the
    copier goes, whoever announced first."""
    from fedmarket.secagg.roster import ANNOUNCE

    params = params_for(10)
    encoded = encodings(10, 8, params)
    attacker, victim = sorted(encoded)[0], sorted(encoded)[7]
    devices = LocalDevices()
    victim_key = bytes(devices.key(victim).verify_key)

    def squat(stage: Stage, node: int, upload: Any) -> Any:
        if stage == Stage.SETUP and node == attacker:
            copied = dataclasses.replace(upload, keys=PublicKeys(victim_key, upload.keys.mask))
            signature = sign(devices.key(node), ANNOUNCE, copied.payload())
            return dataclasses.replace(copied, signature=signature)
        return upload

    result = aggregate_locally(params, encoded, tamper=squat, devices=devices).result
    assert victim in result.survivors
    assert attacker not in result.survivors


@pytest.mark.parametrize("data", [b"", b"PK\x03\x04" + bytes(26), "npz"])
def test_an_unreadable_array_is_refused_not_fatal(data: Any) -> None:
    """Red team: EOFError, BadZipFile and an NpzFile escaped and stopped the server."""
    import io

    from flwr.app import Array

    from fedmarket.exceptions import InvalidInput
    from fedmarket.protocol import read_array

    good = Array(np.zeros(4, np.uint32))
    if data == "npz":
        buffer = io.BytesIO()
        np.savez(buffer, a=np.zeros(4, np.uint32))
        data = buffer.getvalue()
    bad = Array(dtype=good.dtype, shape=good.shape, stype=good.stype, data=data)
    with pytest.raises(InvalidInput, match="masked vector"):
        read_array(bad, "masked vector")


@pytest.mark.parametrize("node", [str(2**64), "-1", 1.9, True, " 1_0 ", "01"])
def test_a_transcript_with_a_bad_node_id_is_refused_cleanly(node: Any) -> None:
    from fedmarket.exceptions import DataError
    from fedmarket.secagg.transcript import Transcript

    row = {"node": node, "node_key": "00" * 32, "upload": "00" * 32, "signature": None}
    data = {
        "session": "00" * 16,
        "roster_digest": "00" * 32,
        "dealers": [node],
        "aggregate": "00" * 32,
        "survivors": [row],
    }
    with pytest.raises(DataError):
        Transcript.from_json(data)


def test_a_survivor_that_dropped_before_signing_is_still_found_in_the_transcript() -> None:
    """Red team: it is summed and paid, so its inclusion check must not fail (exit 23)."""
    from fedmarket.secagg.transcript import upload_digest

    params = params_for(10)
    encoded = encodings(10, 16, params)
    late = sorted(encoded)[2]
    keys = LocalDevices()
    round_ = aggregate_locally(params, encoded, drops=Dropouts(consistency=[late]), devices=keys)
    transcript = round_.result.transcript
    assert late in round_.result.survivors
    assert late not in transcript.signatures
    mine = bytes(keys.key(late).verify_key)
    assert transcript.includes(mine, upload_digest(round_.server.vectors[late]))
    assert not transcript.includes(mine, bytes(32))
