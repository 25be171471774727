"""Pillow images in and out of the model for Python users, through the same `Picture` path as the CLI.

A Pillow image comes back in its own kind: "L" stays "L", "LA" and "RGBA" keep their alpha (upscaled
as the CLI does it), "I;16", "I" and "F" keep their precision, "P" with transparency becomes "RGBA"
(a palette cannot hold the new colours), "1" becomes "L"; EXIF orientation is applied to the
pixels, and the ICC profile, EXIF block (orientation 1) and DPI (scaled with the size) are set in
`image.info`, where `Image.save(..., **image.info)`-style code picks them up.
"""

from __future__ import annotations

import warnings

import numpy as np
from PIL import Image

from .picture import Picture, grey_channel, quantise_16bit
from .read import picture_from_pillow
from .tensor_bridge import UpscaleRGB, upscale_picture
from .write import pillow_image


class ImageChangedWarning(UserWarning):
    """The input image had to be changed to be usable (e.g. NaN pixels replaced); the message says how."""


def upscale_pil_image(image: Image.Image, upscale_rgb: UpscaleRGB) -> Image.Image:
    """`image` upscaled by `upscale_rgb` (RGB floats -> RGB floats), in the image's own mode and metadata.

    What had to be changed in the input to make it usable (NaN or infinite float pixels) is
    reported as an `ImageChangedWarning`; an unusable image raises `InputImageError`.
    """
    name = str(getattr(image, "filename", "") or "image")
    picture = picture_from_pillow(image, name=name)
    for line in picture.warnings:
        warnings.warn(line, ImageChangedWarning, stacklevel=3)  # points at the caller of Upscaler.upscale
    return pillow_image_like(upscale_picture(picture, upscale_rgb), image.mode)


def pillow_image_like(picture: Picture, mode: str) -> Image.Image:
    """The picture as a Pillow image of the same kind as an input of `mode`, metadata in `info`."""
    if picture.is_grey and picture.alpha is None and mode == "F":
        result = Image.fromarray(np.ascontiguousarray(grey_channel(picture.rgb), dtype=np.float32), "F")
    elif picture.is_grey and picture.alpha is None and mode == "I":
        result = Image.fromarray(quantise_16bit(grey_channel(picture.rgb)).astype(np.int32), "I")
    else:
        # Pillow has no 16-bit grey+alpha mode: a 16-bit grey image with a transparent level comes back "LA".
        result = pillow_image(picture, sixteen_bit_grey=picture.bit_depth == 16)
    if picture.icc_profile:
        result.info["icc_profile"] = picture.icc_profile
    if picture.exif:
        result.info["exif"] = picture.exif
    if picture.dpi:
        result.info["dpi"] = picture.dpi
    return result
