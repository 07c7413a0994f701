"""MNIST-format IDX files (http://yann.lecun.com/exdb/mnist/), plain or gzip-compressed."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from fedmarket.exceptions import DataError

# Third byte of the magic number -> element type (big-endian on disk).
_IDX_TYPES: dict[int, str] = {
    0x08: ">u1",
    0x09: ">i1",
    0x0B: ">i2",
    0x0C: ">i4",
    0x0D: ">f4",
    0x0E: ">f8",
}


def read_idx(path: Path) -> NDArray[np.generic]:
    """Read one IDX file into an array, checking the header against the payload size."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read IDX file {path}: {exc.strerror}") from None
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as exc:
            raise DataError(f"{path}: corrupt gzip stream ({exc})") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_TYPES:
        raise DataError(f"{path}: not an IDX file (bad magic number)")
    ndim = raw[3]
    header_end = 4 + 4 * ndim
    if ndim == 0 or len(raw) < header_end:
        raise DataError(f"{path}: IDX header is truncated")
    shape = struct.unpack(f">{ndim}I", raw[4:header_end])
    dtype = np.dtype(_IDX_TYPES[raw[2]])
    expected = int(np.prod(shape)) * dtype.itemsize
    payload = raw[header_end:]
    if len(payload) != expected:
        raise DataError(
            f"{path}: header promises {expected} bytes of data for shape {shape}, "
            f"file has {len(payload)}"
        )
    return np.frombuffer(payload, dtype=dtype).reshape(shape)
