"""Exact GroupNorm statistics of an activation held as tiles (lean tiled VAE, vae_tiling.py).

Per tile: the count, mean and sum of squared deviations, in float64, merged with Chan et al.'s
parallel formula, which gives the exact global mean and (population) variance. The WebUI's Tiled
VAE instead averages per-tile variances weighted by pixel count, which ignores the spread of the
tile means.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import nn

from .tile_grid import Box, TileGrid

STATS_GROUPS = 4
"""GroupNorm groups whose float64 copy is made at a time while statistics are taken (an eighth of a tile)."""

TileStats = tuple[int, torch.Tensor, torch.Tensor]


def group_values(sources: Sequence[TileGrid], box: Box, c0: int, c1: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Channels [c0, c1) of the sources' concatenation in `box`, as one dense `dtype` tensor."""
    first = sources[0].data
    out = torch.empty((first.shape[0], c1 - c0, box.y1 - box.y0, box.x1 - box.x0), dtype=dtype, device=device)
    start = 0
    for s in sources:
        channels = s.data.shape[1]
        lo, hi = max(c0, start), min(c1, start + channels)
        if lo < hi:
            out[:, lo - c0:hi - c0].copy_(s.data[:, lo - start:hi - start, box.y0:box.y1, box.x0:box.x1])
        start += channels
    return out


def tile_stats(sources: Sequence[TileGrid], box: Box, groups: int, dtype: torch.dtype, device: torch.device) -> TileStats:
    """(values per group, mean, sum of squared deviations) of one tile, per sample and group.

    Taken STATS_GROUPS groups at a time, so the float64 copy is a fraction of the tile (the whole tile in
    float64 was 4x a bf16 activation's tile, twice over with the deviations). Each group is reduced as one
    contiguous row exactly as a whole-tile reduction reduces it, so the statistics are the same bits;
    chunks keep at least two groups, so a reduction is split across threads by group, never within one.
    """
    per_group = sum(s.data.shape[1] for s in sources) // groups
    means, m2s = [], []
    for g0 in range(0, groups, STATS_GROUPS):
        g1 = min(g0 + STATS_GROUPS, groups)
        x = group_values(sources, box, g0 * per_group, g1 * per_group, dtype, device)
        x = x.view(x.shape[0], g1 - g0, -1)
        mean = x.mean(dim=-1)
        means.append(mean)
        m2s.append(x.sub_(mean[..., None]).square_().sum(dim=-1))
    return per_group * (box.y1 - box.y0) * (box.x1 - box.x0), torch.cat(means, dim=1), torch.cat(m2s, dim=1)


def merged_stats(tiles: Iterable[TileStats], eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and 1/sqrt(var + eps) from the (count, mean, sum of squared deviations) of every tile."""
    count = 0
    mean = m2 = None
    for n, tile_mean, tile_m2 in tiles:
        if mean is None:
            count, mean, m2 = n, tile_mean, tile_m2
            continue
        # Chan et al.: merge (count, mean, sum of squared deviations) without cancellation
        total = count + n
        delta = tile_mean - mean
        mean = mean + delta * (n / total)
        m2 = m2 + tile_m2 + delta.square() * (count * n / total)
        count = total
    variance = m2 / count
    return mean, torch.rsqrt(variance + eps)


def group_stats(
    sources: Sequence[TileGrid], norm: nn.GroupNorm, device: torch.device, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact global per-group mean and 1/sqrt(var + eps) over all tiles of the channel-concatenated sources."""
    return merged_stats((tile_stats(sources, box, norm.num_groups, dtype, device) for box in sources[0].boxes), norm.eps)
