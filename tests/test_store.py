"""Content store: one conformance suite for LocalStore and IpfsStore (a real IPFS daemon)."""

from __future__ import annotations

import hashlib
import io
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import ipfshttpclient
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from ipfs_daemon import IpfsDaemon
from multiformats import CID

from fedmarket.exceptions import ContentNotFound, DataError, IntegrityError, InvalidInput
from fedmarket.store import ContentStore, IpfsStore, LocalStore, canonical
from fedmarket.store.cid import BlockRef
from fedmarket.store.unixfs import (
    CHUNK_SIZE,
    MAX_LINKS,
    FileDag,
    _Child,
    _parent_block,
    cid_of_bytes,
    cid_of_stream,
)

KIB, MIB = 1024, 1024 * 1024
SIZES = [0, 1, 262_143, 262_144, 262_145, MIB, 10 * MIB]
MISSING = "bafkreie4hmjgceutqgymmw7fdqp7x43haq6hlwkggoz55a6nng4sdqlrpy"


def payload(size: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(size)


def write_big_file(path: Path, size: int, seed: int = 1) -> str:
    """Write ``size`` pseudo-random bytes in 1 MiB pieces; return their sha256."""
    rng, digest = random.Random(seed), hashlib.sha256()
    with path.open("wb") as out:
        for start in range(0, size, MIB):
            piece = rng.randbytes(min(MIB, size - start))
            digest.update(piece)
            out.write(piece)
    return digest.hexdigest()


@pytest.fixture(params=["local", pytest.param("ipfs", marks=pytest.mark.integration)])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ContentStore]:
    if request.param == "local":
        yield LocalStore(tmp_path / "store")
        return
    daemon: IpfsDaemon = request.getfixturevalue("ipfs_daemon")
    ipfs = IpfsStore(daemon.api, timeout=60)
    yield ipfs
    ipfs.close()


# -- conformance: every backend ----------------------------------------------------------------


@pytest.mark.parametrize("size", SIZES)
def test_put_get_round_trip_and_verify(store: ContentStore, size: int) -> None:
    data = payload(size, seed=size)

    cid = store.put_bytes(data)

    assert store.has(cid)
    assert store.get_bytes(cid) == data
    assert store.verify(cid) == size
    assert store.size(cid) == size
    assert cid == canonical(CID.decode(cid))  # printed in canonical base32 CIDv1


def test_same_content_same_cid_files_and_bytes(store: ContentStore, tmp_path: Path) -> None:
    data = payload(3 * CHUNK_SIZE + 7)
    path = tmp_path / "model.safetensors"
    path.write_bytes(data)

    assert store.put_file(path) == store.put_bytes(data) == canonical(cid_of_bytes(data).to_cid())


def test_get_file_writes_only_verified_content(store: ContentStore, tmp_path: Path) -> None:
    data = payload(2 * CHUNK_SIZE + 1)
    cid = store.put_bytes(data)
    out = tmp_path / "out.bin"

    assert store.get_file(cid, out) == len(data)

    assert out.read_bytes() == data
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_missing_content_is_reported_not_guessed(store: ContentStore, tmp_path: Path) -> None:
    assert not store.has(MISSING)
    with pytest.raises(ContentNotFound, match=MISSING):
        store.get_bytes(MISSING)
    with pytest.raises(ContentNotFound):
        store.get_file(MISSING, tmp_path / "never")
    assert not (tmp_path / "never").exists()


@pytest.mark.parametrize("bad", ["", "hello", "bafxyz", "z" * 60])
def test_malformed_cid_is_invalid_input(store: ContentStore, bad: str) -> None:
    with pytest.raises(InvalidInput, match="not a CID"):
        store.has(bad)
    with pytest.raises(InvalidInput, match="not a CID"):
        store.get_bytes(bad)


def test_missing_file_is_a_data_error(store: ContentStore, tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"nothing\.bin"):
        store.put_file(tmp_path / "nothing.bin")


def test_pin_keeps_stored_content(store: ContentStore) -> None:
    cid = store.put_bytes(b"keep me")
    store.pin(cid)
    assert store.get_bytes(cid) == b"keep me"


def test_cidv0_input_is_accepted_and_printed_as_v1(store: ContentStore) -> None:
    cid = store.put_bytes(payload(CHUNK_SIZE + 1))  # dag-pb root, so it has a CIDv0 form
    v0 = CID.decode(cid).set(version=0, base="base58btc").encode()
    assert v0.startswith("Qm")
    assert store.get_bytes(v0) == payload(CHUNK_SIZE + 1)


# -- same CIDs as a real IPFS node -------------------------------------------------------------


@pytest.mark.integration
@pytest.mark.parametrize("size", SIZES)
def test_cids_equal_the_daemons(ipfs_daemon: IpfsDaemon, tmp_path: Path, size: int) -> None:
    path = tmp_path / "file.bin"
    path.write_bytes(payload(size, seed=size + 1))
    # The daemon's own defaults for the chunker and layout; only CID version and leaves set.
    client = ipfshttpclient.Client(ipfs_daemon.api, timeout=60)
    theirs = client.add(str(path), cid_version=1, raw_leaves=True)["Hash"]

    ours = LocalStore(tmp_path / "store").put_file(path)

    assert ours == canonical(CID.decode(theirs))


@pytest.mark.integration
@pytest.mark.slow
def test_50_mib_file_streams_with_the_daemons_cid_in_constant_memory(
    ipfs_daemon: IpfsDaemon, tmp_path: Path
) -> None:
    path = tmp_path / "big.bin"
    digest = write_big_file(path, 50 * MIB)
    client = ipfshttpclient.Client(ipfs_daemon.api, timeout=120)
    theirs = canonical(CID.decode(client.add(str(path), cid_version=1, raw_leaves=True)["Hash"]))
    store = LocalStore(tmp_path / "store")

    tracemalloc.start()
    ours = store.put_file(path)
    store.get_file(ours, tmp_path / "back.bin")
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()

    assert ours == theirs
    assert hashlib.sha256((tmp_path / "back.bin").read_bytes()).hexdigest() == digest
    assert peak < 8 * MIB, f"put+get of 50 MiB peaked at {peak / MIB:.1f} MiB of Python memory"


@pytest.mark.integration
def test_ipfs_store_detects_a_node_that_serves_corrupt_blocks(
    ipfs_daemon: IpfsDaemon,
) -> None:
    ipfs = IpfsStore(ipfs_daemon.api, timeout=60)
    data = payload(CHUNK_SIZE + 5, seed=99)
    cid = ipfs.put_bytes(data)
    leaf = payload(CHUNK_SIZE + 5, seed=99)[:CHUNK_SIZE]
    # js-ipfs keeps blocks as files under repo/blocks; rot one bit of the first leaf there.
    stored = [p for p in (ipfs_daemon.repo / "blocks").rglob("*.data") if p.read_bytes() == leaf]
    assert len(stored) == 1
    rotten = bytearray(leaf)
    rotten[1000] ^= 0x04
    stored[0].write_bytes(bytes(rotten))

    with pytest.raises(IntegrityError, match=r"block bafkrei\w+ of " + cid):
        ipfs.get_bytes(cid)
    with pytest.raises(IntegrityError):
        ipfs.verify(cid)


# -- the DAG layout ----------------------------------------------------------------------------


def _reference_root(leaves: list[bytes]) -> BlockRef:
    """js-ipfs's balanced layout as it is written there: batch into 174s, level by level."""
    if len(leaves) == 1:
        return BlockRef.of("raw", leaves[0])
    nodes = [_Child(BlockRef.of("raw", leaf), len(leaf), len(leaf)) for leaf in leaves]
    while True:
        nodes = [
            _parent_block(nodes[start : start + MAX_LINKS])[1]
            for start in range(0, len(nodes), MAX_LINKS)
        ]
        if len(nodes) == 1:
            return nodes[0].ref


def _streamed_root(leaves: list[bytes]) -> BlockRef:
    dag = FileDag()
    for leaf in leaves:
        dag.add(leaf)
    return dag.finish()[1]


@settings(max_examples=60, deadline=None)
@given(st.integers(min_value=1, max_value=3 * MAX_LINKS + 3))
def test_streaming_builder_matches_the_level_by_level_layout(count: int) -> None:
    # One-byte chunks exercise every partial node and tree depth without big data.
    leaves = [bytes([i % 256]) for i in range(count)]
    assert _streamed_root(leaves) == _reference_root(leaves)


def test_three_level_tree_matches_the_level_by_level_layout() -> None:
    leaves = [bytes([i % 256]) for i in range(MAX_LINKS * MAX_LINKS + 1)]
    assert _streamed_root(leaves) == _reference_root(leaves)


def test_the_root_is_never_emitted_before_finish() -> None:
    dag = FileDag()
    emitted = [block for i in range(MAX_LINKS + 1) for block in dag.add(bytes([i % 256]))]
    blocks, root = dag.finish()

    assert root not in [block.ref for block in emitted]
    assert blocks[-1].ref == root
    assert sum(block.ref.codec == "dag-pb" for block in emitted) == 1  # the full 174-leaf node


def test_cid_of_stream_equals_cid_of_bytes() -> None:
    data = payload(5 * CHUNK_SIZE + 3)
    assert cid_of_stream(io.BytesIO(data)) == cid_of_bytes(data)


# -- LocalStore: corruption and crashes --------------------------------------------------------


def _block_files(store: LocalStore) -> list[Path]:
    return sorted(p for p in (store.root / "blocks").rglob("*") if p.is_file())


@pytest.mark.parametrize("which", ["leaf", "root"])
def test_flipped_bit_is_an_integrity_error_naming_the_cid(tmp_path: Path, which: str) -> None:
    store = LocalStore(tmp_path / "store")
    data = payload(3 * CHUNK_SIZE)
    cid = store.put_bytes(data)
    leaf_digest = hashlib.sha256(data[:CHUNK_SIZE]).hexdigest()
    root_digest = CID.decode(cid).raw_digest.hex()
    target = next(
        p
        for p in _block_files(store)
        if p.name == (leaf_digest if which == "leaf" else root_digest)
    )
    rotten = bytearray(target.read_bytes())
    rotten[len(rotten) // 2] ^= 0x10
    target.write_bytes(bytes(rotten))

    with pytest.raises(IntegrityError, match="bafkrei" if which == "leaf" else cid):
        store.get_bytes(cid)
    with pytest.raises(IntegrityError):
        store.verify(cid)
    with pytest.raises(IntegrityError):
        store.get_file(cid, tmp_path / "out.bin")
    assert not (tmp_path / "out.bin").exists()


_SLOW_PUT = textwrap.dedent(
    """
    import random, sys, time
    from pathlib import Path
    from fedmarket.store import LocalStore

    class Slow:
        def __init__(self):
            self.rng = random.Random(7)
            self.left = int(sys.argv[2])
        def read(self, n=-1):
            n = min(n if n >= 0 else self.left, self.left, 65536)
            self.left -= n
            time.sleep(0.002)
            return self.rng.randbytes(n)

    print("started", flush=True)
    LocalStore(Path(sys.argv[1])).put_stream(Slow())
    print("finished", flush=True)
    """
)


def test_sigkill_during_a_large_put_leaves_no_partial_object(tmp_path: Path) -> None:
    root = tmp_path / "store"
    store = LocalStore(root)
    kept = store.put_bytes(b"stored before the crash")
    size = 40 * MIB
    rng = random.Random(7)
    expected = cid_of_bytes(
        b"".join(rng.randbytes(min(65536, size - i)) for i in range(0, size, 65536))
    )
    process = subprocess.Popen([sys.executable, "-c", _SLOW_PUT, str(root), str(size)])
    deadline = time.monotonic() + 60
    while len(_block_files(store)) < 20:  # mid-put: some blocks written, most not
        assert process.poll() is None, "the writer finished before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()

    reopened = LocalStore(root)  # cleans the dead writer's temp files

    expected_cid = canonical(expected.to_cid())
    assert not reopened.has(expected_cid)
    assert list((root / "tmp").iterdir()) == []
    assert reopened.get_bytes(kept) == b"stored before the crash"
    rng = random.Random(7)
    again = b"".join(rng.randbytes(min(65536, size - i)) for i in range(0, size, 65536))
    assert reopened.put_bytes(again) == expected_cid
    assert reopened.verify(expected_cid) == size


def test_local_pin_of_absent_content_fails(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    with pytest.raises(ContentNotFound, match="does not hold"):
        store.pin(MISSING)
    cid = store.put_bytes(b"x")
    store.pin(cid)
    assert store.pins() == [cid]


def test_block_files_are_named_by_digest_and_sharded(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    store.put_bytes(b"abc")
    (block,) = _block_files(store)
    assert block.name == hashlib.sha256(b"abc").hexdigest()
    assert block.parent.name == block.name[:2]
    assert os.stat(block).st_size == 3
