"""The UnixFS file layout that ``ipfs add --cid-version=1 --raw-leaves`` builds, and its reader.

``multiformats`` gives CIDs and multihashes but no dag-pb/UnixFS codec, so the few protobuf
fields a file DAG uses are written here. A file is cut into 256 KiB chunks stored as raw blocks;
parents are dag-pb nodes of at most 174 links with a UnixFS ``File`` header; a one-chunk file is
its raw leaf. The tree is balanced: every leaf sits at the same depth, filled left to right.
Encoding follows the dag-pb canonical form (links before data, ``Name`` written even when empty),
so our CIDs equal kubo's and js-ipfs's; tests compare them with a real daemon.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import BinaryIO

from multiformats import varint

from fedmarket.exceptions import IntegrityError, InvalidInput
from fedmarket.store.cid import DAG_PB, RAW, BlockRef

CHUNK_SIZE = 262_144
"""kubo's default chunker (``size-262144``)."""
MAX_LINKS = 174
"""kubo's and js-ipfs's maximum links per balanced-DAG node."""

_UNIXFS_RAW = 0
_UNIXFS_FILE = 2
_WIRE_VARINT = 0
_WIRE_BYTES = 2


@dataclass(frozen=True, slots=True)
class Block:
    """One stored block: its address and bytes."""

    ref: BlockRef
    data: bytes | memoryview


@dataclass(frozen=True, slots=True)
class _Child:
    ref: BlockRef
    file_size: int  # bytes of file content below this link
    tree_size: int  # bytes of all blocks below this link (dag-pb Tsize)


# -- protobuf writing --------------------------------------------------------------------------


def _varint(value: int) -> bytes:
    # Protobuf's base-128 varint; written here because multiformats' run-time type checks
    # made it 15 % of the time to add a file.
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _tag(field: int, wire: int) -> bytes:
    return _varint(field << 3 | wire)


def _bytes_field(field: int, value: bytes) -> bytes:
    return _tag(field, _WIRE_BYTES) + _varint(len(value)) + value


def _varint_field(field: int, value: int) -> bytes:
    return _tag(field, _WIRE_VARINT) + _varint(value)


def _parent_block(children: list[_Child]) -> tuple[Block, _Child]:
    file_size = sum(child.file_size for child in children)
    unixfs = _varint_field(1, _UNIXFS_FILE) + _varint_field(3, file_size)
    unixfs += b"".join(_varint_field(4, child.file_size) for child in children)
    links = b"".join(
        _bytes_field(
            2,
            _bytes_field(1, child.ref.binary)
            + _bytes_field(2, b"")
            + _varint_field(3, child.tree_size),
        )
        for child in children
    )
    data = links + _bytes_field(1, unixfs)
    ref = BlockRef.of(DAG_PB, data)
    tree_size = len(data) + sum(child.tree_size for child in children)
    return Block(ref, data), _Child(ref, file_size, tree_size)


# -- building ----------------------------------------------------------------------------------


class FileDag:
    """Builds a file's balanced DAG chunk by chunk, in constant memory per tree level.

    Feed chunks of exactly :data:`CHUNK_SIZE` bytes (the last may be shorter) to :meth:`add`;
    each call returns the blocks now complete (never the root), children before their parents.
    :meth:`finish` returns the remaining blocks, the root last, and the root CID.
    """

    def __init__(self) -> None:
        self._levels: list[list[_Child]] = [[]]
        self._chunks = 0
        self._first: Block | None = None  # held back: a one-chunk file is its own root

    def add(self, chunk: bytes | memoryview) -> list[Block]:
        if len(chunk) > CHUNK_SIZE:
            raise ValueError(f"chunks are at most {CHUNK_SIZE} bytes, got {len(chunk)}")
        leaf = Block(BlockRef.of(RAW, chunk), chunk)
        self._chunks += 1
        out: list[Block] = []
        if self._chunks == 1:
            self._first = leaf
        else:
            if self._first is not None:
                out.append(self._first)
                self._first = None
            out.append(leaf)
        self._push(0, _Child(leaf.ref, len(chunk), len(chunk)), out)
        return out

    def finish(self) -> tuple[list[Block], BlockRef]:
        if self._chunks == 0:
            self.add(b"")  # an empty file is one empty raw leaf, as kubo stores it
        if self._first is not None:
            return [self._first], self._first.ref
        out: list[Block] = []
        level = 0
        while True:
            children = self._levels[level]
            higher = any(self._levels[level + 1 :])
            if len(children) == 1 and not higher:
                return out, children[0].ref
            if children:
                self._levels[level] = []
                block, child = _parent_block(children)
                out.append(block)
                self._push(level + 1, child, out)
            level += 1

    def _push(self, level: int, child: _Child, out: list[Block]) -> None:
        if level == len(self._levels):
            self._levels.append([])
        if len(self._levels[level]) == MAX_LINKS:
            # Close a full node only when a sibling follows: the root is only ever made by finish.
            block, parent = _parent_block(self._levels[level])
            self._levels[level] = []
            out.append(block)
            self._push(level + 1, parent, out)
        self._levels[level].append(child)


def read_chunks(stream: BinaryIO, size: int = CHUNK_SIZE) -> Iterator[bytes]:
    """Yield ``size``-byte chunks (the last may be shorter), filling short reads."""
    while True:
        chunk = stream.read(size)
        if not chunk:
            return
        while len(chunk) < size:
            more = stream.read(size - len(chunk))
            if not more:
                break
            chunk += more
        yield chunk
        if len(chunk) < size:
            return


def slice_chunks(data: bytes) -> Iterator[memoryview]:
    """``data`` as chunks, without copying it."""
    view = memoryview(data)
    for start in range(0, len(view), CHUNK_SIZE):
        yield view[start : start + CHUNK_SIZE]


def cid_of_bytes(data: bytes) -> BlockRef:
    """The root an IPFS node would give ``data`` (``ipfs add --only-hash``)."""
    dag = FileDag()
    for chunk in slice_chunks(data):
        dag.add(chunk)
    return dag.finish()[1]


def cid_of_stream(stream: BinaryIO) -> BlockRef:
    """The root an IPFS node would give everything read from ``stream``; constant memory."""
    dag = FileDag()
    for chunk in read_chunks(stream):
        dag.add(chunk)
    return dag.finish()[1]


# -- reading -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Node:
    links: list[BlockRef]
    data: bytes
    file_size: int


def _fields(buffer: bytes, where: BlockRef) -> Iterator[tuple[int, int | bytes]]:
    view = memoryview(buffer)
    pos = 0
    try:
        while pos < len(view):
            key, used, _ = varint.decode_raw(view[pos:])
            pos += used
            field, wire = key >> 3, key & 7
            value: int | bytes
            if wire == _WIRE_VARINT:
                value, used, _ = varint.decode_raw(view[pos:])
                pos += used
            elif wire == _WIRE_BYTES:
                length, used, _ = varint.decode_raw(view[pos:])
                pos += used
                if pos + length > len(view):
                    raise ValueError("field runs past the end")
                value = bytes(view[pos : pos + length])
                pos += length
            else:
                raise ValueError(f"unexpected wire type {wire}")
            yield field, value
    except ValueError as exc:
        raise IntegrityError(
            f"block {where} hashes correctly but is not valid dag-pb ({exc})"
        ) from None


def _decode_node(ref: BlockRef, block: bytes) -> _Node:
    links: list[BlockRef] = []
    unixfs = b""
    for field, value in _fields(block, ref):
        if field == 2 and isinstance(value, bytes):
            for link_field, link_value in _fields(value, ref):
                if link_field == 1 and isinstance(link_value, bytes):
                    links.append(BlockRef.from_binary(link_value))
        elif field == 1 and isinstance(value, bytes):
            unixfs = value
    kind, data, file_size = -1, b"", 0
    for field, value in _fields(unixfs, ref):
        if field == 1 and isinstance(value, int):
            kind = value
        elif field == 2 and isinstance(value, bytes):
            data = value
        elif field == 3 and isinstance(value, int):
            file_size = value
    if kind not in (_UNIXFS_RAW, _UNIXFS_FILE):
        raise InvalidInput(
            f"{ref} is a UnixFS node of type {kind}, not a file; only files can be read"
        )
    return _Node(links, data, file_size)


def read(root: BlockRef, get_block: Callable[[BlockRef], bytes]) -> Iterator[bytes]:
    """Yield a file's content block by block, checking every block against its CID first."""
    stack = [root]
    while stack:
        ref = stack.pop()
        block = get_block(ref)
        ref.check(block, root=root)
        if ref.codec == RAW:
            yield block
            continue
        node = _decode_node(ref, block)
        if node.data:
            yield node.data
        stack.extend(reversed(node.links))


def file_size(root: BlockRef, get_block: Callable[[BlockRef], bytes]) -> int:
    """Content size from the root block alone (verified)."""
    block = get_block(root)
    root.check(block)
    if root.codec == RAW:
        return len(block)
    return _decode_node(root, block).file_size
