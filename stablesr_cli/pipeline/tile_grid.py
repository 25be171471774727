"""Full-size activations handled as grids of non-overlapping tiles, for the lean tiled VAE (vae_tiling.py).

A `TileGrid` is one full-size tensor on its storage device plus the tile layout a layer works
through; a `GridWriter` fills a layer's output core by core. `release_freed_host_memory` hands the
pages of freed tile temporaries back to the system after each layer.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Box:
    """Rows [y0, y1) and columns [x0, x1) of a feature map."""

    y0: int
    y1: int
    x0: int
    x1: int


class TileGrid:
    """A [B, C, H, W] activation on its storage device, handled as non-overlapping `side` x `side` tiles
    (smaller at the right/bottom edges), row-major; `stride` is the feature map's downscale from the image.

    The tiles live in ONE full-size tensor (`data`), written core by core as a layer produces them. Kept as
    separate tensors, thousands of tile-sized blocks came and went per decode and the C allocator kept the
    freed ones (glibc serves blocks under its mmap threshold, up to 32 MiB, from a heap it rarely shrinks),
    so the host's peak grew well past the live data: a 512x512 bf16 CFW encode+decode peaked 40% above the
    whole-image VAE. One block per activation is returned to the system as soon as the layer is done with it.
    """

    def __init__(self, data: torch.Tensor, stride: int, side: int):
        self.data, self.stride, self.side = data, stride, side
        self.height, self.width = data.shape[-2:]
        self.columns = -(-self.width // side)
        self.boxes = self.layout(self.height, self.width, side)

    @staticmethod
    def layout(height: int, width: int, side: int) -> list[Box]:
        return [
            Box(y, min(y + side, height), x, min(x + side, width))
            for y in range(0, height, side)
            for x in range(0, width, side)
        ]

    @classmethod
    def split(cls, t: torch.Tensor, stride: int, side: int, storage: torch.device) -> "TileGrid":
        return cls(t.to(storage), stride, side)

    @property
    def tiles(self) -> list[torch.Tensor]:
        return [self.data[..., b.y0:b.y1, b.x0:b.x1] for b in self.boxes]

    @property
    def device(self) -> torch.device:
        return self.data.device

    def read(self, box: Box, device: torch.device) -> torch.Tensor:
        """The region `box` (inside the image) on `device`, a dense tensor in the activation's layout."""
        region = self.data[..., box.y0:box.y1, box.x0:box.x1].to(device)
        return region.contiguous(memory_format=memory_format_of(self.data))


def memory_format_of(t: torch.Tensor) -> torch.memory_format:
    return torch.channels_last if t.ndim == 4 and t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous() else torch.contiguous_format


class GridWriter:
    """Collects the cores of one layer's output into a full-size tensor on the storage device.

    `into`: an existing activation of the output's shape to overwrite core by core instead of allocating
    one; only safe when each core is computed from that activation's own core at most (see `vae_tiling._TiledRunner.resnet`).
    """

    def __init__(self, height: int, width: int, stride: int, side: int, storage: torch.device, into: TileGrid | None = None):
        self.height, self.width, self.stride, self.side, self.storage = height, width, stride, side, storage
        self.boxes = TileGrid.layout(height, width, side)
        self.data: torch.Tensor | None = None if into is None else into.data

    def put(self, box: Box, core: torch.Tensor) -> None:
        if self.data is None:  # shape, dtype and layout of the first core; allocated once per activation
            self.data = torch.empty(
                (*core.shape[:2], self.height, self.width), dtype=core.dtype, device=self.storage,
                memory_format=memory_format_of(core),
            )  # fmt: skip
        self.data[..., box.y0:box.y1, box.x0:box.x1].copy_(core)

    def grid(self) -> TileGrid:
        return TileGrid(self.data, self.stride, self.side)


def read_concat(sources: Sequence[TileGrid], box: Box, device: torch.device) -> torch.Tensor:
    """The channel concatenation of the sources' `box` on `device`, always a fresh dense tensor (callers
    normalise it in place): each source is copied straight into its channel slice, without torch.cat's
    second copy of the whole window."""
    first = sources[0].data
    shape = (first.shape[0], sum(s.data.shape[1] for s in sources), box.y1 - box.y0, box.x1 - box.x0)
    out = torch.empty(shape, dtype=first.dtype, device=device, memory_format=memory_format_of(first))
    start = 0
    for s in sources:
        channels = s.data.shape[1]
        out[:, start:start + channels].copy_(s.data[..., box.y0:box.y1, box.x0:box.x1])
        start += channels
    return out


@functools.cache
def _malloc_trim_function() -> Callable[[int], int] | None:
    """glibc's malloc_trim, or None elsewhere (other C libraries, macOS, Windows)."""
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):
        return None


def release_freed_host_memory() -> None:
    """Give the pages of freed host blocks back to the system after a layer.

    Every layer allocates and frees tile-sized windows, outputs and float32 norm copies of many sizes
    (edge tiles, levels); glibc serves blocks under its mmap threshold (up to 32 MiB) from a heap whose
    free pages it keeps resident, so without this the peak RSS of a lean decode grows layer by layer past
    that of the whole-image VAE. One call per layer costs well under a millisecond.
    """
    trim = _malloc_trim_function()
    if trim is not None:
        trim(0)
