"""Read a .safetensors file one tensor at a time, with plain file reads instead of a memory map.

Loading a network needs each tensor once, cast to the target dtype. `safetensors.safe_open` maps the
file, and every page a tensor was read from then counts in the process's resident memory until the
file is closed: loading a 4.6 GB float32 UNet into bfloat16 held the 4.6 GB of mapped float32 pages
next to the 2.3 GB of bfloat16 weights. Here a tensor is read into fresh memory with `readinto`, so
after the caller has cast it and dropped the source nothing of the file stays resident (the kernel's
page cache is not the process's memory).

The header is validated as strictly as the safetensors library does (known dtypes, sizes that match
the shapes, tensors that tile the data section exactly, no duplicate names), so a damaged or hostile
file is refused before any tensor is allocated, with an error naming the file.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import BinaryIO

import torch

from ..errors import CheckpointError
from .stream_safetensors import _DTYPE_NAMES

_MAX_HEADER = 100_000_000  # the safetensors format's own limit
_DTYPES = {name: dtype for dtype, name in _DTYPE_NAMES.items()}


@dataclass(frozen=True)
class StoredTensor:
    """Where one tensor's little-endian bytes lie in the file."""

    dtype: torch.dtype
    shape: tuple[int, ...]
    start: int  # absolute offset in the file
    nbytes: int

    def stand_in(self) -> torch.Tensor:
        """A tensor of this shape and dtype on the meta device: for code that needs only shapes."""
        return torch.empty(self.shape, dtype=self.dtype, device="meta")


class SafetensorsReader:
    """An open .safetensors file: its metadata and tensor table up front, tensors read on demand.

    Use as a context manager. `tensors` is ordered by position in the file, so reading in that order
    reads the file front to back.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            self._file: BinaryIO = open(self.path, "rb")
        except FileNotFoundError:
            raise CheckpointError(f"{self.path}: no such file") from None
        except OSError as exc:
            raise CheckpointError(f"{self.path}: cannot be read ({exc.strerror or exc})") from None
        try:
            self.metadata, self.tensors = self._read_header()
        except BaseException:
            self._file.close()
            raise

    def __enter__(self) -> SafetensorsReader:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        self._file.close()

    def _unreadable(self, why: str) -> CheckpointError:
        return CheckpointError(f"{self.path}: unreadable .safetensors file ({why}); it may be truncated")

    def _read_header(self) -> tuple[dict[str, str], dict[str, StoredTensor]]:
        size = self.path.stat().st_size
        head = self._file.read(8)
        if len(head) < 8:
            raise self._unreadable("shorter than its 8-byte header length")
        (header_len,) = struct.unpack("<Q", head)
        if header_len > min(_MAX_HEADER, size - 8):
            raise self._unreadable(f"header length {header_len} exceeds the file")
        try:
            header = json.loads(self._file.read(header_len), object_pairs_hook=_refuse_duplicates)
        except (UnicodeDecodeError, ValueError) as exc:
            raise self._unreadable(f"header is not valid JSON: {exc}") from None
        if not isinstance(header, dict):
            raise self._unreadable("header is not a JSON object")
        metadata = header.pop("__metadata__", None) or {}
        if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
            raise self._unreadable("__metadata__ is not a map of strings")
        data_start = 8 + header_len
        entries = sorted((self._entry(name, info, data_start) for name, info in header.items()), key=lambda e: e[1].start)
        expected = data_start
        for name, tensor in entries:
            if tensor.start != expected:
                raise self._unreadable(f"tensor '{name}' does not start where the previous one ends")
            expected += tensor.nbytes
        if expected != size:
            raise self._unreadable(f"the tensors end at byte {expected}, the file at byte {size}")
        return dict(metadata), dict(entries)

    def _entry(self, name: str, info: object, data_start: int) -> tuple[str, StoredTensor]:
        if not isinstance(info, dict):
            raise self._unreadable(f"entry '{name}' is not an object")
        dtype = _DTYPES.get(info.get("dtype"))  # type: ignore[arg-type]
        shape, offsets = info.get("shape"), info.get("data_offsets")
        if dtype is None:
            raise self._unreadable(f"tensor '{name}' has an unsupported dtype {info.get('dtype')!r}")
        if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
            raise self._unreadable(f"tensor '{name}' has an invalid shape {shape!r}")
        well_formed = isinstance(offsets, list) and len(offsets) == 2 and all(type(o) is int for o in offsets)
        if not well_formed or not 0 <= offsets[0] <= offsets[1]:
            raise self._unreadable(f"tensor '{name}' has invalid data offsets {offsets!r}")
        nbytes = math.prod(shape) * torch.empty(0, dtype=dtype).element_size()
        if offsets[1] - offsets[0] != nbytes:
            raise self._unreadable(f"tensor '{name}' spans {offsets[1] - offsets[0]} bytes, its shape {shape} needs {nbytes}")
        return name, StoredTensor(dtype, tuple(shape), data_start + offsets[0], nbytes)

    def read(self, name: str) -> torch.Tensor:
        """A fresh CPU tensor holding the stored values of `name` (in the file's dtype)."""
        stored = self.tensors[name]
        tensor = torch.empty(stored.shape, dtype=stored.dtype)
        if stored.nbytes:
            view = memoryview(tensor.view(-1).view(torch.uint8).numpy())
            self._file.seek(stored.start)
            done = 0
            while done < stored.nbytes:
                got = self._file.readinto(view[done:])
                if not got:
                    raise self._unreadable(f"tensor '{name}' ends early; the file changed while it was read")
                done += got
        return tensor


def _refuse_duplicates(pairs: list[tuple[str, object]]) -> dict[str, object]:
    names = [name for name, _ in pairs]
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate name {next(n for n in names if names.count(n) > 1)!r}")
    return dict(pairs)
