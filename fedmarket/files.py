"""Writing files so that readers see all of a file or none of it, and secrets stay 0600."""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from fedmarket.exceptions import DataError, InvalidInput


def atomic_write(
    dest: Path,
    write: Callable[[BinaryIO], int],
    *,
    mode: int = 0o644,
    temp_dir: Path | None = None,
    temp_prefix: str | None = None,
) -> int:
    """Call ``write`` on a temp file, fsync it, then rename it onto ``dest``.

    The temp file lives next to ``dest`` unless ``temp_dir`` (same file system) is given. If
    ``write`` raises, the temp file is removed and ``dest`` is untouched. Returns what ``write``
    returns (bytes written).
    """
    dest = dest.expanduser()
    if not dest.parent.is_dir():
        raise DataError(f"cannot write {dest}: {dest.parent} is not a directory")
    fd, tmp_name = tempfile.mkstemp(
        prefix=temp_prefix or f".{dest.name}.", suffix=".part", dir=temp_dir or dest.parent
    )
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as out:
            written = write(out)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp_name, dest)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    fsync_directory(dest.parent)
    return written


def fsync_directory(folder: Path) -> None:
    """Make a rename durable (POSIX); a no-op where directories cannot be opened."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_secret(dest: Path, data: bytes, *, overwrite: bool = False) -> None:
    """Write a key file readable by its owner only (0600); refuse to replace one by accident."""
    if dest.exists() and not overwrite:
        raise InvalidInput(f"{dest} exists; refusing to overwrite a key file (choose another path)")
    atomic_write(dest, lambda out: out.write(data), mode=0o600)


def read_secret(path: Path) -> bytes:
    """Read a key file, refusing one that others can read (as ssh does)."""
    try:
        info = path.stat()
        data = path.read_bytes()
    except (FileNotFoundError, IsADirectoryError, PermissionError) as exc:
        raise DataError(f"cannot read key file {path}: {exc.strerror}") from None
    if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise InvalidInput(
            f"key file {path} is readable by other users (mode {stat.S_IMODE(info.st_mode):o}); "
            f"run `chmod 600 {path}`"
        )
    return data


def read_hex_secret(path: Path, size: int, *, what: str) -> bytes:
    """Read a 0600 key file holding ``size`` bytes as hex."""
    text = read_secret(path).strip()
    try:
        secret = bytes.fromhex(text.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        secret = b""
    if len(secret) != size:
        raise DataError(f"{path} does not hold {what} ({2 * size} hex characters expected)")
    return secret
