"""IpfsStore: an IPFS node's HTTP RPC (``/api/v0``, as kubo serves it) through ipfshttpclient.

Adds use CIDv1, raw leaves and the 256 KiB chunker, so CIDs equal LocalStore's; the daemon's
answer is checked against the CID we compute while the bytes stream out. Reads walk the DAG
with ``block/get`` and check every block, so a faulty or lying node cannot hand back wrong bytes.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from typing import Any, BinaryIO

import ipfshttpclient
from ipfshttpclient import exceptions as ipfs_errors
from multiformats import CID

from fedmarket.exceptions import ContentNotFound, IntegrityError, StoreUnavailable
from fedmarket.store import unixfs
from fedmarket.store.base import ContentStore
from fedmarket.store.cid import BlockRef, canonical, parse_cid
from fedmarket.types import Cid

DEFAULT_API = "/ip4/127.0.0.1/tcp/5001/http"
_UPLOAD_PIECE = 65_536  # bytes per read of an upload; ipfshttpclient's 8 KiB costs throughput
_ADD_OPTIONS: dict[str, Any] = {
    "cid_version": 1,
    "raw_leaves": True,
    "chunker": f"size-{unixfs.CHUNK_SIZE}",
    "pin": True,
}


class IpfsStore(ContentStore):
    """Content on an IPFS node (kubo, or js-ipfs in our tests), reached over its HTTP RPC.

    Parameters
    ----------
    api:
        The node's RPC multiaddr, e.g. ``/ip4/127.0.0.1/tcp/5001/http``.
    timeout:
        Seconds to wait for the node on any one request.
    """

    def __init__(self, api: str = DEFAULT_API, *, timeout: float = 30.0) -> None:
        if timeout <= 0:
            raise ValueError(f"timeout must be positive, got {timeout}")
        self.api = api
        self.timeout = timeout
        try:
            # The constructor, unlike ipfshttpclient.connect(), skips the daemon version check
            # (it only knows kubo 0.4 to 0.8 and would warn on every current node).
            self._client = ipfshttpclient.Client(
                api, timeout=timeout, chunk_size=_UPLOAD_PIECE, session=True
            )
        except ipfs_errors.AddressError as exc:
            raise StoreUnavailable(
                f"{api!r} is not an IPFS API address ({exc}); "
                "give a multiaddr like /ip4/127.0.0.1/tcp/5001/http"
            ) from None

    def __repr__(self) -> str:
        return f"IpfsStore({self.api!r})"

    def close(self) -> None:
        self._client.close()

    def put_stream(self, stream: BinaryIO) -> Cid:
        hashing = _HashingReader(stream)
        with self._errors("add"):
            reply = self._client.add(hashing, **_ADD_OPTIONS)
        ours = canonical(hashing.root().to_cid())
        theirs = canonical(CID.decode(reply["Hash"]))
        if ours != theirs:
            raise IntegrityError(
                f"the IPFS node at {self.api} stored the content as {theirs}, but it hashes to "
                f"{ours} with CIDv1/raw leaves/256 KiB chunks; check the node's add settings"
            )
        return ours

    def iter_content(self, cid: str) -> Iterator[bytes]:
        root = parse_cid(cid)
        if not self.has(cid):
            raise ContentNotFound(f"the IPFS node at {self.api} holds no object {canonical(root)}")
        return unixfs.read(BlockRef.from_cid(root), self._get_block)

    def has(self, cid: str) -> bool:
        """Whether the node keeps ``cid``: pinned recursively (every put pins).

        Asked through ``pin/ls`` because it never searches the network; ``block/stat`` on a
        missing block waits for peers on js-ipfs, which has no ``offline`` switch.
        """
        root = canonical(parse_cid(cid))
        with self._errors("pin/ls"):
            try:
                self._client.pin.ls(root, type="recursive")
            except ipfs_errors.ErrorResponse:
                return False
        return True

    def pin(self, cid: str) -> None:
        """Pin ``cid`` on the node, fetching it from its peers if needed (up to the timeout)."""
        root = canonical(parse_cid(cid))
        with self._errors("pin/add"):
            try:
                self._client.pin.add(root)
            except ipfs_errors.ErrorResponse as exc:
                raise ContentNotFound(
                    f"the IPFS node at {self.api} cannot pin {root}: {exc}"
                ) from None

    def size(self, cid: str) -> int:
        return unixfs.file_size(BlockRef.from_cid(parse_cid(cid)), self._get_block)

    def cat(self, cid: str) -> bytes:
        """The node's own ``cat`` (unchecked); benchmarks compare it with :meth:`get_bytes`."""
        with self._errors("cat"):
            data: bytes = self._client.cat(canonical(parse_cid(cid)))
        return data

    def _get_block(self, ref: BlockRef) -> bytes:
        with self._errors("block/get"):
            try:
                data: bytes = self._client.block.get(str(ref), offline=True)
            except ipfs_errors.ErrorResponse:
                raise ContentNotFound(
                    f"block {ref} is missing from the IPFS node at {self.api}"
                ) from None
        return data

    @contextlib.contextmanager
    def _errors(self, call: str) -> Iterator[None]:
        """Turn transport failures into :class:`StoreUnavailable` naming the node and the call.

        Also silences urllib3's FutureWarning about the ``strict`` argument ipfshttpclient
        still passes: noise for users, nothing they can act on.
        """
        try:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", "The 'strict' parameter", FutureWarning)
                yield
        except ipfs_errors.TimeoutError:
            raise StoreUnavailable(
                f"the IPFS node at {self.api} did not answer {call} within {self.timeout:g} s; "
                "check it is running, or raise --timeout"
            ) from None
        except (ipfs_errors.ConnectionError, ipfs_errors.ProtocolError) as exc:
            raise StoreUnavailable(
                f"cannot reach the IPFS node at {self.api} ({type(exc).__name__}); "
                "start it (`ipfs daemon`) or use --backend local"
            ) from None


class _HashingReader:
    """A file-like view of ``stream`` that builds its DAG (CIDs only) as the client reads it."""

    def __init__(self, stream: BinaryIO) -> None:
        self._stream = stream
        self._dag = unixfs.FileDag()
        self._buffer = bytearray()
        self.name = "content"

    def read(self, size: int = -1) -> bytes:
        data = self._stream.read(size)
        self._buffer += data
        while len(self._buffer) >= unixfs.CHUNK_SIZE:
            self._dag.add(bytes(self._buffer[: unixfs.CHUNK_SIZE]))
            del self._buffer[: unixfs.CHUNK_SIZE]
        return data

    def root(self) -> BlockRef:
        if self._buffer:
            self._dag.add(bytes(self._buffer))
            self._buffer.clear()
        _, root = self._dag.finish()
        return root
