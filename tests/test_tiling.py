"""pipeline.tiling: latent tile grid, pixel patch grid, Gaussian weights and blending."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from stablesr_cli.pipeline.tiling import (
    GaussianBlender,
    Tile,
    gaussian_weights,
    latent_tiles,
    patch_starts,
    pixel_patches,
    tile_starts,
)

PROPERTY = settings(max_examples=50, deadline=None, derandomize=True)


@pytest.mark.parametrize(
    ("length", "tile", "overlap", "starts"),
    [
        (64, 64, 32, [0]),
        (96, 64, 32, [0, 32]),
        (100, 64, 32, [0, 32, 36]),
        (128, 64, 32, [0, 32, 64]),
        (200, 64, 32, [0, 32, 64, 96, 128, 136]),
        (160, 96, 48, [0, 48, 64]),
        (40, 64, 32, [0]),
    ],
)
def test_tile_starts_match_upstream_examples(length, tile, overlap, starts):
    assert tile_starts(length, tile, overlap) == starts


@st.composite
def tile_grids(draw):
    tile = draw(st.integers(min_value=1, max_value=40))
    overlap = draw(st.integers(min_value=0, max_value=tile - 1))
    length = draw(st.integers(min_value=1, max_value=300))
    return length, tile, overlap


@PROPERTY
@given(tile_grids())
def test_tile_starts_cover_everything_in_bounds_with_the_fewest_tiles(grid):
    length, tile, overlap = grid
    starts = tile_starts(length, tile, overlap)
    size = min(tile, length)  # the caller's tile on a side shorter than a tile
    assert starts == sorted(set(starts)) and starts[0] == 0
    assert all(0 <= s and s + size <= length for s in starts)
    assert starts[-1] + size == length
    covered = {p for s in starts for p in range(s, s + size)}
    assert covered == set(range(length))
    # neighbours overlap by at least `overlap`, and one tile fewer could not reach the end
    assert all(b - a <= tile - overlap for a, b in zip(starts, starts[1:]))
    if len(starts) > 1:
        assert (len(starts) - 2) * (tile - overlap) + tile < length


@PROPERTY
@given(tile_grids(), st.integers(min_value=1, max_value=120))
def test_latent_tiles_run_y_inside_x_and_cover_the_latent(grid, height):
    width, tile, overlap = grid
    width = min(width, 120)  # keeps the number of tiles (one slice each) small
    tiles = latent_tiles(height, width, tile, overlap)
    ys, xs = tile_starts(height, tile, overlap), tile_starts(width, tile, overlap)
    assert [(t.x, t.y) for t in tiles] == [(x, y) for x in xs for y in ys]
    canvas = torch.zeros(height, width)
    for t in tiles:
        assert (t.h, t.w) == (min(tile, height), min(tile, width))
        assert canvas[t.slices].shape == (t.h, t.w)
        canvas[t.slices] += 1
    assert bool((canvas > 0).all())


def test_canvas_grid_of_the_golden_sampling_case():
    # 06_sampling: latent 16x20, tile 12, overlap 4 -> x offsets [0, 8], y offsets [0, 4]
    assert [(t.y, t.x) for t in latent_tiles(16, 20, 12, 4)] == [(0, 0), (4, 0), (0, 8), (4, 8)]


def test_tile_arguments_are_checked():
    with pytest.raises(ValueError, match="overlap < tile"):
        tile_starts(100, 64, 64)
    with pytest.raises(ValueError, match="at least 1"):
        tile_starts(0, 64, 32)
    with pytest.raises(ValueError, match="stride <= patch"):
        patch_starts(3000, 1280, 1300)


@pytest.mark.parametrize(
    ("length", "starts"),
    [(1280, [0]), (700, [0]), (1281, [0, 1]), (2048, [0, 768]), (2500, [0, 1000, 1220]), (3000, [0, 1000, 1720])],
)
def test_patch_starts_match_upstream_examples(length, starts):
    assert patch_starts(length, 1280, 1000) == starts


@st.composite
def patch_grids(draw):
    patch = draw(st.integers(min_value=1, max_value=40))
    stride = draw(st.integers(min_value=1, max_value=patch))
    length = draw(st.integers(min_value=1, max_value=300))
    return length, patch, stride


@PROPERTY
@given(patch_grids())
def test_patch_starts_cover_everything_in_bounds_with_the_fewest_patches(grid):
    length, patch, stride = grid
    starts = patch_starts(length, patch, stride)
    size = min(patch, length)
    assert starts == sorted(set(starts)) and starts[0] == 0
    assert all(0 <= s and s + size <= length for s in starts)
    assert {p for s in starts for p in range(s, s + size)} == set(range(length))
    assert all(b - a <= stride for a, b in zip(starts, starts[1:]))
    if len(starts) > 1:
        assert (len(starts) - 2) * stride + patch < length


def test_pixel_patches_vary_heights_fastest():
    patches = pixel_patches(2500, 2048, 1280, 1000)
    assert [(p.y, p.x) for p in patches] == [
        (0, 0), (1000, 0), (1220, 0), (0, 768), (1000, 768), (1220, 768),
    ]
    # one side fits in a patch: that side's patch is the side itself (upstream would crash)
    assert pixel_patches(900, 1500, 1280, 1000) == [Tile(0, 0, 900, 1280), Tile(0, 220, 900, 1280)]


def test_gaussian_weights_reference_values_and_asymmetry():
    weights = gaussian_weights(64, 64)
    assert weights.dtype == torch.float64 and weights.shape == (64, 64)
    assert weights[0, 0].item() == pytest.approx(3.2567e-10, rel=1e-4)
    assert weights[32, 31].item() == pytest.approx(15.8670, rel=1e-5)
    # x is centred at (w - 1) / 2 (symmetric), y at h / 2 (not symmetric), as upstream
    assert torch.equal(weights, weights.flip(1))
    assert not torch.equal(weights, weights.flip(0))
    assert weights[32].sum() > weights[31].sum()


@PROPERTY
@given(st.integers(min_value=1, max_value=160), st.integers(min_value=1, max_value=160))
def test_gaussian_weights_are_positive_and_separable(h, w):
    weights = gaussian_weights(h, w)
    assert weights.shape == (h, w)
    assert bool((weights > 0).all()) and bool((weights.float() > 0).all())
    normalised = weights / weights.sum()
    assert normalised.sum().item() == pytest.approx(1.0, abs=1e-12)
    torch.testing.assert_close(weights, torch.outer(weights[:, 0], weights[0]) / weights[0, 0])


def _blend_identity(image: torch.Tensor, patch: int, stride: int, dtype: torch.dtype) -> torch.Tensor:
    blender = GaussianBlender(tuple(image.shape), dtype=dtype)
    for tile in pixel_patches(image.shape[2], image.shape[3], patch, stride):
        blender.add(tile, image[tile.slices])
    return blender.result()


@st.composite
def blend_grids(draw):
    # kept small: every patch is a tensor operation, and stride 1 would mean thousands of them
    patch = draw(st.integers(min_value=2, max_value=24))
    stride = draw(st.integers(min_value=max(1, patch // 3), max_value=patch))
    height = draw(st.integers(min_value=1, max_value=60))
    width = draw(st.integers(min_value=1, max_value=60))
    return height, width, patch, stride


@PROPERTY
@given(blend_grids(), st.integers(min_value=0, max_value=2**31 - 1))
def test_blending_unprocessed_patches_reproduces_the_image(grid, seed):
    height, width, patch, stride = grid
    generator = torch.Generator().manual_seed(seed)
    image = torch.rand(1, 3, height, width, generator=generator) * 2 - 1
    exact = _blend_identity(image, patch, stride, torch.float64)
    assert torch.equal(exact.float(), image)
    upstream = _blend_identity(image, patch, stride, torch.float32)  # upstream's float32 accumulators
    assert upstream.dtype == torch.float32
    torch.testing.assert_close(upstream, image, rtol=0, atol=1e-5)


def test_blender_computes_the_weighted_mean_of_overlapping_patches():
    blender = GaussianBlender((1, 1, 4, 6), dtype=torch.float64)
    left, right = Tile(0, 0, 4, 4), Tile(0, 2, 4, 4)
    blender.add(left, torch.full((1, 1, 4, 4), 1.0, dtype=torch.float64))
    blender.add(right, torch.full((1, 1, 4, 4), 3.0, dtype=torch.float64))
    weight = gaussian_weights(4, 4)
    overlap = (weight[:, 2:] * 1.0 + weight[:, :2] * 3.0) / (weight[:, 2:] + weight[:, :2])
    result = blender.result()[0, 0]
    torch.testing.assert_close(result[:, 2:4], overlap)
    torch.testing.assert_close(result[:, :2], torch.full((4, 2), 1.0, dtype=torch.float64))
    torch.testing.assert_close(result[:, 4:], torch.full((4, 2), 3.0, dtype=torch.float64))


def test_blender_refuses_wrong_patches_and_incomplete_coverage():
    blender = GaussianBlender((1, 3, 8, 8))
    with pytest.raises(ValueError, match="tile needs"):
        blender.add(Tile(0, 0, 4, 4), torch.zeros(1, 3, 4, 5))
    with pytest.raises(ValueError, match="outside"):
        blender.add(Tile(6, 0, 4, 4), torch.zeros(1, 3, 4, 4))
    blender.add(Tile(0, 0, 4, 4), torch.zeros(1, 3, 4, 4))
    with pytest.raises(RuntimeError, match="no patch"):
        blender.result()


def test_tile_slices_index_leading_dimensions():
    tensor = torch.arange(2 * 5 * 7).reshape(2, 5, 7)
    tile = Tile(y=1, x=2, h=3, w=4)
    assert torch.equal(tensor[tile.slices], tensor[:, 1:4, 2:6])
