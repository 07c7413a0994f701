"""Secure aggregation: ours vs stock Flower SecAgg+, side by side, plus a scale run.

Run: ``python -m benchmarks.secagg [--quick]``. For each cohort size n and model size P both
protocols run one full round in this process with the same n, neighbours k, threshold t and
clip range: ours through :mod:`fedmarket.secagg` (device and server code), stock through the
stage functions of ``flwr.client.mod.secaggplus_mod`` and, on the server, the same steps as
``SecAggPlusWorkflow.unmask_stage`` with Flower's own helpers. Measured per row:

- ``mask_ns_per_param``: one device's quantize + mask time / P (median over the n devices);
- ``upload_bytes_per_param``: the serialised masked vector / P;
- ``unmask_s``: server time from the masked vectors to the unmasked sum;
- ``device_<stage>_ms`` (median over devices) and ``server_<stage>_ms`` (total): what the
  malicious-server variant costs: ``setup`` (sign / verify announcements), ``roster`` (check
  the roster, reveal / check nonces), ``share_keys`` (graph, neighbours' signatures, Feldman
  dealing / checks), ``check_shares`` (decrypt the shares dealt; server: the masked vector
  and its signature), ``consistency`` (check and sign / verify the survivors), ``unmask``
  (verify the holders' signatures, reveal; server: receive);
- ``round_overhead``: a real Flower simulation round with SecAgg+ / the same round without it.

Both protocols run with our k and t (Bell et al.'s bounds at the default assumptions). The
scale run times our protocol alone (all devices in one process) for n = 100, 300, 1000, with
5 % of devices dropping before their masked upload.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Array, ConfigRecordValues
from flwr.client.mod.secure_aggregation.secaggplus_mod import (
    SecAggPlusState,
    _collect_masked_vectors,
    _setup,
    _share_keys,
)
from flwr.common import bytes_to_ndarray, ndarrays_to_parameters
from flwr.common.secure_aggregation.crypto.shamir import combine_shares
from flwr.common.secure_aggregation.ndarrays_arithmetic import (
    factor_extract,
    get_parameters_shape,
    parameters_addition,
    parameters_mod,
    parameters_subtraction,
)
from flwr.common.secure_aggregation.quantization import dequantize
from flwr.common.secure_aggregation.secaggplus_constants import Key
from flwr.common.secure_aggregation.secaggplus_utils import pseudo_rand_gen
from nacl.signing import SigningKey

from benchmarks.common import write_results
from fedmarket.data import DataSource
from fedmarket.privacy import DpConfig, TrainConfig
from fedmarket.secagg.codec import decode, encode
from fedmarket.secagg.config import RoundParams, SecAggConfig
from fedmarket.secagg.device import DeviceSession
from fedmarket.secagg.graph import Graph, ring_order
from fedmarket.secagg.local import Dropouts, aggregate_locally
from fedmarket.secagg.server import Aggregation
from fedmarket.server.plan import FederationPlan
from fedmarket.simulation import SimulatedFleet, run_federation
from strategies import FedAvg

COHORTS = (10, 20, 50)
SIZES = (100_000, 1_000_000)
SCALE = (100, 300, 1000)
CLIP = 4.0
STAGES = ("setup", "roster", "share_keys", "check_shares", "consistency", "unmask")


@contextmanager
def clock(into: list[float]) -> Iterator[None]:
    began = time.perf_counter()
    yield
    into.append(time.perf_counter() - began)


def ours(params: RoundParams, deltas: list[np.ndarray]) -> dict[str, float]:
    """One full round of our SecAgg+ (malicious-server variant), timed stage by stage.

    Device times are medians over the devices; server times are totals for the stage.
    """
    nodes = list(range(1, params.cohort_size + 1))
    keys = {node: SigningKey.generate() for node in nodes}
    server = Aggregation(params, nodes, deltas[0].size + 1)
    device: dict[str, list[float]] = {s: [] for s in STAGES}
    host: dict[str, list[float]] = {s: [] for s in STAGES}
    sessions: dict[int, DeviceSession] = {}
    for node in nodes:
        with clock(device["setup"]):
            sessions[node], announcement = DeviceSession.setup(
                node, params, keys[node], params.assumptions
            )
        with clock(host["setup"]):
            server.receive_announcement(node, announcement)
    with clock(host["setup"]):
        roster = server.close_setup()
    for node in nodes:
        with clock(device["roster"]):
            nonce = sessions[node].reveal(roster)
        with clock(host["roster"]):
            server.receive_nonce(node, nonce)
    with clock(host["roster"]):
        revealed = server.close_roster()
    for node in nodes:
        with clock(device["share_keys"]):
            upload = sessions[node].share_keys(revealed)
        with clock(host["share_keys"]):
            server.receive_shares(node, upload)
    with clock(host["share_keys"]):
        dealers, inboxes = server.close_share_keys()
    mask_times: list[float] = []
    upload_bytes = 0
    for index, node in enumerate(nodes):
        with clock(device["check_shares"]):
            sessions[node].accept_shares(dealers, inboxes[node])
        with clock(mask_times):
            vector, vouch = sessions[node].mask_update(encode(deltas[index], params), keys[node])
        upload_bytes = len(Array(vector).data)
        with clock(host["check_shares"]):  # the mask stage: the vector and its signature
            server.receive_masked(node, vector, vouch, {})
    with clock(host["consistency"]):
        survivors, digests = server.close_masking()
    for node in survivors:
        with clock(device["consistency"]):
            signature = sessions[node].consistency(survivors, digests, keys[node])
        with clock(host["consistency"]):
            server.receive_signature(node, signature)
    with clock(host["consistency"]):
        requests = server.close_consistency()
    for node, (signatures, vouches) in requests.items():
        with clock(device["unmask"]):
            shares = sessions[node].unmask(signatures, vouches)
        with clock(host["unmask"]):
            server.receive_unmask(node, shares)
    began = time.perf_counter()
    result = server.finish()
    decode(result.total, len(result.survivors), params)
    unmask = time.perf_counter() - began
    return {
        "mask_s": statistics.median(mask_times),
        "upload_bytes": upload_bytes,
        "unmask_s": unmask,
        **{f"device_{s}_ms": statistics.median(v) * 1e3 for s, v in device.items()},
        **{f"server_{s}_ms": sum(v) * 1e3 for s, v in host.items()},
    }


def stock(params: RoundParams, deltas: list[np.ndarray]) -> dict[str, float]:
    """Flower 1.41's SecAgg+ device stages, and its server unmask steps, in this process."""
    n, k, t = params.cohort_size, params.neighbours, params.threshold
    nodes = list(range(1, n + 1))
    ring = Graph(ring_order(nodes, bytes(32)), k)
    graph = {node: ring.neighbours(node) for node in nodes}
    states = {}
    keys = {}
    setup: dict[str, ConfigRecordValues] = {
        Key.SAMPLE_NUMBER: n,
        Key.SHARE_NUMBER: k + 1,
        Key.THRESHOLD: t,
        Key.CLIPPING_RANGE: CLIP,
        Key.TARGET_RANGE: 1 << 22,  # Flower's default quantization range
        Key.MOD_RANGE: 1 << 32,
        Key.MAX_WEIGHT: 1.0,  # every update weighs the same, as in ours
    }
    for node in nodes:
        states[node] = SecAggPlusState()
        states[node].nid = node
        out = _setup(states[node], setup)  # type: ignore[arg-type]
        keys[node] = [out[Key.PUBLIC_KEY_1], out[Key.PUBLIC_KEY_2]]
    inboxes: dict[int, dict[int, bytes]] = {node: {} for node in nodes}
    for node in nodes:
        group = sorted(graph[node] | {node})
        out = _share_keys(states[node], {str(j): keys[j] for j in group})  # type: ignore[arg-type]
        destinations, ciphertexts = out[Key.DESTINATION_LIST], out[Key.CIPHERTEXT_LIST]
        for dst, ciphertext in zip(destinations, ciphertexts, strict=True):  # type: ignore[arg-type]
            inboxes[dst][node] = ciphertext
    mask_times, masked, upload_bytes = [], [], 0
    for index, node in enumerate(nodes):
        cfg = {
            Key.CIPHERTEXT_LIST: list(inboxes[node].values()),
            Key.SOURCE_LIST: list(inboxes[node]),
        }
        parameters = ndarrays_to_parameters([deltas[index]])
        began = time.perf_counter()
        out = _collect_masked_vectors(states[node], cfg, 100, parameters)  # type: ignore[arg-type]
        mask_times.append(time.perf_counter() - began)
        blobs = out[Key.MASKED_PARAMETERS]
        upload_bytes = sum(len(b) for b in blobs)  # type: ignore[union-attr]
        masked.append([bytes_to_ndarray(b) for b in blobs])  # type: ignore[union-attr]
    began = time.perf_counter()
    vector = masked[0]
    for other in masked[1:]:
        vector = parameters_addition(vector, other)
    for node in nodes:  # nobody dropped: remove every self mask
        holders = sorted(graph[node] | {node})
        secret = combine_shares([states[h].rd_seed_share_dict[node] for h in holders][:t])
        vector = parameters_subtraction(
            vector, pseudo_rand_gen(secret, 1 << 32, get_parameters_shape(vector))
        )
    vector = parameters_mod(vector, 1 << 32)
    _, vector = factor_extract(vector)
    dequantize(vector, CLIP, 1 << 22)
    unmask = time.perf_counter() - began
    return {
        "mask_s": statistics.median(mask_times),
        "upload_bytes": upload_bytes,
        "unmask_s": unmask,
    }


def round_seconds(devices: int, features: int, secagg: bool, data: Path) -> float:
    """Median wall time of rounds 2-3 of a Flower simulation (round 1 warms up)."""
    fleet = SimulatedFleet(
        source=DataSource(kind="npz", path=str(data)),
        num_devices=devices,
        alpha=None,
        home=Path(tempfile.mkdtemp(prefix="secagg-bench-")),
        epsilon_cap=1e9,
        require_secagg=secagg,
    )
    plan = FederationPlan(
        rounds=3,
        train=TrainConfig(
            learning_rate=0.1, momentum=0.0, sample_rate=0.2, local_steps=5, batch_size=32
        ),
        dp=DpConfig(noise_multiplier=1.0, max_grad_norm=1.0),
        secagg=SecAggConfig(clip_range=CLIP) if secagg else None,
        min_devices=devices,
    )
    result = run_federation(fleet, plan, FedAvg())
    assert all(len(r.trained) == devices for r in result.rounds), "a device dropped"
    return statistics.median(r.seconds for r in result.rounds[1:])


def synthetic_npz(path: Path, samples: int, features: int) -> None:
    """Ten Gaussian classes around random centres."""
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 10, samples)
    centers = rng.normal(0, 1, (10, features)).astype(np.float32)
    x = centers[labels] + rng.normal(0, 1, (samples, features)).astype(np.float32)
    np.savez(path, x=x, y=labels)


def main() -> None:
    logging.getLogger("flwr").setLevel(logging.WARNING)  # stock stages log every step
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke test")
    args = parser.parse_args()
    cohorts, sizes, scale = ((10,), (10_000,), (30,)) if args.quick else (COHORTS, SIZES, SCALE)
    rng = np.random.default_rng(0)
    rows: list[dict[str, Any]] = []
    for params_count in sizes:
        for n in cohorts:
            params = SecAggConfig(clip_range=CLIP).for_cohort(n)
            deltas = [rng.normal(0, 0.05, params_count).astype(np.float32) for _ in range(n)]
            mine, theirs = ours(params, deltas), stock(params, deltas)
            row = {
                "n": n,
                "params": params_count,
                "neighbours": params.neighbours,
                "threshold": params.threshold,
                "mask_ns_per_param": mine["mask_s"] / params_count * 1e9,
                "stock_mask_ns_per_param": theirs["mask_s"] / params_count * 1e9,
                "mask_speedup": theirs["mask_s"] / mine["mask_s"],
                "upload_bytes_per_param": mine["upload_bytes"] / params_count,
                "stock_upload_bytes_per_param": theirs["upload_bytes"] / params_count,
                "unmask_s": mine["unmask_s"],
                "stock_unmask_s": theirs["unmask_s"],
                **{k: v for k, v in mine.items() if k.startswith(("device_", "server_"))},
            }
            rows.append(row)
            print({k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()})

    with tempfile.TemporaryDirectory() as tmp:
        for params_count in sizes:
            features = max(1, round((params_count - 1418) / 128))  # MLP: 128F + 1418
            for n in cohorts:
                data = Path(tmp) / f"synthetic-{features}-{n}.npz"
                synthetic_npz(data, samples=50 * n, features=features)
                plain = round_seconds(n, features, False, data)
                secure = round_seconds(n, features, True, data)
                row = next(r for r in rows if r["n"] == n and r["params"] == params_count)
                row.update(round_s=secure, plain_round_s=plain, round_overhead=secure / plain)
                print(f"n={n} P={params_count}: round {secure:.2f} s vs {plain:.2f} s plain")

    scale_rows = []
    for n in scale:
        params = SecAggConfig(clip_range=CLIP).for_cohort(n)
        length = 10_000
        encoded = {
            node: encode(rng.normal(0, 0.05, length).astype(np.float32), params)
            for node in range(1, n + 1)
        }
        began = time.perf_counter()
        drop = list(range(1, n // 20 + 1))  # 5% vanish after sharing keys
        local = aggregate_locally(params, encoded, drops=Dropouts(mask=drop))
        seconds = time.perf_counter() - began
        scale_rows.append(
            {
                "n": n,
                "params": length,
                "neighbours": params.neighbours,
                "threshold": params.threshold,
                "dropped": len(local.result.dropped),
                "survivors": len(local.result.survivors),
                "round_s_all_devices_one_process": seconds,
                "per_device_ms": seconds / n * 1e3,
            }
        )
        print(scale_rows[-1])
    write_results("secagg", rows, scale=scale_rows, clip_range=CLIP)


if __name__ == "__main__":
    main()
