"""LocalStore: the embedded content store, blocks as files under the data directory.

Layout under ``root``: ``blocks/<xy>/<sha256 hex>`` (blocks keyed by their multihash digest, as
kubo keys them; ``xy`` = its first two hex digits), ``pins/<cid>``, and ``tmp/`` for writes in
progress. Every block is written
to ``tmp/``, fsynced and renamed into place, and a DAG's blocks go children first, root last: a
put killed at any point leaves complete blocks and no visible object, never a torn one.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import BinaryIO

from fedmarket.exceptions import ContentNotFound
from fedmarket.files import atomic_write
from fedmarket.processes import process_alive
from fedmarket.store import unixfs
from fedmarket.store.base import ContentStore
from fedmarket.store.cid import BlockRef, canonical, parse_cid
from fedmarket.types import Cid

_WRITERS = 4  # blocks fsynced in parallel: the file system batches their journal commits


class LocalStore(ContentStore):
    """Blocks on the local file system; CIDs identical to an IPFS node's."""

    def __init__(self, root: Path) -> None:
        self.root = root.expanduser()
        self._blocks = self.root / "blocks"
        self._pins = self.root / "pins"
        self._tmp = self.root / "tmp"
        for folder in (self._blocks, self._pins, self._tmp):
            folder.mkdir(parents=True, exist_ok=True)
        self._remove_stale_temp_files()

    def __repr__(self) -> str:
        return f"LocalStore({str(self.root)!r})"

    # -- writing -------------------------------------------------------------------------------

    def put_stream(self, stream: BinaryIO) -> Cid:
        return self._put_chunks(unixfs.read_chunks(stream))

    def put_bytes(self, data: bytes) -> Cid:
        return self._put_chunks(unixfs.slice_chunks(data))

    def _put_chunks(self, chunks: Iterable[bytes | memoryview]) -> Cid:
        pending: list[Future[None]] = []
        with ThreadPoolExecutor(max_workers=_WRITERS, thread_name_prefix="store") as pool:
            dag = unixfs.FileDag()
            for chunk in chunks:
                for block in dag.add(chunk):
                    pending.append(pool.submit(self._write_block, block))
                pending = self._settle(pending, keep=2 * _WRITERS)  # bounded memory
            blocks, root = dag.finish()
            *children, root_block = blocks
            for block in children:
                pending.append(pool.submit(self._write_block, block))
            self._settle(pending, keep=0)
        self._write_block(root_block)  # last: the object becomes visible only when complete
        return canonical(root.to_cid())

    def pin(self, cid: str) -> None:
        parsed = parse_cid(cid)
        if not self.has(cid):
            raise ContentNotFound(f"cannot pin {canonical(parsed)}: this store does not hold it")
        (self._pins / str(canonical(parsed))).touch()

    def pins(self) -> list[Cid]:
        return sorted(Cid(path.name) for path in self._pins.iterdir())

    # -- reading -------------------------------------------------------------------------------

    def has(self, cid: str) -> bool:
        return self._block_path(BlockRef.from_cid(parse_cid(cid))).is_file()

    def iter_content(self, cid: str) -> Iterator[bytes]:
        root = parse_cid(cid)
        if not self.has(cid):
            raise ContentNotFound(f"this store ({self.root}) holds no object {canonical(root)}")
        return unixfs.read(BlockRef.from_cid(root), self._read_block)

    def size(self, cid: str) -> int:
        return unixfs.file_size(BlockRef.from_cid(parse_cid(cid)), self._read_block)

    # -- blocks --------------------------------------------------------------------------------

    def _block_path(self, ref: BlockRef) -> Path:
        name = ref.digest.hex()
        return self._blocks / name[:2] / name

    def _read_block(self, ref: BlockRef) -> bytes:
        try:
            return self._block_path(ref).read_bytes()
        except FileNotFoundError:
            raise ContentNotFound(
                f"block {ref} is missing from {self.root}; add the content again"
            ) from None

    def _write_block(self, block: unixfs.Block) -> None:
        path = self._block_path(block.ref)
        if path.exists():  # content-addressed: same name, same bytes (checked on every read)
            return
        path.parent.mkdir(exist_ok=True)
        # Temp files carry our pid so a later open can tell a dead writer's leftovers.
        atomic_write(
            path,
            lambda out: out.write(block.data),
            temp_dir=self._tmp,
            temp_prefix=f"{os.getpid()}.",
        )

    @staticmethod
    def _settle(pending: list[Future[None]], *, keep: int) -> list[Future[None]]:
        while len(pending) > keep:
            pending.pop(0).result()
        return pending

    def _remove_stale_temp_files(self) -> None:
        """Delete temp files left by writers that died (their pid is gone)."""
        for path in self._tmp.iterdir():
            pid = path.name.split(".", 1)[0]
            if pid.isdigit() and not process_alive(int(pid)):
                path.unlink(missing_ok=True)
