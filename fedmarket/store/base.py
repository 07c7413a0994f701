"""The content-store interface: put bytes or files, get them back verified, by CID."""

from __future__ import annotations

import io
from abc import ABC, abstractmethod
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from fedmarket.exceptions import DataError
from fedmarket.files import atomic_write
from fedmarket.types import Cid


class ContentStore(ABC):
    """Content-addressed storage with IPFS-identical CIDs (CIDv1, raw leaves, base32).

    Every read is checked block by block against the CID, so content coming out of any
    store is either authentic or an :class:`~fedmarket.exceptions.IntegrityError`.
    """

    @abstractmethod
    def put_stream(self, stream: BinaryIO) -> Cid:
        """Store everything read from ``stream``; return its CID. Constant memory."""

    @abstractmethod
    def iter_content(self, cid: str) -> Iterator[bytes]:
        """Yield the content of ``cid`` in pieces, each verified before it is yielded."""

    @abstractmethod
    def has(self, cid: str) -> bool:
        """Whether the store holds the object ``cid`` (its root block)."""

    @abstractmethod
    def pin(self, cid: str) -> None:
        """Keep ``cid`` and everything under it from garbage collection."""

    @abstractmethod
    def size(self, cid: str) -> int:
        """Content size in bytes, read from the verified root block."""

    def put_bytes(self, data: bytes) -> Cid:
        return self.put_stream(io.BytesIO(data))

    def put_file(self, path: Path) -> Cid:
        try:
            with path.open("rb") as stream:
                return self.put_stream(stream)
        except (FileNotFoundError, IsADirectoryError, PermissionError) as exc:
            raise DataError(f"cannot read {path}: {exc.strerror}; pass an existing file") from None

    def get_bytes(self, cid: str) -> bytes:
        return b"".join(self.iter_content(cid))

    def get_file(self, cid: str, dest: Path) -> int:
        """Write the content of ``cid`` to ``dest``; ``dest`` appears only once fully verified."""

        def write(out: BinaryIO) -> int:
            written = 0
            for piece in self.iter_content(cid):
                out.write(piece)
                written += len(piece)
            return written

        return atomic_write(dest, write)

    def verify(self, cid: str) -> int:
        """Read ``cid`` completely, checking every block; return its size in bytes."""
        return sum(len(piece) for piece in self.iter_content(cid))
