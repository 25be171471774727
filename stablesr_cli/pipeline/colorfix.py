"""Colour correction of the decoded image against the upscaled input (AdaIN or wavelet).

Both fixes are upstream's `scripts/wavelet_color_fix.py` on [B, C, H, W] tensors, applied to the
decoded image in [-1, 1] before the final clamp, as the DDPM scripts do. They work in the input's dtype and
on its device; the operation order follows upstream so float32 results match it to ~1e-7.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..options import ColorFix

ADAIN_VARIANCE_EPS = 1e-5
"""Added to the (unbiased) variance before the square root, as upstream's calc_mean_std."""

WAVELET_LEVELS = 5

# A 3x3 binomial ("a trous" B3-like) blur; dilated by 2**level it gives the wavelet's low band.
_BLUR_KERNEL = (
    (0.0625, 0.125, 0.0625),
    (0.125, 0.25, 0.125),
    (0.0625, 0.125, 0.0625),
)


def _check_image(x: Tensor, name: str) -> None:
    if x.ndim != 4:
        raise ValueError(f"{name} must be a [B, C, H, W] tensor, got shape {tuple(x.shape)}")


def _mean_std(x: Tensor) -> tuple[Tensor, Tensor]:
    """Per image and channel: mean and sqrt(unbiased variance + eps), shaped [B, C, 1, 1]."""
    b, c = x.shape[:2]
    flat = x.reshape(b, c, -1)
    std = (flat.var(dim=2) + ADAIN_VARIANCE_EPS).sqrt().reshape(b, c, 1, 1)
    mean = flat.mean(dim=2).reshape(b, c, 1, 1)
    return mean, std


def adain_color_fix(x: Tensor, ref: Tensor) -> Tensor:
    """Give each channel of `x` the mean and standard deviation of the same channel of `ref`."""
    _check_image(x, "image")
    _check_image(ref, "colour reference")
    if ref.shape[:2] != x.shape[:2]:
        raise ValueError(f"colour reference {tuple(ref.shape)} must have the batch and channels of {tuple(x.shape)}")
    ref_mean, ref_std = _mean_std(ref)
    x_mean, x_std = _mean_std(x)
    return (x - x_mean) / x_std * ref_std + ref_mean


def _wavelet_blur(x: Tensor, radius: int) -> Tensor:
    """Depthwise 3x3 blur dilated by `radius`, with replicate padding so the size is kept."""
    channels = x.shape[1]
    kernel = torch.tensor(_BLUR_KERNEL, dtype=x.dtype, device=x.device)[None, None].repeat(channels, 1, 1, 1)
    padded = F.pad(x, (radius, radius, radius, radius), mode="replicate")
    return F.conv2d(padded, kernel, groups=channels, dilation=radius)


def wavelet_decomposition(x: Tensor, levels: int = WAVELET_LEVELS) -> tuple[Tensor, Tensor]:
    """(high, low): low = the image blurred at radii 1, 2, ..., 2**(levels-1); high = x - low.

    high is accumulated level by level (sum of the differences), as upstream, rather than as
    x - low in one subtraction: the two differ by float rounding.
    """
    _check_image(x, "image")
    if levels < 1:
        raise ValueError(f"wavelet levels must be at least 1, got {levels}")
    high = torch.zeros_like(x)
    low = x
    for level in range(levels):
        blurred = _wavelet_blur(low, 2**level)
        high += low - blurred
        low = blurred
    return high, low


def wavelet_reconstruction(x: Tensor, ref: Tensor) -> Tensor:
    """Wavelet colour fix: the high band of `x` plus the low band (colours, shading) of `ref`."""
    _check_image(ref, "colour reference")
    if ref.shape != x.shape:
        raise ValueError(f"colour reference {tuple(ref.shape)} must have the shape of the image {tuple(x.shape)}")
    high, _ = wavelet_decomposition(x)
    _, ref_low = wavelet_decomposition(ref)
    return high + ref_low


def apply_color_fix(kind: ColorFix, x: Tensor, ref: Tensor) -> Tensor:
    """The colour fix chosen by `kind` (NONE returns `x` itself)."""
    kind = ColorFix(kind)
    if kind is ColorFix.ADAIN:
        return adain_color_fix(x, ref)
    if kind is ColorFix.WAVELET:
        return wavelet_reconstruction(x, ref)
    return x
