"""What travels with the pixels: EXIF orientation (applied to the pixels, then reset), DPI, EXIF blocks.

Shared by the file reader, the Pillow-image bridge and both writers, so that an image comes out
upright with orientation 1 however it came in.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

import numpy as np
from PIL import Image

EXIF_ORIENTATION_TAG = 0x0112
EXIF_PREFIX = b"Exif\x00\x00"  # APP1 marker payload prefix; PNG eXIf and WebP EXIF chunks omit it

# EXIF orientation -> the array operation that makes the image upright, with the semantics of
# PIL.ImageOps.exif_transpose (Pillow's ROTATE_270 turns clockwise, np.rot90(k=-1) too).
_ORIENTATION_TRANSFORMS: dict[int, Callable[[np.ndarray], np.ndarray]] = {
    2: lambda a: a[:, ::-1],  # FLIP_LEFT_RIGHT
    3: lambda a: a[::-1, ::-1],  # ROTATE_180
    4: lambda a: a[::-1],  # FLIP_TOP_BOTTOM
    5: lambda a: np.swapaxes(a, 0, 1),  # TRANSPOSE
    6: lambda a: np.rot90(a, k=-1),  # ROTATE_270
    7: lambda a: np.swapaxes(a, 0, 1)[::-1, ::-1],  # TRANSVERSE
    8: lambda a: np.rot90(a, k=1),  # ROTATE_90
}
_SWAPPING_ORIENTATIONS = frozenset({5, 6, 7, 8})


def dpi_of(image: Image.Image) -> tuple[float, float] | None:
    """The image's (x, y) DPI when it states a usable one."""
    dpi = image.info.get("dpi")
    if not (isinstance(dpi, tuple) and len(dpi) == 2):
        return None
    x_dpi, y_dpi = float(dpi[0]), float(dpi[1])
    return (x_dpi, y_dpi) if x_dpi > 0 and y_dpi > 0 else None


def orientation_of(image: Image.Image) -> int:
    """The EXIF orientation (1-8); 1 when absent or unreadable."""
    try:
        orientation = image.getexif().get(EXIF_ORIENTATION_TAG, 1)
    except (OSError, ValueError, SyntaxError, struct.error):
        return 1  # unreadable EXIF: show the pixels as stored rather than refuse the image
    return orientation if isinstance(orientation, int) else 1


def make_upright(
    rgb: np.ndarray, alpha: np.ndarray | None, dpi: tuple[float, float] | None, orientation: int
) -> tuple[np.ndarray, np.ndarray | None, tuple[float, float] | None]:
    """Turn the planes ([H, W, 3] and [H, W]) upright for an EXIF orientation; DPI swaps with the axes."""
    transform = _ORIENTATION_TRANSFORMS.get(orientation)
    if transform is None:
        return rgb, alpha, dpi
    rgb = np.ascontiguousarray(transform(rgb))
    alpha = None if alpha is None else np.ascontiguousarray(transform(alpha))
    if orientation in _SWAPPING_ORIENTATIONS and dpi is not None:
        dpi = (dpi[1], dpi[0])
    return rgb, alpha, dpi


def upright_exif(exif: bytes) -> bytes:
    """The EXIF block with "Exif\\0\\0" in front and Orientation set to 1 (we rotate the pixels)."""
    block = exif if exif.startswith(EXIF_PREFIX) else EXIF_PREFIX + exif
    parsed = Image.Exif()
    try:
        parsed.load(block)
    except (OSError, ValueError, SyntaxError, struct.error):
        return block  # unparsable: carried over untouched, it cannot rotate anything in a viewer either
    if parsed.get(EXIF_ORIENTATION_TAG, 1) == 1:
        return block  # re-serialising could move maker notes; leave an upright block byte for byte
    parsed[EXIF_ORIENTATION_TAG] = 1
    return parsed.tobytes()


def exif_of(image: Image.Image) -> bytes | None:
    """The image's raw EXIF block, upright, or None."""
    exif = image.info.get("exif")
    return upright_exif(exif) if isinstance(exif, bytes) and exif else None
