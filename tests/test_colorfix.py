"""pipeline.colorfix: AdaIN and wavelet colour fixes."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from stablesr_cli.options import ColorFix
from stablesr_cli.pipeline.colorfix import (
    adain_color_fix,
    apply_color_fix,
    wavelet_decomposition,
    wavelet_reconstruction,
)

PROPERTY = settings(max_examples=50, deadline=None, derandomize=True)

images = st.tuples(
    st.integers(min_value=1, max_value=2),  # batch
    st.integers(min_value=2, max_value=24),  # height
    st.integers(min_value=2, max_value=24),  # width
    st.integers(min_value=0, max_value=2**31 - 1),  # seed
)


def _image(batch: int, height: int, width: int, seed: int, dtype=torch.float32) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return (torch.rand(batch, 3, height, width, generator=generator, dtype=torch.float64) * 2 - 1).to(dtype)


@PROPERTY
@given(images)
def test_adain_of_an_image_against_itself_is_the_identity(shape):
    x = _image(*shape)
    torch.testing.assert_close(adain_color_fix(x, x), x, rtol=0, atol=1e-5)


@PROPERTY
@given(images, st.integers(min_value=0, max_value=2**31 - 1))
def test_adain_gives_the_reference_mean_and_std(shape, ref_seed):
    batch, height, width, seed = shape
    x, ref = _image(batch, height, width, seed), 0.3 * _image(batch, height, width, ref_seed) + 0.2
    fixed = adain_color_fix(x, ref).double()
    dims = (2, 3)
    torch.testing.assert_close(fixed.mean(dims), ref.double().mean(dims), rtol=0, atol=1e-5)
    # std(fixed) = std(x) / sqrt(var(x) + eps) * sqrt(var(ref) + eps): equal up to the eps
    torch.testing.assert_close(fixed.std(dims), ref.double().std(dims), rtol=0, atol=5e-4)


@PROPERTY
@given(images)
def test_wavelet_high_plus_low_is_the_image(shape):
    x = _image(*shape)
    high, low = wavelet_decomposition(x)
    torch.testing.assert_close(high + low, x, rtol=0, atol=1e-5)
    x64 = x.double()
    high64, low64 = wavelet_decomposition(x64)
    assert high64.dtype == torch.float64
    torch.testing.assert_close(high64 + low64, x64, rtol=0, atol=1e-12)


def test_wavelet_low_band_is_the_chain_of_dilated_blurs():
    x = _image(1, 20, 28, seed=3)
    kernel = torch.tensor([[1.0, 2.0, 1.0], [2.0, 4.0, 2.0], [1.0, 2.0, 1.0]]) / 16
    low = x
    for radius in (1, 2, 4):
        padded = F.pad(low, (radius,) * 4, mode="replicate")
        low = F.conv2d(padded, kernel.expand(3, 1, 3, 3), groups=3, dilation=radius)
    _, got = wavelet_decomposition(x, levels=3)
    torch.testing.assert_close(got, low, rtol=0, atol=1e-6)


def test_wavelet_keeps_a_flat_image_in_the_low_band():
    x = torch.full((1, 3, 9, 13), 0.25)
    high, low = wavelet_decomposition(x)
    torch.testing.assert_close(low, x, rtol=0, atol=1e-7)
    torch.testing.assert_close(high, torch.zeros_like(x), rtol=0, atol=1e-7)


def test_wavelet_reconstruction_takes_colours_from_the_reference():
    x = _image(1, 16, 16, seed=5)
    shifted = x + 0.5  # a colour cast lives entirely in the low band
    torch.testing.assert_close(wavelet_reconstruction(shifted, x), x, rtol=0, atol=1e-5)
    torch.testing.assert_close(wavelet_reconstruction(x, x), x, rtol=0, atol=1e-5)


def test_apply_color_fix_dispatches_on_the_kind():
    x, ref = _image(1, 12, 10, seed=7), _image(1, 12, 10, seed=8)
    assert apply_color_fix(ColorFix.NONE, x, ref) is x
    assert torch.equal(apply_color_fix(ColorFix.ADAIN, x, ref), adain_color_fix(x, ref))
    assert torch.equal(apply_color_fix(ColorFix.WAVELET, x, ref), wavelet_reconstruction(x, ref))
    assert torch.equal(apply_color_fix("wavelet", x, ref), wavelet_reconstruction(x, ref))


def test_colour_fixes_refuse_mismatched_shapes():
    x = torch.zeros(1, 3, 8, 8)
    with pytest.raises(ValueError, match="shape of the image"):
        wavelet_reconstruction(x, torch.zeros(1, 3, 8, 9))
    with pytest.raises(ValueError, match=r"\[B, C, H, W\]"):
        adain_color_fix(x[0], x[0])
    with pytest.raises(ValueError, match="levels"):
        wavelet_decomposition(x, levels=0)
