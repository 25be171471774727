"""`Picture`: an image as the model sees it (RGB floats) plus everything needed to give it back as it came.

Readers (imaging/read.py, imaging/pil_images.py) build one, the tensor bridge runs it through the
model at a new size, and writers (imaging/write.py) turn it back into a file or a Pillow image.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

STDIN_NAME = "<stdin>"

# Luma weights of ITU-R 601-2, the ones Pillow's convert("L") uses.
LUMA_WEIGHTS = (0.299, 0.587, 0.114)


@dataclass(frozen=True, eq=False)  # eq=False: numpy arrays have no single truth value
class Picture:
    """An image as the model sees it (RGB floats) plus everything needed to write it back faithfully."""

    rgb: np.ndarray
    """float32 [H, W, 3] in [0, 1]; a grey image has three equal channels."""
    alpha: np.ndarray | None
    """float32 [H, W] in [0, 1], or None when the image has no transparency."""
    is_grey: bool
    """The source had one colour channel; it is written back as one."""
    bit_depth: int
    """8 or 16: the precision of the source samples, and of the output where the format allows it."""
    format: str
    """Pillow's name of the source format, sniffed from the content (PNG, JPEG, WEBP, TIFF, BMP, GIF...)."""
    icc_profile: bytes | None = None
    exif: bytes | None = None
    """The raw EXIF block ("Exif\\0\\0" + TIFF structure) with the orientation reset to 1, since the
    pixels are already upright."""
    dpi: tuple[float, float] | None = None
    source: str = STDIN_NAME
    """Where the picture came from, for messages: a path or '<stdin>'."""
    warnings: tuple[str, ...] = ()
    """What the reader had to change to make the image usable (e.g. NaN samples replaced), one line
    each naming the source, for the CLI's report or a Python warning."""

    def __post_init__(self) -> None:
        # These are programming errors, not user input: the reader always builds valid pictures.
        if self.rgb.ndim != 3 or self.rgb.shape[2] != 3 or self.rgb.dtype != np.float32:
            raise ValueError(f"Picture.rgb must be float32 [H, W, 3], got {self.rgb.dtype} {self.rgb.shape}")
        if self.alpha is not None and (self.alpha.shape != self.rgb.shape[:2] or self.alpha.dtype != np.float32):
            raise ValueError(
                f"Picture.alpha must be float32 {self.rgb.shape[:2]}, got {self.alpha.dtype} {self.alpha.shape}"
            )
        if self.bit_depth not in (8, 16):
            raise ValueError(f"Picture.bit_depth must be 8 or 16, got {self.bit_depth}")

    @property
    def height(self) -> int:
        return int(self.rgb.shape[0])

    @property
    def width(self) -> int:
        return int(self.rgb.shape[1])


def grey_channel(rgb: np.ndarray) -> np.ndarray:
    """The single channel of a grey picture: channel 0 when all three agree (lossless), luma otherwise."""
    first = rgb[..., 0]
    if np.array_equal(first, rgb[..., 1]) and np.array_equal(first, rgb[..., 2]):
        return first
    red, green, blue = LUMA_WEIGHTS
    return (red * rgb[..., 0] + green * rgb[..., 1] + blue * rgb[..., 2]).astype(np.float32)


def quantise_8bit(values: np.ndarray) -> np.ndarray:
    """clamp(x, 0, 1) * 255, truncated (upstream's `astype(uint8)`), not rounded."""
    return (np.clip(values, 0.0, 1.0).astype(np.float32) * np.float32(255)).astype(np.uint8)


def quantise_16bit(values: np.ndarray) -> np.ndarray:
    """round(clamp(x, 0, 1) * 65535)."""
    return np.round(np.clip(values, 0.0, 1.0).astype(np.float32) * np.float32(65535)).astype(np.uint16)
