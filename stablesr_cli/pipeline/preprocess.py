"""Pixel pre- and post-processing of upstream `scripts/sr_val_ddpm_text_T_vqganfin_oldcanvas_tile.py`.

Before sampling: enlarge by s = max(min_side / short side, scale) with PyTorch bicubic, clamp to
[-1, 1], reflect-pad bottom/right to multiples of 32. After decoding: map to [0, 1], crop the
padding, shrink back to the requested size when the small-input rule enlarged beyond `scale`,
truncate to 8 bits. Images are [B, C, H, W] tensors; nothing here reads or writes files.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

PAD_MULTIPLE = 32


def upscale_factor(height: int, width: int, scale: float, min_side: int) -> float:
    """s = max(min_side / min(h, w), scale): small inputs are enlarged until the short side reaches
    `min_side` (the model's native size), then shrunk back to `scale` at the end."""
    if height < 1 or width < 1:
        raise ValueError(f"image sides must be at least 1 pixel, got {height}x{width}")
    return max(min_side / min(height, width), scale)


def resize_bicubic(x: Tensor, size: tuple[int, int]) -> Tensor:
    """PyTorch bicubic (a = -0.75), align_corners False, no antialiasing, as every upstream resize
    in the DDPM scripts (torchvision/PIL resizes antialias and differ). Overshoot is not clamped here."""
    return F.interpolate(x, size=size, mode="bicubic", align_corners=False, antialias=False)


def prepare_input(x_lq_pm1: Tensor, scale: float, min_side: int) -> tuple[Tensor, float]:
    """Enlarge an image in [-1, 1] by the upscale factor s (sizes truncated with int()) and clamp
    the bicubic overshoot back to [-1, 1]. Returns the enlarged image and s."""
    height, width = x_lq_pm1.shape[-2:]
    s = upscale_factor(height, width, scale, min_side)
    enlarged = resize_bicubic(x_lq_pm1, (int(height * s), int(width * s)))
    return enlarged.clamp(-1, 1), s


def _reflect_extend(x: Tensor, pad_h: int, pad_w: int) -> Tensor:
    """Reflect-pad bottom/right even when a pad is not smaller than the side.

    F.pad's reflect mode needs pad < side (upstream crashes otherwise, e.g. a 32-pixel side that
    gets the +32 quirk); here the reflection is repeated on the growing tensor, and a 1-pixel side
    (which has nothing to reflect) is replicated.
    """
    for dim, remaining in ((-1, pad_w), (-2, pad_h)):
        while remaining > 0:
            step = min(remaining, x.shape[dim] - 1)
            mode = "reflect"
            if step == 0:
                step, mode = remaining, "replicate"
            pad = (0, step, 0, 0) if dim == -1 else (0, 0, 0, step)
            x = F.pad(x, pad, mode=mode)
            remaining -= step
    return x


def pad_reflect_32(x: Tensor) -> tuple[Tensor, int, int]:
    """Reflect-pad bottom/right to multiples of 32 with upstream's rule; returns (x_pad, pad_h, pad_w).

    Upstream pads only when a side is unaligned, but then pads BOTH sides by
    (side // 32 + 1) * 32 - side, so an already aligned side gets 32 extra rows or columns. The
    quirk is kept because it changes the canvas, hence the tiles and the result.
    """
    height, width = x.shape[-2:]
    if height % PAD_MULTIPLE == 0 and width % PAD_MULTIPLE == 0:
        return x, 0, 0
    pad_h = (height // PAD_MULTIPLE + 1) * PAD_MULTIPLE - height
    pad_w = (width // PAD_MULTIPLE + 1) * PAD_MULTIPLE - width
    if pad_h < height and pad_w < width:
        padded = F.pad(x, (0, pad_w, 0, pad_h), mode="reflect")
    else:
        padded = _reflect_extend(x, pad_h, pad_w)
    return padded, pad_h, pad_w


def to_unit_range(x_pm1: Tensor) -> Tensor:
    """[-1, 1] -> [0, 1], clamped; upstream clamps only here, after colour fix and patch blending."""
    return ((x_pm1 + 1.0) / 2.0).clamp(0.0, 1.0)


def finish_output(img01_padded: Tensor, unpadded_hw: tuple[int, int], target_hw: tuple[int, int]) -> Tensor:
    """From the decoded, padded [0, 1] image to the final [0, 1] image of exactly `target_hw`.

    `unpadded_hw` is the size of the enlarged image before padding. The padding is cropped; when the
    small-input rule enlarged beyond `scale`, the result is then bicubic-shrunk to the target and
    clamped. Upstream shrinks the padded image first and then crops with the UNscaled size, which
    leaves shrunken padding in the output and misses the requested size by a pixel or more; cropping
    first is what it evidently intended, and needs a single resample to land on the exact size.
    Without the shrink, the crop alone gives the target.
    """
    height, width = unpadded_hw
    out = img01_padded[..., :height, :width]
    if tuple(out.shape[-2:]) != tuple(target_hw):
        out = resize_bicubic(out, tuple(target_hw)).clamp(0.0, 1.0)
    return out


def to_uint8(img01: Tensor) -> Tensor:
    """[0, 1] -> uint8 by x * 255 and TRUNCATION, as upstream's astype(uint8) (rounding differs by one level).

    The clamp is a no-op on the pipeline's already clamped images; it keeps the cast defined.
    """
    return (img01.clamp(0.0, 1.0) * 255).to(torch.uint8)
