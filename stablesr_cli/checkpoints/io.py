"""Read checkpoint files: official `.ckpt` (safely, see safe_pickle) and `.safetensors`.

The format is decided by the file's first bytes, not its name, so a renamed file still loads and a
file that is neither gives one clear error.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable
from enum import Enum
from pathlib import Path
from typing import Any

import torch

from ..errors import CheckpointError
from .safe_pickle import load_zip_checkpoint, load_zip_checkpoint_mapped

StateDict = dict[str, torch.Tensor]

_ZIP_MAGIC = b"PK\x03\x04"
_LEGACY_PICKLE_PREFIX = b"\x80"  # torch.save before 1.6 wrote a bare pickle stream (protocol 2+)
_SAFETENSORS_MAX_HEADER = 100_000_000  # the safetensors format's own limit


class CheckpointFormat(str, Enum):
    TORCH_ZIP = "torch-zip"
    SAFETENSORS = "safetensors"


def sniff_format(path: str | Path) -> CheckpointFormat:
    """Which reader a file needs, from its first bytes. Raises CheckpointError for anything else."""
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            head = fh.read(9)
            size = path.stat().st_size
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise CheckpointError(f"{path}: is a folder, expected a .ckpt or .safetensors file") from None
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    if head.startswith(_ZIP_MAGIC):
        return CheckpointFormat.TORCH_ZIP
    if len(head) == 9:
        (header_len,) = struct.unpack("<Q", head[:8])
        if head[8:9] == b"{" and 0 < header_len <= min(_SAFETENSORS_MAX_HEADER, size - 8):
            return CheckpointFormat.SAFETENSORS
    if head.startswith(_LEGACY_PICKLE_PREFIX):
        raise CheckpointError(
            f"{path}: a legacy (pre-zip) torch pickle; only zip-format .ckpt and .safetensors files are read. "
            "Re-save it with a recent torch on a machine where you trust it"
        )
    if not head:
        raise CheckpointError(f"{path}: the file is empty")
    raise CheckpointError(f"{path}: neither a torch .ckpt (zip) nor a .safetensors file; check the path")


def read_safetensors(path: str | Path, *, check_finite: bool = True) -> tuple[StateDict, dict[str, str]]:
    """All tensors of a .safetensors file (memory-mapped by safetensors) and its metadata.

    Weights holding NaN or infinity are refused (`check_finite`): they would run and give a black
    or garbage image with no error.
    """
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    try:
        with safe_open(str(path), framework="pt", device="cpu") as fh:
            metadata = dict(fh.metadata() or {})
            tensors = {name: fh.get_tensor(name) for name in fh.keys()}
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: unreadable .safetensors file ({exc}); it may be truncated") from None
    if check_finite:
        ensure_finite(tensors, path)
    return tensors, metadata


def ensure_finite(tensors: dict[str, torch.Tensor], path: str | Path) -> None:
    """Raise CheckpointError naming `path` and the first tensor that holds a NaN or an infinity."""
    for name, tensor in tensors.items():
        if not is_finite(tensor):
            raise CheckpointError(
                f"{path}: tensor '{name}' holds NaN or infinite values; the weights are damaged. "
                "Delete the file and convert or download the model again"
            )


def is_finite(tensor: torch.Tensor) -> bool:
    """Whether every element is a finite number.

    A NaN or an infinity makes the sum NaN or infinite (IEEE arithmetic never cancels them), so a
    finite sum proves the whole tensor finite with one reduction and no temporary. On a full-size
    UNet (919 M parameters, one CPU thread) that takes 0.3 s in fp32, 0.6 s in fp16 and 0.7 s in
    bf16, against 4.9, 4.7 and 13 s for `isfinite().all()`. Only a non-finite sum, which finite
    values can also give by overflowing, needs the exact test.
    """
    if not tensor.is_floating_point() or tensor.numel() == 0:
        return True
    return bool(torch.isfinite(tensor.sum())) or bool(torch.isfinite(tensor).all())


def read_safetensors_metadata(path: str | Path) -> dict[str, str]:
    """Only the metadata block of a .safetensors file (reads the JSON header, no tensor bytes)."""
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            (header_len,) = struct.unpack("<Q", fh.read(8))
            if header_len > _SAFETENSORS_MAX_HEADER:
                raise ValueError("header too large")
            header = json.loads(fh.read(header_len))
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such file") from None
    except (OSError, struct.error, ValueError) as exc:
        raise CheckpointError(f"{path}: unreadable .safetensors header ({exc})") from None
    meta = header.get("__metadata__") or {}
    return {str(k): str(v) for k, v in meta.items()}


def read_checkpoint(path: str | Path) -> Any:
    """The whole top-level object of a checkpoint (a dict for every file we meet).

    `.ckpt`: the Lightning dict (`state_dict`, `epoch`, `callbacks`, ...), unpickled with the
    allowlist unpickler. `.safetensors`: the flat tensor dict.
    """
    fmt = sniff_format(path)
    if fmt is CheckpointFormat.SAFETENSORS:
        return read_safetensors(path)[0]
    return load_zip_checkpoint(path)


def read_state_dict(path: str | Path) -> StateDict:
    """The tensors of a checkpoint keyed by name: `state_dict` unwrapped if present, safetensors as is."""
    return read_state_dict_mapped(path)[0]


def _keep_pages() -> None:
    pass


def read_state_dict_mapped(path: str | Path) -> tuple[StateDict, Callable[[], None]]:
    """`read_state_dict` plus a function that drops the source pages read so far from memory (a
    no-op for safetensors files, which are read whole); for readers that never write to the tensors."""
    path = Path(path)
    release = _keep_pages
    if sniff_format(path) is CheckpointFormat.SAFETENSORS:
        obj: Any = read_safetensors(path)[0]
    else:
        obj, release = load_zip_checkpoint_mapped(path)
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: holds a {type(obj).__name__}, not a state dict")
    tensors = {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
    if not tensors:
        raise CheckpointError(f"{path}: contains no tensors; not a model checkpoint")
    return tensors, release
