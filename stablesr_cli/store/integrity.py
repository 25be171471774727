"""Cheap checks of converted `.safetensors` files, without torch and without reading the tensors.

A safetensors file is an 8-byte little-endian header length, a JSON header giving each tensor's
byte range, then the tensor bytes. The header alone says how long the file must be, so a truncated
or padded file is caught by one `stat` and one small read. Flipped bytes inside the tensors need
the full SHA-256 check (`stablesr weights verify`).
"""

from __future__ import annotations

import json
import os
import stat
import struct
from pathlib import Path
from typing import Any

_MAX_HEADER = 100_000_000  # the safetensors format's own limit


class HeaderError(ValueError):
    """A safetensors header that cannot be read or does not fit the file."""


def read_header(path: Path) -> tuple[dict[str, Any], int]:
    """The JSON header of a safetensors file and the file size it implies; raises HeaderError."""
    try:
        info = os.stat(path)
        if not stat.S_ISREG(info.st_mode):
            raise HeaderError("not a regular file")
        with open(path, "rb") as fh:
            prefix = fh.read(8)
            if len(prefix) < 8:
                raise HeaderError(f"only {len(prefix)} bytes long")
            (length,) = struct.unpack("<Q", prefix)
            if not 0 < length <= min(_MAX_HEADER, info.st_size - 8):
                raise HeaderError("the header is cut off or its length is corrupt")
            header = json.loads(fh.read(length))
    except FileNotFoundError:
        raise HeaderError("missing") from None
    except OSError as exc:
        raise HeaderError(f"cannot be read ({exc.strerror or exc})") from None
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise HeaderError("the header is not valid JSON") from None
    if not isinstance(header, dict):
        raise HeaderError("the header is not a JSON object")
    end = 0
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets)):
            raise HeaderError(f"tensor '{name}' has no valid data_offsets")
        end = max(end, offsets[1])
    return header, 8 + length + end


def metadata(path: Path) -> dict[str, str]:
    """The `__metadata__` block of a safetensors file ({} when absent); raises HeaderError."""
    header, _ = read_header(path)
    meta = header.get("__metadata__") or {}
    return {str(k): str(v) for k, v in meta.items()} if isinstance(meta, dict) else {}


def file_problem(path: Path, expected_size: int | None = None) -> str | None:
    """Why a converted file is unusable (missing, truncated, padded, a bad header), or None.

    `expected_size`: the size recorded at conversion, when known.
    """
    try:
        _, implied = read_header(path)
        actual = path.stat().st_size
    except HeaderError as exc:
        return str(exc)
    except OSError as exc:
        return f"cannot be read ({exc.strerror or exc})"
    if expected_size is not None and actual != expected_size:
        return f"{actual} bytes, {expected_size} were written at conversion (truncated or replaced)"
    if actual < implied:
        return f"truncated: {actual} of {implied} bytes"
    if actual > implied:
        return f"{actual - implied} bytes more than its header describes"
    return None
