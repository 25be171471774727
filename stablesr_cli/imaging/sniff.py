"""Opening image bytes with Pillow: the format comes from the content, never from the file name.

Pillow's own decompression-bomb guard is a module-wide setting; we apply our own pixel limit
instead, and word the error for a damaged file of a known kind as "corrupt", not "not an image".
"""

from __future__ import annotations

import struct
import threading
import zlib
from io import BytesIO

from PIL import Image, TiffImagePlugin, UnidentifiedImageError

from ..errors import InputImageError

DEFAULT_MAX_PIXELS = 89_478_485
"""Pillow's own decompression-bomb threshold (`Image.MAX_IMAGE_PIXELS`, 1024 * 1024 * 1024 // 4 // 3):
about 9459 x 9459, far more than anyone feeds a 4x diffusion upscaler."""

DECODING_ERRORS = (OSError, ValueError, SyntaxError, EOFError, struct.error, zlib.error)
"""What Pillow's decoders raise on damaged data."""

# Pillow refuses images above 2 * Image.MAX_IMAGE_PIXELS on open, a module-wide setting. We apply our
# own `max_pixels` instead, so Pillow's check is switched off for the duration of one open; the lock
# keeps our concurrent reads from restoring each other's value too early.
_PILLOW_GUARD_LOCK = threading.Lock()

# File signatures, only to word the error for a damaged file of a known kind ("corrupt", not "not an image").
_SIGNATURES = (
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"\xff\xd8\xff", "JPEG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"BM", "BMP"),
)


def open_image(data: bytes, label: str, max_pixels: int | None) -> Image.Image:
    """Open (not yet decode) the image in `data`; refuse it when it has more than `max_pixels` pixels."""
    try:
        image = open_unlimited(data)
    except UnidentifiedImageError as error:
        claimed = format_claimed_by(data)
        layout = _unreadable_tiff_layout(data) if claimed == "TIFF" else None
        if layout is not None:
            raise InputImageError(
                f"{label}: a {layout}, which Pillow cannot decode; save it as a 16-bit TIFF or PNG "
                "(one-channel floating-point TIFFs are read)"
            ) from error
        if claimed is not None:
            raise InputImageError(
                f"{label}: starts like a {claimed} file but its header is corrupt; re-export or re-download it"
            ) from error
        raise InputImageError(
            f"{label}: not an image Pillow can read; convert it to PNG, JPEG, WebP, TIFF or BMP"
        ) from error
    except DECODING_ERRORS as error:
        raise InputImageError(
            f"{label}: image header is corrupt ({reason(error)}); re-export or re-download the file"
        ) from error
    width, height = image.size
    if max_pixels is not None and width * height > max_pixels:
        raise InputImageError(
            f"{label}: image is {width}×{height} = {width * height} pixels, above the limit of {max_pixels}; "
            "pass --max-pixels to raise it"
        )
    return image


def open_unlimited(data: bytes) -> Image.Image:
    """Image.open without Pillow's pixel limit (the caller applies its own)."""
    with _PILLOW_GUARD_LOCK:
        pillow_limit = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = None
        try:
            return Image.open(BytesIO(data))
        finally:
            Image.MAX_IMAGE_PIXELS = pillow_limit


def format_claimed_by(data: bytes) -> str | None:
    """The format whose signature `data` starts with, if any."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WebP"
    return next((name for signature, name in _SIGNATURES if data.startswith(signature)), None)


_SAMPLE_FORMAT_TAG, _SAMPLES_PER_PIXEL_TAG, _BITS_PER_SAMPLE_TAG = 339, 277, 258
_FLOAT_SAMPLES = 3  # TIFF SampleFormat: IEEE floating point


def _unreadable_tiff_layout(data: bytes) -> str | None:
    """Name a well-formed TIFF layout that Pillow has no decoder for: floating-point samples with
    several channels (HDR and scientific exports), which would otherwise be called a corrupt header."""
    try:
        directory = TiffImagePlugin.ImageFileDirectory_v2(data[:8])
        stream = BytesIO(data)
        stream.seek(directory.next)
        directory.load(stream)
    except (*DECODING_ERRORS, KeyError, IndexError):
        return None
    sample_formats = _as_tuple(directory.get(_SAMPLE_FORMAT_TAG, 1))
    samples = directory.get(_SAMPLES_PER_PIXEL_TAG, 1)
    if _FLOAT_SAMPLES not in sample_formats or not isinstance(samples, int) or samples < 2:
        return None
    bits = max(_as_tuple(directory.get(_BITS_PER_SAMPLE_TAG, 32)))
    return f"{bits}-bit floating-point TIFF with {samples} samples per pixel"


def _as_tuple(value: object) -> tuple:
    return value if isinstance(value, tuple) else (value,)


def reason(error: BaseException) -> str:
    """The first line of an exception's message, for a one-line error."""
    text = getattr(error, "strerror", None) or str(error) or type(error).__name__
    return text.splitlines()[0] if text else type(error).__name__
