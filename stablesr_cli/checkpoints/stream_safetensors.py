"""Write a .safetensors file one tensor at a time, so a conversion never holds a component in memory.

`safetensors.torch.save_file` needs every tensor alive at once; for a converted fp16 UNet that is
1.7 GB of fresh copies, and for an fp32 one it touches all 3.7 GB of the memory-mapped checkpoint
before the first byte is written, all of it counted in the process's resident memory. Here the header
is computed from names, dtypes and shapes alone, then each tensor is prepared (cast, made dense),
written and dropped; `after_bytes` lets the caller release the source pages it has read so far.

The layout is safetensors' own: an 8-byte little-endian header length, the JSON header padded with
spaces to a multiple of 8, then the tensors' bytes back to back in the order `save_file` writes them
(by dtype, then by name), so the tensor bytes are the same as before; any safetensors reader loads it.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable, Mapping
from pathlib import Path

import torch

_DTYPE_NAMES = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8",
    torch.uint8: "U8", torch.bool: "BOOL",
}  # fmt: skip
# safetensors orders tensors by its dtype enum (this order, descending) and then by name
_WRITE_ORDER = ("I64", "F64", "F32", "I32", "BF16", "F16", "I16", "I8", "U8", "BOOL")
# Release the source pages read so far after about this many bytes written.
RELEASE_EVERY_BYTES = 256 << 20


def _nbytes(shape: torch.Size, dtype: torch.dtype) -> int:
    count = 1
    for dim in shape:
        count *= dim
    return count * torch.empty(0, dtype=dtype).element_size()


def write_streamed(
    path: Path,
    sources: Mapping[str, torch.Tensor],
    prepare: Callable[[torch.Tensor], torch.Tensor],
    target_dtype: Callable[[torch.Tensor], torch.dtype],
    metadata: Mapping[str, str],
    *,
    after_bytes: Callable[[], None] | None = None,
) -> None:
    """Write `prepare(t)` for every source tensor; `target_dtype(t)` must be the dtype `prepare` returns,
    known before any tensor is read so the header can be written first."""
    specs = []
    for name, tensor in sources.items():
        dtype = target_dtype(tensor)
        if dtype not in _DTYPE_NAMES:
            raise ValueError(f"tensor '{name}' has dtype {dtype}, which safetensors cannot store")
        specs.append((name, dtype, tensor.shape))
    specs.sort(key=lambda spec: (_WRITE_ORDER.index(_DTYPE_NAMES[spec[1]]), spec[0]))
    header: dict[str, object] = {"__metadata__": dict(sorted(metadata.items()))} if metadata else {}
    offset = 0
    for name, dtype, shape in specs:
        size = _nbytes(shape, dtype)
        header[name] = {"dtype": _DTYPE_NAMES[dtype], "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    encoded = json.dumps(header, separators=(",", ":"), ensure_ascii=True).encode("utf-8")
    encoded += b" " * (-len(encoded) % 8)
    since_release = 0
    with open(path, "wb") as fh:
        fh.write(struct.pack("<Q", len(encoded)))
        fh.write(encoded)
        for name, dtype, shape in specs:
            tensor = prepare(sources[name])
            if tensor.dtype != dtype or tensor.shape != shape or not tensor.is_contiguous():
                raise ValueError(f"tensor '{name}' was prepared as {tensor.dtype} {tuple(tensor.shape)}, expected {dtype} {tuple(shape)}")
            if tensor.numel():
                fh.write(tensor.reshape(-1).view(torch.uint8).numpy().data)
            since_release += tensor.numel() * tensor.element_size()
            del tensor
            if after_bytes is not None and since_release >= RELEASE_EVERY_BYTES:
                after_bytes()
                since_release = 0
    if after_bytes is not None:
        after_bytes()
