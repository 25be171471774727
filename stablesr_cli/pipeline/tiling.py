"""Where tiles go and how their outputs are blended (upstream `p_mean_variance_canvas`, `ImageSpliterTh`).

Two grids, both upstream's:
* latent tiles of the canvas sampler (`latent_tiles`): fixed step tile - overlap, the last tile
  pushed back to end exactly at the border; x offsets in the outer loop, y in the inner one;
* pixel patches of `ImageSpliterTh` (`pixel_patches`): starts every `stride` pixels, every start
  that would run past the border pulled back to end at it; heights vary fastest.
Both blend with the same separable Gaussian (`gaussian_weights`), deliberately off-centre in y.
"""

from __future__ import annotations

from functools import lru_cache

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

GAUSSIAN_VARIANCE = 0.01
"""Variance of the tile weight, relative to the squared tile side."""


@dataclass(frozen=True)
class Tile:
    """A rectangle of a [..., H, W] tensor: rows y..y+h, columns x..x+w."""

    y: int
    x: int
    h: int
    w: int

    @property
    def slices(self) -> tuple:
        """Index for `tensor[tile.slices]`: every leading dimension, then the rows and columns."""
        return (Ellipsis, slice(self.y, self.y + self.h), slice(self.x, self.x + self.w))


def _check_length(length: int, what: str) -> None:
    if length < 1:
        raise ValueError(f"{what} must be at least 1, got {length}")


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Offsets of the canvas sampler's tiles along one axis of `length` latent pixels.

    Upstream takes the smallest count n with (n - 1)(tile - overlap) + tile >= length, places tile
    j at j * (tile - overlap) and the last one at length - tile. A side shorter than one tile gets
    the single offset 0 and the caller then uses a tile of `length` there (upstream computes a
    negative offset and crashes, issue #17).
    """
    _check_length(length, "tiled length")
    if tile < 1 or not 0 <= overlap < tile:
        raise ValueError(f"need tile >= 1 and 0 <= overlap < tile, got tile={tile}, overlap={overlap}")
    if length <= tile:
        return [0]
    step = tile - overlap
    count = math.ceil((length - tile) / step) + 1
    return [j * step for j in range(count - 1)] + [length - tile]


def latent_tiles(height: int, width: int, tile: int, overlap: int) -> list[Tile]:
    """Every latent tile, in upstream's order: outer loop over x offsets, inner loop over y.

    Tiles are `tile` square, clipped to the latent where a side is shorter than a tile.
    """
    tile_h, tile_w = min(tile, height), min(tile, width)
    ys = tile_starts(height, tile, overlap)
    return [Tile(y, x, tile_h, tile_w) for x in tile_starts(width, tile, overlap) for y in ys]


def gaussian_weights(tile_h: int, tile_w: int) -> Tensor:
    """float64 [tile_h, tile_w] blending weight, exp(-d^2 / side^2 / (2 var)) / sqrt(2 pi var) per axis.

    Reproduces upstream's `_gaussian_weights` on purpose, asymmetry included: the x profile is
    centred at (w - 1) / 2 (the true middle) but the y profile at h / 2, half a pixel low. Corner
    weights are ~1e-10 of the centre: fine in float32/64, they underflow in float16.
    """
    _check_length(tile_h, "tile height")
    _check_length(tile_w, "tile width")
    norm = np.sqrt(2 * np.pi * GAUSSIAN_VARIANCE)
    xs = np.arange(tile_w, dtype=np.float64)
    x_mid = (tile_w - 1) / 2
    x_probs = np.exp(-(xs - x_mid) * (xs - x_mid) / (tile_w * tile_w) / (2 * GAUSSIAN_VARIANCE)) / norm
    ys = np.arange(tile_h, dtype=np.float64)
    y_mid = tile_h / 2
    y_probs = np.exp(-(ys - y_mid) * (ys - y_mid) / (tile_h * tile_h) / (2 * GAUSSIAN_VARIANCE)) / norm
    return torch.from_numpy(np.outer(y_probs, x_probs))


@lru_cache(maxsize=32)
def device_weights(tile_h: int, tile_w: int, device: torch.device) -> Tensor:
    """`gaussian_weights` on `device`, built and copied once per tile size rather than every step.

    float64 as upstream, except where the device has no float64 (Apple's MPS): float32 there, which
    moves blended values by about one float32 ulp.
    """
    weights = gaussian_weights(tile_h, tile_w)
    if not supports_float64(device):
        weights = weights.to(torch.float32)
    return weights.to(device)


def supports_float64(device: torch.device) -> bool:
    """Apple's MPS backend has no float64 tensors; every other device we run on does."""
    return torch.device(device).type != "mps"


def patch_starts(length: int, patch: int, stride: int) -> list[int]:
    """Starts of `ImageSpliterTh`'s pixel patches along one axis.

    [0] when the side fits in one patch; otherwise every multiple of `stride` below `length`, each
    one that would run past the border replaced by length - patch, duplicates dropped in order.
    """
    _check_length(length, "split length")
    if not 1 <= stride <= patch:
        raise ValueError(f"need 1 <= stride <= patch, got patch={patch}, stride={stride}")
    if length <= patch:
        return [0]
    starts: list[int] = []
    for start in range(0, length, stride):
        start = min(start, length - patch)
        if start not in starts:
            starts.append(start)
    return starts


def pixel_patches(height: int, width: int, patch: int, stride: int) -> list[Tile]:
    """Every pixel patch in upstream's order (patch k: width start k // n_h, height start k % n_h).

    A side shorter than `patch` gets one patch of that side's length.
    """
    patch_h, patch_w = min(patch, height), min(patch, width)
    hs = patch_starts(height, patch, stride)
    return [Tile(y, x, patch_h, patch_w) for x in patch_starts(width, patch, stride) for y in hs]


class GaussianBlender:
    """Sums patch outputs weighted by `gaussian_weights` and returns their weighted mean.

    As `ImageSpliterTh.update_gaussian`: res += patch * weight, count += weight (products in
    float64, accumulators in `dtype`, upstream's is the image's float32), result res / count.
    The weight is built for each patch's actual size: upstream always builds it for patch x patch
    and crashes when only one side of the image exceeds the patch size (the short side's patch
    is then smaller than the weight).
    """

    def __init__(
        self,
        shape: tuple[int, int, int, int],
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> None:
        self._sum = torch.zeros(shape, dtype=dtype, device=device)
        self._weight_sum = torch.zeros(shape, dtype=dtype, device=device)
        # coverage is tracked on the host from the tiles' geometry: checking the device sums would
        # make the host wait for the accelerator at every sampling step
        self._covered = np.zeros(shape[-2:], dtype=bool)

    def _weight(self, h: int, w: int) -> Tensor:
        return device_weights(h, w, self._sum.device)

    def add(self, tile: Tile, patch: Tensor) -> None:
        """Blend in the output of one patch (shape [B, C, tile.h, tile.w])."""
        expected = (*self._sum.shape[:2], tile.h, tile.w)
        if tuple(patch.shape) != expected:
            raise ValueError(f"patch output has shape {tuple(patch.shape)}, its tile needs {expected}")
        if tile.y < 0 or tile.x < 0 or tile.y + tile.h > self._sum.shape[2] or tile.x + tile.w > self._sum.shape[3]:
            raise ValueError(f"{tile} lies outside the {tuple(self._sum.shape[2:])} canvas")
        weight = self._weight(tile.h, tile.w)
        self._sum[tile.slices] += patch * weight
        self._weight_sum[tile.slices] += weight
        self._covered[tile.y:tile.y + tile.h, tile.x:tile.x + tile.w] = True

    def result(self) -> Tensor:
        """The weighted mean of everything added; every pixel must have been covered."""
        if not bool(self._covered.all()):
            raise RuntimeError("some pixels were covered by no patch; add every patch of the grid first")
        return self._sum / self._weight_sum
