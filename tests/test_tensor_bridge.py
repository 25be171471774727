"""The bridge between a `Picture` and the model's tensors: what the model never sees is put back."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from cli_helpers import made_picture as picture
from stablesr_cli.imaging.io import encode_picture, read_picture
from stablesr_cli.imaging.tensor_bridge import from_model_output, to_model_input, upscale_picture

IMAGES = Path(__file__).parent / "fixtures" / "images"



def test_to_model_input():
    pic = read_picture(IMAGES / "00003.png")
    img = to_model_input(pic)
    assert img.shape == (1, 3, 256, 512) and img.dtype == torch.float32 and img.is_contiguous()
    np.testing.assert_array_equal(img[0].permute(1, 2, 0).numpy(), pic.rgb)
    img.zero_()
    assert pic.rgb.max() > 0  # the tensor is a copy


def test_from_model_output_size_metadata_and_dpi():
    exif = b"Exif\x00\x00II*\x00"
    pic = picture(np.full((8, 10, 3), 0.5), icc_profile=b"icc", exif=exif, dpi=(72.0, 72.0), bit_depth=16)
    rgb_sr = torch.rand(1, 3, 20, 25) * 1.4 - 0.2  # a model may overshoot a little
    out = from_model_output(pic, rgb_sr)
    assert (out.width, out.height) == (25, 20)
    assert out.dpi == pytest.approx((72 * 25 / 10, 72 * 20 / 8))
    assert (out.icc_profile, out.exif, out.bit_depth, out.format, out.source, out.is_grey) == (
        b"icc",
        exif,
        16,
        "PNG",
        "made-by-test",
        False,
    )
    np.testing.assert_allclose(out.rgb, rgb_sr[0].clamp(0, 1).permute(1, 2, 0).numpy())
    with pytest.raises(ValueError, match=r"\[1, 3, H, W\]"):
        from_model_output(pic, torch.rand(3, 20, 25))


def test_from_model_output_grey_becomes_luma_in_all_channels():
    pic = picture(np.full((4, 4, 3), 0.5), is_grey=True)
    rgb_sr = torch.rand(1, 3, 8, 8)
    out = from_model_output(pic, rgb_sr)
    luma = (0.299 * rgb_sr[0, 0] + 0.587 * rgb_sr[0, 1] + 0.114 * rgb_sr[0, 2]).numpy()
    assert out.is_grey
    for channel in range(3):
        np.testing.assert_allclose(out.rgb[..., channel], luma, rtol=1e-6)
    assert Image.open(io.BytesIO(encode_picture(out, "PNG"))).mode == "L"


def test_from_model_output_upscales_alpha_bicubic_and_clamps():
    alpha = np.zeros((6, 6), dtype=np.float32)
    alpha[:, 3:] = 1.0  # a hard edge makes bicubic overshoot
    pic = picture(np.zeros((6, 6, 3)), alpha)
    out = from_model_output(pic, torch.zeros(1, 3, 24, 24))
    plane = torch.from_numpy(alpha)[None, None]  # [1, 1, 6, 6]
    reference = F.interpolate(plane, size=(24, 24), mode="bicubic", align_corners=False)[0, 0]
    assert reference.max() > 1.0 and reference.min() < 0.0
    assert out.alpha.shape == (24, 24) and out.alpha.dtype == np.float32
    np.testing.assert_allclose(out.alpha, reference.clamp(0, 1).numpy(), atol=1e-6)


def test_from_model_output_shrinking_alpha_is_antialiased():
    alpha = np.random.default_rng(0).random((32, 32), dtype=np.float32)
    out = from_model_output(picture(np.zeros((32, 32, 3)), alpha), torch.zeros(1, 3, 8, 8))
    plane = torch.from_numpy(alpha)[None, None]
    smooth = F.interpolate(plane, size=(8, 8), mode="bicubic", align_corners=False, antialias=True)[0, 0].clamp(0, 1)
    aliased = F.interpolate(plane, size=(8, 8), mode="bicubic", align_corners=False)[0, 0].clamp(0, 1)
    np.testing.assert_allclose(out.alpha, smooth.numpy(), atol=1e-6)
    assert not np.allclose(out.alpha, aliased.numpy(), atol=1e-3)


def test_upscale_picture_hands_the_model_rgb_and_puts_the_rest_back():
    seen = []

    def twice_as_large(img_lq: torch.Tensor) -> torch.Tensor:
        seen.append(img_lq.clone())
        return F.interpolate(img_lq, scale_factor=2, mode="nearest")

    rgb = np.random.default_rng(1).random((5, 7, 3))
    alpha = np.linspace(0, 1, 35).reshape(5, 7)
    pic = picture(rgb, alpha, dpi=(100.0, 50.0), bit_depth=16, warnings=("kept",))
    out = upscale_picture(pic, twice_as_large)
    [img_lq] = seen
    assert img_lq.shape == (1, 3, 5, 7)
    np.testing.assert_array_equal(img_lq[0].permute(1, 2, 0).numpy(), pic.rgb)
    assert (out.width, out.height, out.bit_depth, out.warnings) == (14, 10, 16, ("kept",))
    assert out.dpi == (200.0, 100.0)
    np.testing.assert_array_equal(out.rgb[::2, ::2], pic.rgb)
    assert out.alpha.shape == (10, 14)
