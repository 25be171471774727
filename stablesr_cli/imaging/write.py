"""Writing: a `Picture` becomes an image file, bytes for a stream, or a Pillow image.

The format is chosen once (an explicit name, else the path's extension, else the source's format),
grey stays one channel, alpha is reattached, 16-bit sources give 16-bit PNG (imaging/png16.py) and
16-bit grey TIFF, and ICC / EXIF / DPI go where the format stores them. Files are written through
stablesr_cli/atomic.py, so a failure never leaves a partial image behind.
"""

from __future__ import annotations

from io import BytesIO
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image

from ..atomic import atomic_write
from ..errors import OptionError, OutputPathError
from .metadata import EXIF_PREFIX, upright_exif
from .picture import Picture, grey_channel, quantise_8bit, quantise_16bit
from .png16 import encode_png16

DEFAULT_JPEG_QUALITY = 95
"""Pillow's default (75) visibly softens an upscaler's fine detail."""
DEFAULT_WEBP_QUALITY = 95

WRITABLE_FORMATS = ("PNG", "JPEG", "WEBP", "TIFF", "BMP")
FORMATS_WITHOUT_ALPHA = ("JPEG", "BMP")
"""JPEG has no alpha; BMP's 32-bit layout does, but Pillow and most viewers ignore it on reading."""

_FORMAT_BY_EXTENSION = {
    ".png": "PNG",
    ".jpg": "JPEG",
    ".jpeg": "JPEG",
    ".webp": "WEBP",
    ".tif": "TIFF",
    ".tiff": "TIFF",
    ".bmp": "BMP",
}
_FORMAT_ALIASES = {"JPG": "JPEG", "TIF": "TIFF", "MPO": "JPEG"}  # MPO: phone JPEGs with a depth map


def format_for_path(path: str | Path) -> str | None:
    """The Pillow format name for an output file's extension (png, jpg/jpeg, webp, tif/tiff, bmp)."""
    return _FORMAT_BY_EXTENSION.get(Path(path).suffix.lower())


def write_picture(
    picture: Picture,
    destination: str | Path | BinaryIO,
    *,
    format: str | None = None,
    quality: int | None = None,
) -> None:
    """Write `picture` to a path (atomically) or into a binary stream.

    The format is `format`, else the path's extension, else (streams only) the source format when
    writable, else PNG. Grey stays one channel, alpha is reattached, 16-bit sources give 16-bit PNG
    (and 16-bit grey TIFF; Pillow writes colour TIFF at 8 bits only, other formats are 8-bit).
    JPEG has no alpha channel and BMP's is ignored by readers: a picture with alpha is flattened
    onto white when written as JPEG or BMP. ICC profile, EXIF (orientation 1) and DPI are carried
    where the format stores them (ICC: PNG/JPEG/WebP/TIFF; EXIF: PNG/JPEG/WebP; DPI:
    PNG/JPEG/TIFF/BMP). `quality` applies to JPEG and WebP (default 95; JPEG without chroma
    subsampling). 8-bit samples are truncated, clamp(x, 0, 1) * 255, as upstream's astype(uint8).

    A path is written through a hidden temporary file in the same folder that replaces the target
    only once complete and synced, so a failure never leaves a partial image behind.
    Raises `OutputPathError` when the folder is missing or unwritable.
    """
    _check_quality(quality)
    if not isinstance(destination, (str, Path)):
        _encode_into(picture, _resolve_format(format, None, picture), quality, destination)
        return
    path = Path(destination)
    chosen = _resolve_format(format, path, picture)
    atomic_write(path, lambda stream: _encode_into(picture, chosen, quality, stream), what="image")


def encode_picture(picture: Picture, format: str | None, quality: int | None = None) -> bytes:
    """The encoded file as bytes (for stdout); same conversions as `write_picture`.

    `format` None: the source's format when writable, else PNG."""
    _check_quality(quality)
    buffer = BytesIO()
    _encode_into(picture, _resolve_format(format, None, picture), quality, buffer)
    return buffer.getvalue()


def pillow_image(picture: Picture, *, keep_alpha: bool = True, sixteen_bit_grey: bool = False) -> Image.Image:
    """The picture as an 8-bit Pillow image: "L", "LA", "RGB" or "RGBA" (alpha only with `keep_alpha`).

    Without `keep_alpha`, alpha is flattened onto white, the background most viewers show behind
    transparency. `sixteen_bit_grey` gives a grey picture without alpha as "I;16" instead of "L".
    Pillow has no 16-bit colour or 16-bit grey+alpha mode, so those come out at 8 bits.
    """
    rgb = picture.rgb
    keeps_alpha = keep_alpha and picture.alpha is not None
    if picture.alpha is not None and not keeps_alpha:
        alpha = np.clip(picture.alpha, 0.0, 1.0)[..., None]
        rgb = np.clip(rgb, 0.0, 1.0) * alpha + (1.0 - alpha)
    if picture.is_grey:
        grey = grey_channel(rgb)
        if sixteen_bit_grey and not keeps_alpha:
            return Image.fromarray(quantise_16bit(grey))  # uint16 [H, W] -> mode "I;16"
        if keeps_alpha:
            return Image.fromarray(np.dstack([quantise_8bit(grey), quantise_8bit(picture.alpha)]))  # -> "LA"
        return Image.fromarray(quantise_8bit(grey))  # -> "L"
    channels = [quantise_8bit(rgb)]
    if keeps_alpha:
        channels.append(quantise_8bit(picture.alpha)[..., None])
    return Image.fromarray(np.concatenate(channels, axis=2))  # [H, W, 3 or 4] uint8 -> "RGB" / "RGBA"


def _check_quality(quality: int | None) -> None:
    if quality is not None and not 1 <= quality <= 100:
        raise OptionError(f"image quality must be between 1 and 100, got {quality}")


def _resolve_format(requested: str | None, path: Path | None, picture: Picture) -> str:
    if requested is not None:
        name = requested.strip().lstrip(".").upper()
        name = _FORMAT_ALIASES.get(name, name)
        if name not in WRITABLE_FORMATS:
            raise OptionError(f"cannot write images as {requested!r}; choose one of {', '.join(WRITABLE_FORMATS)}")
        return name
    if path is not None:
        by_extension = format_for_path(path)
        if by_extension is None:
            raise OutputPathError(
                f"{path}: unknown image extension {path.suffix!r}; use .png, .jpg, .webp, .tif or .bmp"
            )
        return by_extension
    source_format = _FORMAT_ALIASES.get(picture.format, picture.format)
    return source_format if source_format in WRITABLE_FORMATS else "PNG"


def _encode_into(picture: Picture, format: str, quality: int | None, stream: BinaryIO) -> None:
    """Encode `picture` as `format` (already one of WRITABLE_FORMATS) into `stream`."""
    keeps_alpha = picture.alpha is not None and format not in FORMATS_WITHOUT_ALPHA
    if picture.bit_depth == 16 and format == "PNG":
        _write_png16(picture, keeps_alpha, stream)
        return
    sixteen_bit_grey = picture.bit_depth == 16 and format == "TIFF"
    image = pillow_image(picture, keep_alpha=keeps_alpha, sixteen_bit_grey=sixteen_bit_grey)
    image.save(stream, format=format, **_save_options(picture, format, quality))


def _write_png16(picture: Picture, keeps_alpha: bool, stream: BinaryIO) -> None:
    planes = [grey_channel(picture.rgb)[..., None]] if picture.is_grey else [picture.rgb]
    if keeps_alpha:
        planes.append(picture.alpha[..., None])
    encode_png16(
        quantise_16bit(np.concatenate(planes, axis=2)),  # [H, W, C]
        stream,
        icc_profile=picture.icc_profile,
        dpi=picture.dpi,
        exif_tiff=upright_exif(picture.exif)[len(EXIF_PREFIX) :] if picture.exif else None,
    )


def _save_options(picture: Picture, format: str, quality: int | None) -> dict[str, object]:
    options: dict[str, object] = {}
    if picture.icc_profile and format in ("PNG", "JPEG", "WEBP", "TIFF"):
        options["icc_profile"] = picture.icc_profile
    if picture.exif and format in ("PNG", "JPEG", "WEBP"):
        exif = upright_exif(picture.exif)
        options["exif"] = exif if format == "JPEG" else exif[len(EXIF_PREFIX) :]
    if picture.dpi and format in ("PNG", "JPEG", "TIFF", "BMP"):
        options["dpi"] = picture.dpi
    if format == "JPEG":
        options["quality"] = DEFAULT_JPEG_QUALITY if quality is None else quality
        options["subsampling"] = 0  # 4:4:4: chroma subsampling would blur the detail we just made
    if format == "WEBP":
        options["quality"] = DEFAULT_WEBP_QUALITY if quality is None else quality
    if format == "TIFF":
        options["compression"] = "tiff_adobe_deflate"  # lossless and much smaller than raw
    return options
