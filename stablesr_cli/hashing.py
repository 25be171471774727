"""SHA-256 of weights files, in constant memory, for regular files only.

Standard library only: checking a download or a converted folder must not import torch.
"""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

from .errors import CheckpointError

CHUNK_BYTES = 8 << 20

_KINDS = (
    (stat.S_ISDIR, "a folder"),
    (stat.S_ISFIFO, "a named pipe (FIFO)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def require_regular_file(path: str | Path, what: str = "checkpoint") -> int:
    """The size of `path` in bytes; raises CheckpointError unless it is a regular file.

    Checked with stat before any open(): opening a FIFO blocks until someone writes to it, and a
    device such as /dev/zero never ends, so hashing or reading one would hang forever.
    """
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such file") from None
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    if not stat.S_ISREG(info.st_mode):
        kind = next((name for test, name in _KINDS if test(info.st_mode)), "not a regular file")
        raise CheckpointError(f"{path}: is {kind}, not a {what} file; give the path of the file itself")
    return info.st_size


def sha256_file(path: str | Path, chunk_bytes: int = CHUNK_BYTES) -> str:
    """Hex SHA-256 of a regular file, read in chunks."""
    require_regular_file(path, "weights")
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as fh:
            while chunk := fh.read(chunk_bytes):
                digest.update(chunk)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such file") from None
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    return digest.hexdigest()
