"""Content store and asset encryption throughput, each beside its raw baseline in one run.

- ``cid_vs_sha256``: computing a file's IPFS CID (chunking, raw leaves, dag-pb parents) ÷ one
  ``hashlib.sha256`` over the same bytes (goal >= 0.8).
- ``put_vs_sha256``: LocalStore put (hash + atomic fsynced block writes) ÷ sha256 (report).
- ``encrypt_vs_raw`` / ``decrypt_vs_raw``: our secretstream file format ÷ a bare libsodium
  secretstream loop over the same bytes and chunk size (goal >= 0.8).
- IpfsStore add / cat / verified get against a real daemon (js-ipfs 0.66.1 on loopback).

Ratios are throughput ratios (baseline time ÷ our time); each pair is timed alternately and the
best of ``--repeats`` kept, so both sides see the same machine state.

Run: ``python -m benchmarks.store [--mib 64] [--repeats 3]``.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import nacl.bindings as sodium

from benchmarks.common import write_results
from fedmarket.crypto.asset import CHUNK_SIZE as ENCRYPT_CHUNK
from fedmarket.crypto.asset import AssetKey, decrypt_stream, encrypt_stream
from fedmarket.store import IpfsStore, LocalStore
from fedmarket.store.unixfs import cid_of_bytes

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from ipfs_daemon import IpfsDaemon

MIB = 1024 * 1024


class Discard(io.RawIOBase):
    """A sink that keeps nothing, as the raw loops keep nothing."""

    def writable(self) -> bool:
        return True

    def write(self, data: bytes) -> int:  # type: ignore[override]  # bytes in, count out
        return len(data)


def best_of(repeats: int, *functions: Callable[[], object]) -> list[float]:
    """Time each function ``repeats`` times, interleaved; return each one's best seconds."""
    best = [float("inf")] * len(functions)
    for _ in range(repeats):
        for index, function in enumerate(functions):
            start = time.perf_counter()
            function()
            best[index] = min(best[index], time.perf_counter() - start)
    return best


def raw_encrypt(data: bytes, key: bytes) -> None:
    state = sodium.crypto_secretstream_xchacha20poly1305_state()
    sodium.crypto_secretstream_xchacha20poly1305_init_push(state, key)
    view = memoryview(data)
    last = len(view) - ENCRYPT_CHUNK
    for start in range(0, len(view), ENCRYPT_CHUNK):
        tag = (
            sodium.crypto_secretstream_xchacha20poly1305_TAG_FINAL
            if start >= last
            else sodium.crypto_secretstream_xchacha20poly1305_TAG_MESSAGE
        )
        sodium.crypto_secretstream_xchacha20poly1305_push(
            state, bytes(view[start : start + ENCRYPT_CHUNK]), None, tag
        )


def raw_decrypt(cipher: list[bytes], header: bytes, key: bytes) -> None:
    state = sodium.crypto_secretstream_xchacha20poly1305_state()
    sodium.crypto_secretstream_xchacha20poly1305_init_pull(state, header, key)
    for chunk in cipher:
        sodium.crypto_secretstream_xchacha20poly1305_pull(state, chunk, None)


def raw_ciphertext(data: bytes, key: bytes) -> tuple[bytes, list[bytes]]:
    state = sodium.crypto_secretstream_xchacha20poly1305_state()
    header = sodium.crypto_secretstream_xchacha20poly1305_init_push(state, key)
    chunks = [
        sodium.crypto_secretstream_xchacha20poly1305_push(
            state, data[start : start + ENCRYPT_CHUNK], None, 0
        )
        for start in range(0, len(data), ENCRYPT_CHUNK)
    ]
    return header, chunks


def row(measure: str, size: int, ours: float, baseline: float | None, goal: float | None) -> dict:
    mib = size / MIB
    result = {"measure": measure, "mib": mib, "ours_mib_s": mib / ours, "goal": goal}
    if baseline is not None:
        result["baseline_mib_s"] = mib / baseline
        result["ratio"] = baseline / ours
    print(
        f"{measure:16s} {mib / ours:8.1f} MiB/s"
        + (
            f"  baseline {mib / baseline:8.1f} MiB/s  ratio {baseline / ours:.2f}"
            if baseline
            else ""
        )
    )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=64, help="payload size in MiB")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    data = hashlib.shake_256(b"fedmarket benchmark").digest(args.mib * MIB)
    size = len(data)
    rows = []

    sha, cid = best_of(
        args.repeats, lambda: hashlib.sha256(data).digest(), lambda: cid_of_bytes(data)
    )
    rows.append(row("cid_vs_sha256", size, cid, sha, 0.8))

    with tempfile.TemporaryDirectory(prefix="fedmarket-bench-") as tmp:
        work = Path(tmp)
        source = work / "payload.bin"
        source.write_bytes(data)

        stores: list[LocalStore] = []

        def put() -> None:  # a fresh store each time: no block is ever already present
            stores.append(LocalStore(work / f"store{len(stores)}"))
            stores[-1].put_file(source)

        sha, put_s = best_of(args.repeats, lambda: hashlib.sha256(data).digest(), put)
        rows.append(row("put_vs_sha256", size, put_s, sha, None))
        root = str(cid_of_bytes(data))
        (get_s,) = best_of(args.repeats, lambda: stores[-1].get_bytes(root))
        rows.append(row("local_get", size, get_s, None, None))

        key = AssetKey.generate()

        def ours_encrypt() -> None:
            encrypt_stream(io.BytesIO(data), Discard(), key, size=size)

        raw, ours = best_of(args.repeats, lambda: raw_encrypt(data, key.secret), ours_encrypt)
        rows.append(row("encrypt_vs_raw", size, ours, raw, 0.8))
        sink = io.BytesIO()
        encrypt_stream(io.BytesIO(data), sink, key, size=size)
        cipher = sink.getvalue()
        header, chunks = raw_ciphertext(data, key.secret)

        def ours_decrypt() -> None:
            decrypt_stream(io.BytesIO(cipher), Discard(), key)

        raw, ours = best_of(
            args.repeats, lambda: raw_decrypt(chunks, header, key.secret), ours_decrypt
        )
        rows.append(row("decrypt_vs_raw", size, ours, raw, 0.8))

        with IpfsDaemon(work / "ipfs") as daemon:
            ipfs = IpfsStore(daemon.api, timeout=300)
            added: list[str] = []
            (add_s,) = best_of(args.repeats, lambda: added.append(ipfs.put_file(source)))
            rows.append(row("ipfs_add", size, add_s, None, None))
            cat_s, get_s = best_of(
                args.repeats, lambda: ipfs.cat(added[0]), lambda: ipfs.get_bytes(added[0])
            )
            rows.append(row("ipfs_cat", size, cat_s, None, None))
            rows.append(row("ipfs_get_verified", size, get_s, None, None))
            ipfs.close()

    write_results("store", rows, payload_mib=args.mib, repeats=args.repeats)


if __name__ == "__main__":
    main()
