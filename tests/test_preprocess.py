"""pipeline.preprocess: upscale factor, enlargement, reflect padding, final shrink/crop, 8-bit output."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from stablesr_cli.pipeline.preprocess import (
    finish_output,
    pad_reflect_32,
    prepare_input,
    resize_bicubic,
    to_uint8,
    to_unit_range,
    upscale_factor,
)

PROPERTY = settings(max_examples=50, deadline=None, derandomize=True)
PIPELINE = Path(__file__).parents[1] / "stablesr_cli" / "pipeline"


def test_upscale_factor_enlarges_small_inputs_to_the_native_size():
    assert upscale_factor(100, 200, 4.0, 512) == 5.12
    assert upscale_factor(1000, 800, 4.0, 512) == 4.0
    assert upscale_factor(128, 300, 4.0, 512) == 4.0
    assert upscale_factor(64, 64, 2.5, 768) == 12.0
    with pytest.raises(ValueError, match="at least 1 pixel"):
        upscale_factor(0, 10, 4.0, 512)


def test_prepare_input_resizes_with_truncated_sizes_and_clamps():
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(1, 3, 30, 47, generator=generator) * 2 - 1
    enlarged, s = prepare_input(x, 4.0, 512)
    assert s == 512 / 30
    assert enlarged.shape == (1, 3, int(30 * s), int(47 * s)) == (1, 3, 512, 802)
    assert enlarged.min() >= -1 and enlarged.max() <= 1
    want = F.interpolate(x, size=(512, 802), mode="bicubic", align_corners=False).clamp(-1, 1)
    assert torch.equal(enlarged, want)
    # the bicubic overshoot really is there before the clamp
    assert resize_bicubic(x, (512, 802)).abs().max() > 1


def test_pad_reflect_32_reproduces_upstreams_plus_32_quirk():
    x = torch.rand(1, 3, 64, 70)
    padded, pad_h, pad_w = pad_reflect_32(x)
    assert (pad_h, pad_w) == (32, 26)  # the aligned height still gets 32 rows
    assert padded.shape == (1, 3, 96, 96)
    assert torch.equal(padded, F.pad(x, (0, 26, 0, 32), mode="reflect"))
    # reflection excludes the edge row: row 64 + k mirrors row 62 - k
    assert torch.equal(padded[..., 64, :70], x[..., 62, :])
    aligned = torch.rand(1, 3, 64, 96)
    same, pad_h, pad_w = pad_reflect_32(aligned)
    assert same is aligned and (pad_h, pad_w) == (0, 0)


@pytest.mark.parametrize(("height", "width"), [(32, 40), (1, 5), (10, 64), (7, 1)])
def test_pad_reflect_32_handles_pads_wider_than_the_side(height, width):
    # F.pad's reflect mode (and so upstream) fails when pad >= side: e.g. an aligned 32-pixel side
    x = torch.arange(height * width, dtype=torch.float32).reshape(1, 1, height, width)
    padded, pad_h, pad_w = pad_reflect_32(x)
    assert padded.shape[-2:] == (height + pad_h, width + pad_w)
    assert torch.equal(padded[..., :height, :width], x)
    if height > 1:
        assert torch.equal(padded[..., height, :width], x[..., height - 2, :])


@PROPERTY
@given(st.integers(min_value=1, max_value=100), st.integers(min_value=1, max_value=100))
def test_pad_reflect_32_then_crop_is_the_identity(height, width):
    x = torch.rand(1, 3, height, width)
    padded, pad_h, pad_w = pad_reflect_32(x)
    assert padded.shape[-2:] == (height + pad_h, width + pad_w)
    assert padded.shape[-2] % 32 == 0 and padded.shape[-1] % 32 == 0
    assert 0 <= pad_h <= 32 and 0 <= pad_w <= 32
    assert torch.equal(padded[..., :height, :width], x)
    # the padding only repeats values of the image
    assert set(padded.unique().tolist()) <= set(x.unique().tolist())


def test_finish_output_without_shrink_crops_the_padding():
    img = torch.rand(1, 3, 96, 96)
    out = finish_output(img, (64, 70), (64, 70))
    assert torch.equal(out, img[..., :64, :70])


def test_finish_output_crops_then_shrinks_to_the_exact_size():
    # a 30x47 input enlarged by s = 512/30 to 512x802, padded to 544x832, scale 4 -> 120x188
    img = torch.rand(1, 3, 544, 832) * 1.2 - 0.1
    out = finish_output(img, (512, 802), (120, 188))
    assert out.shape[-2:] == (120, 188)
    assert torch.equal(out, resize_bicubic(img[..., :512, :802], (120, 188)).clamp(0, 1))
    assert out.min() >= 0 and out.max() <= 1
    # no padding leaks in: the padded region may hold anything
    img[..., 512:, :] = 7.0
    img[..., :, 802:] = 7.0
    assert torch.equal(finish_output(img, (512, 802), (120, 188)), out)


def test_to_unit_range_maps_and_clamps():
    x = torch.tensor([-1.5, -1.0, 0.0, 0.5, 1.0, 2.0])
    assert to_unit_range(x).tolist() == [0.0, 0.0, 0.5, 0.75, 1.0, 1.0]


def test_to_uint8_truncates_like_astype():
    x = torch.tensor([0.0, 0.5, 0.999, 1.0, 1 / 255, 254.9 / 255, -0.2, 1.3])
    assert to_uint8(x).dtype == torch.uint8
    assert to_uint8(x).tolist() == [0, 127, 254, 255, 1, 254, 0, 255]


@pytest.mark.parametrize("module", ["schedule", "colorfix", "tiling", "preprocess"])
def test_pure_math_modules_import_no_io_or_ui_library(module):
    tree = ast.parse((PIPELINE / f"{module}.py").read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            imported.add(node.module.split(".")[0])
    assert imported <= {"__future__", "dataclasses", "enum", "functools", "math", "numpy", "torch"}
