"""Fitting the work to the device's memory: how many latent tiles go through the UNet at once
(`--tile-batch auto`), and the cheaper settings to retry an image with after running out of memory.

Tile batching changes results by float rounding at most (every operation is per sample); smaller
tiles or lean VAE tiling change them slightly more. Every retry is announced.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator

import torch

from ..options import UpscaleOptions, VaeTiling

HEADROOM = 0.8
"""Share of the free device memory a tile batch may take: the allocator fragments, and the
blend buffers and the VAE need room as well."""

MIN_RETRY_TILE = 256
"""Smallest diffusion tile (pixels) an out-of-memory retry goes down to: below it the tiles see too
little context and seams start to show."""

LEAN_RETRY_TILE = 512
"""VAE tile side (pixels) for the last retry with lean VAE tiling."""

_measured: dict[tuple[int, int, torch.dtype, torch.device], int] = {}


def auto_tile_batch(predict_one: Callable[[], object], tile: int, tiles: int, device: torch.device, dtype: torch.dtype, key: int) -> int:
    """The largest tile batch that fits in the device's free memory, at most `tiles`.

    The memory of one tile is measured once per model, tile size and dtype by running
    `predict_one()` (one UNet call on one tile) and reading the allocator's peak; CPUs (no such
    accounting, and no speed gain from larger batches) get 1.
    """
    if device.type != "cuda" or tiles <= 1:
        return 1
    cache_key = (key, tile, dtype, device)
    if cache_key not in _measured:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        predict_one()
        torch.cuda.synchronize(device)
        _measured[cache_key] = max(1, torch.cuda.max_memory_allocated(device) - before)
    free, _ = torch.cuda.mem_get_info(device)
    return int(max(1, min(tiles, (free * HEADROOM) // _measured[cache_key])))


def retry_settings(options: UpscaleOptions, native_tile_px: int) -> Iterator[tuple[UpscaleOptions, str]]:
    """Cheaper settings to retry an image with after an out-of-memory error, cheapest change first:
    one tile per UNet call (the same result up to rounding), then smaller diffusion tiles, then lean VAE tiling.
    Yields (options, what changed)."""
    current = options
    if current.tile_batch != 1:
        current = dataclasses.replace(current, tile_batch=1)
        yield current, "one diffusion tile per model call"
    tile = current.tile_size or native_tile_px
    while tile - 128 >= MIN_RETRY_TILE:
        tile -= 128
        overlap = None if current.tile_overlap is None else min(current.tile_overlap, tile // 2)
        current = dataclasses.replace(current, tile_size=tile, tile_overlap=overlap)
        yield current, f"diffusion tiles of {tile} px"
    if current.vae_tiling is not VaeTiling.LEAN:
        size = min(current.vae_tile_size, LEAN_RETRY_TILE)
        stride = None if current.vae_tile_stride is None else min(current.vae_tile_stride, size)
        current = dataclasses.replace(current, vae_tiling=VaeTiling.LEAN, vae_tile_size=size, vae_tile_stride=stride)
        yield current, f"lean VAE tiling with {current.vae_tile_size} px tiles"


def is_out_of_memory(error: BaseException) -> bool:
    """Out of memory on any device, told by the exception's type: CUDA's `OutOfMemoryError`, Python's
    `MemoryError`; the CPU allocator raises a plain RuntimeError, recognised by its fixed wording."""
    if isinstance(error, (torch.OutOfMemoryError, MemoryError)):
        return True
    return isinstance(error, RuntimeError) and "can't allocate memory" in str(error).lower()


def release_cached_memory(device: torch.device) -> None:
    """Give the allocator's cached blocks back before a retry."""
    if device.type == "cuda":
        torch.cuda.empty_cache()
    elif device.type == "mps":
        torch.mps.empty_cache()
