"""Bridge between a `Picture` and the model's tensors; no file I/O here.

The pipeline takes RGB [1, 3, H, W] float32 in [0, 1] and returns [1, 3, H', W'] in [0, 1]. What the
model never sees (alpha, greyness, metadata) is put back here, at the output size.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import numpy as np
import torch
import torch.nn.functional as F

from .picture import LUMA_WEIGHTS, Picture

UpscaleRGB = Callable[[torch.Tensor], torch.Tensor]
"""The model's job: RGB [1, 3, H, W] float32 in [0, 1] -> RGB [1, 3, H', W'] in [0, 1]."""


def upscale_picture(picture: Picture, upscale_rgb: UpscaleRGB) -> Picture:
    """`picture` through `upscale_rgb`, with alpha, greyness, bit depth and metadata put back at the new size.

    The one path every image takes, from the command line (files) and from Python (Pillow images).
    """
    return from_model_output(picture, upscale_rgb(to_model_input(picture)))


def to_model_input(picture: Picture) -> torch.Tensor:
    """The picture's RGB as [1, 3, H, W] float32 in [0, 1] (a copy: the model may work in place)."""
    img = torch.from_numpy(np.array(picture.rgb, dtype=np.float32, copy=True))  # [H, W, 3]
    return img.permute(2, 0, 1).unsqueeze(0).contiguous()  # [1, 3, H, W]


def from_model_output(picture_in: Picture, rgb_sr: torch.Tensor) -> Picture:
    """A new Picture at the size of `rgb_sr` ([1, 3, H', W'] in [0, 1]) with `picture_in`'s traits.

    Grey inputs come back grey (ITU-R 601-2 luma, as Pillow's convert("L"), in all three channels),
    alpha is resized separately with bicubic interpolation and clamped, ICC/EXIF/format/bit depth
    are carried over, and DPI is scaled by the actual size ratio so the print size stays the same.
    """
    if rgb_sr.ndim != 4 or rgb_sr.shape[0] != 1 or rgb_sr.shape[1] != 3:
        raise ValueError(f"rgb_sr must be [1, 3, H, W], got {list(rgb_sr.shape)}")
    img_sr = rgb_sr.detach().to(device="cpu", dtype=torch.float32).clamp(0.0, 1.0)[0]  # [3, H', W']
    height, width = int(img_sr.shape[1]), int(img_sr.shape[2])

    if picture_in.is_grey:
        red, green, blue = LUMA_WEIGHTS
        luma = (red * img_sr[0] + green * img_sr[1] + blue * img_sr[2]).clamp(0.0, 1.0)  # [H', W']
        img_sr = luma.expand(3, height, width)
    rgb = np.ascontiguousarray(img_sr.permute(1, 2, 0).numpy(), dtype=np.float32)  # [H', W', 3]

    alpha = None if picture_in.alpha is None else resize_alpha(picture_in.alpha, height, width)
    dpi = None
    if picture_in.dpi is not None:
        dpi = (picture_in.dpi[0] * width / picture_in.width, picture_in.dpi[1] * height / picture_in.height)
    return replace(picture_in, rgb=rgb, alpha=alpha, dpi=dpi)


def resize_alpha(alpha: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bicubic resize of an alpha plane [H, W] to [height, width], clamped to [0, 1].

    Antialiasing only when shrinking: torch's antialiased bicubic uses a different kernel (a=-0.5)
    from its plain one (a=-0.75), so it is kept out of the usual upscaling case.
    """
    source_height, source_width = alpha.shape
    if (source_height, source_width) == (height, width):
        return np.array(alpha, dtype=np.float32, copy=True)
    plane = torch.from_numpy(np.ascontiguousarray(alpha, dtype=np.float32))[None, None]  # [1, 1, H, W]
    shrinking = height < source_height or width < source_width
    resized = F.interpolate(plane, size=(height, width), mode="bicubic", align_corners=False, antialias=shrinking)
    return np.ascontiguousarray(resized[0, 0].clamp(0.0, 1.0).numpy(), dtype=np.float32)
