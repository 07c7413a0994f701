"""SecAgg+: exact sums under dropouts, masks that hide each update, refused bad messages."""

from __future__ import annotations

import dataclasses
import random
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from fedmarket.exceptions import InvalidInput, ProtocolViolation, SecAggAborted
from fedmarket.secagg import shamir
from fedmarket.secagg.codec import Encoded, decode, encode, error_bound, flatten, unflatten
from fedmarket.secagg.config import RoundParams, SecAggConfig
from fedmarket.secagg.device import DeviceSession, MaskedUpload, ShareUpload, Stage, UnmaskShares
from fedmarket.secagg.graph import neighbour_graph
from fedmarket.secagg.keys import PublicKeys, agree
from fedmarket.secagg.local import aggregate_locally
from fedmarket.secagg.masks import apply_masks, mask_key, stream
from fedmarket.secagg.server import Aggregation

SESSION = bytes(range(16))


def params_for(n: int, **overrides: Any) -> RoundParams:
    return SecAggConfig(**overrides).for_cohort(n, session=SESSION)


def random_encodings(
    n: int, length: int, params: RoundParams, seed: int = 0
) -> tuple[dict[int, Encoded], dict[int, np.ndarray]]:
    rng = np.random.default_rng(seed)
    nodes = [int(x) for x in rng.choice(1 << 40, size=n, replace=False)]
    deltas = {i: rng.normal(0, 1.5, length).astype(np.float32) for i in nodes}
    return {i: encode(deltas[i], params) for i in nodes}, deltas


def plain_sum(deltas: dict[int, np.ndarray], nodes: Any, params: RoundParams) -> np.ndarray:
    c = params.clip_range
    return sum(np.clip(deltas[i].astype(np.float64), -c, c) for i in nodes)


# --- masks ---------------------------------------------------------------------------------


def test_the_same_key_gives_the_same_stream_on_device_and_server() -> None:
    alice, bob = DeviceSession.setup(1, params_for(3))[0], DeviceSession.setup(2, params_for(3))[0]
    on_alice = agree(alice.mask_sk, bob.public_keys.mask)
    on_bob = agree(bob.mask_sk, alice.public_keys.mask)
    assert on_alice == on_bob
    key = mask_key(on_alice, SESSION, "pair")
    assert np.array_equal(stream(key, 10_000), stream(mask_key(on_bob, SESSION, "pair"), 10_000))
    assert mask_key(on_alice, SESSION, "self") != key  # purposes never share a stream
    assert mask_key(on_alice, bytes(16), "pair") != key  # nor rounds


def test_streams_look_independent_and_uniform() -> None:
    n = 200_000
    a, b = stream(bytes(32), n), stream(bytes(31) + b"\x01", n)
    assert np.mean(a == b) < 1e-4
    assert abs(np.corrcoef(a.astype(np.float64), b.astype(np.float64))[0, 1]) < 0.01
    # each of the 256 byte values appears about n * 4 / 256 times (chi-square, 255 dof)
    counts = np.bincount(a.view(np.uint8), minlength=256)
    expected = a.size * 4 / 256
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 350  # p ~ 1e-4 under uniformity
    assert abs(a.astype(np.float64).mean() / 2**32 - 0.5) < 0.005


def test_masks_added_then_subtracted_leave_the_vector_unchanged() -> None:
    keys = [bytes([i]) * 32 for i in range(4)]
    vector = np.arange(50_000, dtype=np.uint32)
    masked = vector.copy()
    apply_masks(masked, keys[:2], keys[2:])
    assert not np.array_equal(masked, vector)
    apply_masks(masked, keys[2:], keys[:2])
    assert np.array_equal(masked, vector)


# --- building blocks ------------------------------------------------------------------------


@settings(max_examples=30, deadline=None)
@given(holders=st.integers(2, 25), data=st.data())
def test_any_threshold_shares_rebuild_the_secret(holders: int, data: st.DataObject) -> None:
    t = data.draw(st.integers(2, holders))
    secret = data.draw(st.binary(min_size=32, max_size=32))
    shares = shamir.split(secret, t, holders)
    chosen = data.draw(st.lists(st.sampled_from(shares), min_size=t, max_size=holders, unique=True))
    assert shamir.combine(chosen, t) == secret
    with pytest.raises(ProtocolViolation, match="threshold"):
        shamir.combine(chosen[: t - 1], t)


def test_neighbour_graph_is_k_regular_and_symmetric() -> None:
    nodes = list(range(100, 150))
    graph = neighbour_graph(nodes, 6, random.Random(0))
    assert all(len(peers) == 6 and node not in peers for node, peers in graph.items())
    assert all(node in graph[peer] for node, peers in graph.items() for peer in peers)
    assert graph != neighbour_graph(nodes, 6, random.Random(1))
    with pytest.raises(InvalidInput, match="twice"):
        neighbour_graph([1, 1, 2, 3], 2, random.Random(0))


@pytest.mark.parametrize(
    ("kwargs", "n", "message"),
    [
        ({}, 2, "at least 3 devices"),
        ({"clip_range": 0.0}, 5, "clip_range"),
        ({"neighbours": 3}, 10, "must be even"),
        ({"threshold": 9}, 10, "threshold t must be in"),
        ({"setup_timeout": -1.0}, 5, "setup_timeout"),
    ],
)
def test_parameters_are_validated_naming_the_rule(
    kwargs: dict[str, Any], n: int, message: str
) -> None:
    with pytest.raises(InvalidInput, match=message):
        SecAggConfig(**kwargs).for_cohort(n)


def test_defaults_grow_like_log_n() -> None:
    sizes = {n: params_for(n) for n in (3, 10, 50, 1000)}
    assert [(p.neighbours, p.threshold) for p in sizes.values()] == [
        (2, 2),
        (4, 3),
        (6, 4),
        (10, 6),
    ]
    assert sizes[1000].bits == 22
    assert sizes[3].bits == 30


def test_flatten_and_unflatten_round_trip() -> None:
    like = {"b": np.ones(3, np.float32), "a": np.arange(6, dtype=np.float32).reshape(2, 3)}
    back = unflatten(flatten(like), like)
    assert all(np.array_equal(back[k], like[k]) for k in like)
    with pytest.raises(InvalidInput, match="vector of 8 values"):
        unflatten(np.zeros(8), like)


def test_clip_fraction_counts_clipped_coordinates() -> None:
    params = params_for(3, clip_range=1.0)
    encoded = encode(np.array([0.5, -2.0, 3.0, 1.0], np.float32), params)
    assert encoded.clip_fraction == 0.5
    with pytest.raises(InvalidInput, match="NaN"):
        encode(np.array([np.nan], np.float32), params)


# --- exactness under dropouts ---------------------------------------------------------------


def test_integer_vectors_sum_exactly_mod_2_to_32() -> None:
    params = params_for(12)
    rng = np.random.default_rng(3)
    encoded = {
        node: Encoded(rng.integers(0, 1 << 32, 5000, dtype=np.uint32), 0.0) for node in range(1, 13)
    }
    result = aggregate_locally(
        params, encoded, rng=random.Random(0), drop_before_upload=[4], drop_before_unmask=[7]
    ).result
    assert 4 not in result.survivors
    assert 7 in result.survivors
    expected = np.zeros(5000, np.uint32)
    for node in result.survivors:
        expected += encoded[node].values
    assert np.array_equal(result.total, expected)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(n=st.integers(3, 30), data=st.data())
def test_secure_sum_equals_plain_sum_of_survivors(n: int, data: st.DataObject) -> None:
    params = params_for(n)
    encoded, deltas = random_encodings(n, 64, params, seed=n)
    nodes = list(encoded)
    stages = ("keys", "shares", "upload", "unmask")
    # up to a quarter of the nodes drop, each before a stage of its own
    leaving = data.draw(st.lists(st.sampled_from(nodes), max_size=n // 4 + 1, unique=True))
    when = data.draw(
        st.lists(st.sampled_from(stages), min_size=len(leaving), max_size=len(leaving))
    )
    drops = {s: [node for node, w in zip(leaving, when, strict=True) if w == s] for s in stages}
    try:
        result = aggregate_locally(
            params,
            encoded,
            rng=random.Random(n),
            drop_before_keys=drops["keys"],
            drop_before_shares=drops["shares"],
            drop_before_upload=drops["upload"],
            drop_before_unmask=drops["unmask"],
        ).result
    except SecAggAborted:
        # only when dropouts left some secret with fewer than t live holders
        assert any(drops.values())
        event("aborted")
        return
    event("summed")
    uploaded = set(nodes) - set(drops["keys"]) - set(drops["shares"]) - set(drops["upload"])
    assert set(result.survivors) <= uploaded
    assert len(result.survivors) >= params.threshold
    assert set(result.survivors).isdisjoint(result.dropped)
    decoded = decode(result.total, len(result.survivors), params)
    expected = plain_sum(deltas, result.survivors, params)
    bound = error_bound(params, len(result.survivors))
    assert np.abs(decoded.delta_sum - expected).max() <= bound * 1.000001
    # the clipped share travels in the sum too: the mean of the survivors', to a step
    clipped = np.mean([encoded[i].clip_fraction for i in result.survivors])
    assert decoded.clip_fraction == pytest.approx(clipped, abs=1 / params.levels)


def test_moderate_dropouts_at_every_stage_keep_everyone_who_uploaded() -> None:
    params = params_for(20)
    encoded, deltas = random_encodings(20, 200, params)
    nodes = list(encoded)
    result = aggregate_locally(
        params,
        encoded,
        rng=random.Random(0),
        drop_before_keys=nodes[:1],
        drop_before_shares=nodes[1:2],
        drop_before_upload=nodes[2:3],
        drop_before_unmask=nodes[3:4],
    ).result
    assert set(result.survivors) == set(nodes[3:])
    total = decode(result.total, len(result.survivors), params).delta_sum
    expected = plain_sum(deltas, result.survivors, params)
    assert np.abs(total - expected).max() <= error_bound(params, 17) * 1.000001


def test_too_many_dropouts_abort_the_round_with_a_clear_error() -> None:
    params = params_for(5)  # k = 4, t = 3
    encoded, _ = random_encodings(5, 10, params)
    nodes = list(encoded)
    with pytest.raises(SecAggAborted, match="secure aggregation needs at least 3"):
        aggregate_locally(params, encoded, rng=random.Random(0), drop_before_upload=nodes[:3])


# --- the server never sees an update ---------------------------------------------------------


class RecordingAggregation(Aggregation):
    """The real server logic, recording every upload it is handed."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.received: list[tuple[str, int, Any]] = []

    def receive_masked(self, node: int, vector: Any, mask_peers: Any) -> None:
        self.received.append(("masked", node, vector.copy()))
        super().receive_masked(node, vector, mask_peers)

    def receive_unmask(self, node: int, seed_shares: Any, key_shares: Any) -> None:
        self.received.append(("unmask", node, (dict(seed_shares), dict(key_shares))))
        super().receive_unmask(node, seed_shares, key_shares)


def test_no_masked_vector_equals_or_correlates_with_its_update() -> None:
    params = params_for(10)
    encoded, _ = random_encodings(10, 20_000, params)
    nodes = list(encoded)
    local = aggregate_locally(
        params,
        encoded,
        rng=random.Random(0),
        drop_before_upload=nodes[:1],
        server_type=RecordingAggregation,
    )
    server = local.server
    assert isinstance(server, RecordingAggregation)
    masked = [(node, vector) for kind, node, vector in server.received if kind == "masked"]
    assert len(masked) == 9
    for node, vector in masked:
        plain = encoded[node].values.astype(np.float64)
        assert not np.array_equal(vector, encoded[node].values)
        assert np.mean(vector == encoded[node].values) < 1e-3
        assert abs(np.corrcoef(vector.astype(np.float64), plain)[0, 1]) < 0.05
    # no device ever revealed both a seed share and a mask-key share of the same node
    revealed_seed = {o for k, _, (s, _) in _unmasks(server) for o in s}
    revealed_key = {o for k, _, (_, m) in _unmasks(server) for o in m}
    assert not revealed_seed & revealed_key
    assert nodes[0] in revealed_key


def _unmasks(server: RecordingAggregation) -> list[tuple[str, int, Any]]:
    return [r for r in server.received if r[0] == "unmask"]


# --- malformed and adversarial messages ---------------------------------------------------------


def _run_tampered(n: int, tamper: Any) -> tuple[Any, dict[int, str], dict[int, np.ndarray], Any]:
    params = params_for(n)
    encoded, deltas = random_encodings(n, 100, params)
    local = aggregate_locally(params, encoded, rng=random.Random(0), tamper=tamper)
    total = decode(local.result.total, len(local.result.survivors), params).delta_sum
    expected = plain_sum(deltas, local.result.survivors, params)
    assert np.abs(total - expected).max() <= error_bound(params, len(local.result.survivors)) * 1.01
    return local.result, local.rejected, deltas, encoded


def test_wrong_vector_length_is_rejected_and_the_round_continues() -> None:
    victim: list[int] = []

    def tamper(stage: Stage, node: int, upload: Any) -> Any:
        if stage == Stage.MASK and not victim:
            victim.append(node)
            return dataclasses.replace(upload, vector=upload.vector[:-1].copy())
        return upload

    result, rejected, _, _ = _run_tampered(8, tamper)
    assert "masked vector must be 101 uint32 words" in rejected[victim[0]]
    assert victim[0] not in result.survivors
    assert len(result.survivors) == 7


def test_a_bad_ciphertext_drops_its_sender_not_the_round() -> None:
    victim: list[int] = []

    def tamper(stage: Stage, node: int, upload: Any) -> Any:
        if stage == Stage.SHARE_KEYS and not victim:
            victim.append(node)
            dst = next(iter(upload.ciphertexts))
            bad = bytearray(upload.ciphertexts[dst])
            bad[-1] ^= 1
            return ShareUpload({**upload.ciphertexts, dst: bytes(bad)}, upload.seed_commitment)
        return upload

    result, _, _, _ = _run_tampered(8, tamper)
    assert victim[0] not in result.survivors  # its masks could not cancel with that neighbour
    assert len(result.survivors) == 7


def test_shares_for_unknown_nodes_are_rejected() -> None:
    liar: list[int] = []

    def tamper(stage: Stage, node: int, upload: Any) -> Any:
        if stage == Stage.UNMASK and not liar:
            liar.append(node)
            return UnmaskShares({**upload.seed, 999: bytes(34)}, upload.mask_key)
        return upload

    result, rejected, _, _ = _run_tampered(8, tamper)
    assert "not asked about" in rejected[liar[0]]
    assert liar[0] in result.survivors  # its vector is in; others' shares unmask it


def test_replayed_and_duplicate_messages_are_rejected() -> None:
    params = params_for(4)
    server = Aggregation(params, [1, 2, 3, 4], 11, random.Random(0))
    sessions = {n: DeviceSession.setup(n, params) for n in (1, 2, 3, 4)}
    for node, (_, keys) in sessions.items():
        server.receive_keys(node, keys)
    with pytest.raises(ProtocolViolation, match="replay"):
        server.receive_keys(1, sessions[1][1])
    with pytest.raises(ProtocolViolation, match="not expected"):
        server.receive_keys(9, PublicKeys(bytes(32), bytes([1]) * 32))
    requests = server.close_setup()
    with pytest.raises(ProtocolViolation, match="outside its stage"):
        server.receive_keys(1, sessions[1][1])
    device = sessions[1][0]
    upload = device.share_keys(requests[1])
    with pytest.raises(ProtocolViolation, match="cannot follow"):
        device.share_keys(requests[1])  # a replayed stage message
    server.receive_shares(1, upload.ciphertexts, upload.seed_commitment)
    with pytest.raises(ProtocolViolation, match="replay"):
        server.receive_shares(1, upload.ciphertexts, upload.seed_commitment)
    with pytest.raises(InvalidInput, match="twice"):
        Aggregation(params_for(4), [1, 1, 2, 3], 11, random.Random(0))


def test_reused_public_keys_are_rejected() -> None:
    params = params_for(3)
    server = Aggregation(params, [1, 2, 3], 11, random.Random(0))
    _, keys = DeviceSession.setup(1, params)
    server.receive_keys(1, keys)
    with pytest.raises(ProtocolViolation, match="reuses a public key"):
        server.receive_keys(2, keys)


def test_a_device_never_reveals_both_shares_of_one_node() -> None:
    params = params_for(3)
    sessions = {n: DeviceSession.setup(n, params) for n in (1, 2, 3)}
    keys = {n: k for n, (_, k) in sessions.items()}
    uploads = {n: s.share_keys(keys) for n, (s, _) in sessions.items()}
    device = sessions[1][0]
    inbox = {src: u.ciphertexts[1] for src, u in uploads.items() if src != 1}
    masked = device.mask(inbox, encode(np.zeros(4, np.float32), params))
    assert isinstance(masked, MaskedUpload)
    assert masked.mask_peers == (2, 3)
    with pytest.raises(ProtocolViolation, match="both survivor and dropped"):
        device.unmask([1, 2], [2])


def test_session_round_trips_through_its_record() -> None:
    params = params_for(3)
    session, _ = DeviceSession.setup(7, params)
    assert DeviceSession.from_record(session.to_record()) == session
    with pytest.raises(ProtocolViolation, match="unreadable"):
        DeviceSession.from_record({**session.to_record(), "node": "seven"})
