"""Reading: image bytes (a file, stdin) or a Pillow image become an upright `Picture`.

The format is sniffed from the content (a WebP named `.jpg` works), the EXIF orientation is applied
to the pixels, alpha is split off, 16-bit precision is kept (imaging/png16.py for colour PNGs), and
the ICC profile, EXIF block and DPI are carried along. Every failure a user can cause raises
`InputImageError` with one line naming the file.
"""

from __future__ import annotations

from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import InputImageError
from .metadata import dpi_of, exif_of, make_upright, orientation_of
from .picture import STDIN_NAME, Picture
from .png16 import decode_png16, sixteen_bit_rawmode
from .sniff import DECODING_ERRORS, DEFAULT_MAX_PIXELS, open_image, reason


def read_picture(
    source: str | Path | bytes,
    *,
    name: str | None = None,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
) -> Picture:
    """Read an image file (or the bytes of one, e.g. stdin) into an upright `Picture`.

    `name` is used in messages and as `Picture.source` (default: the path, or '<stdin>' for bytes).
    `max_pixels` refuses images with more pixels before decoding them (None: no limit).
    Raises `InputImageError` with one line naming the file for everything a user can get wrong.
    """
    if isinstance(source, (bytes, bytearray, memoryview)):
        label = name or STDIN_NAME
        data = bytes(source)
    else:
        label = name or str(source)
        data = _read_file_bytes(Path(source), label)
    if not data:
        raise InputImageError(f"{label}: empty file (0 bytes); it holds no image")

    image = open_image(data, label, max_pixels)
    png16_rawmode = sixteen_bit_rawmode(image)  # must be read before load() empties image.tile
    try:
        image.load()  # force the full decode now so truncated data is reported here, not later
        if png16_rawmode:
            pixels = _sixteen_bit_png_pixels(decode_png16(image, data, png16_rawmode), image)
        else:
            pixels = _decode_pixels(image, label)
    except DECODING_ERRORS as error:
        raise InputImageError(
            f"{label}: image data is truncated or corrupt ({reason(error)}); re-export or re-download the file"
        ) from error
    return _upright_picture(image, pixels, label)


def picture_from_pillow(image: Image.Image, *, name: str = "image") -> Picture:
    """An upright `Picture` from a Pillow image in any mode, as `read_picture` makes from a file.

    Pillow holds 16-bit colour as 8-bit RGBA, so only grey images ("I;16", "I", "F") arrive here at
    16-bit precision. Damaged data of a lazily opened file raises `InputImageError` naming `name`.
    """
    try:
        image.load()
        pixels = _decode_pixels(image, name)
    except DECODING_ERRORS as error:
        raise InputImageError(
            f"{name}: image data is truncated or corrupt ({reason(error)}); re-export or re-download the file"
        ) from error
    return _upright_picture(image, pixels, name)


def _read_file_bytes(path: Path, label: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError as error:
        raise InputImageError(f"{label}: no such file; check the path") from error
    except IsADirectoryError as error:
        raise InputImageError(f"{label}: is a folder, not an image; pass the image files inside it") from error
    except PermissionError as error:
        raise InputImageError(f"{label}: permission denied; make the file readable or copy it elsewhere") from error
    except OSError as error:
        raise InputImageError(f"{label}: cannot be read ({reason(error)})") from error


@dataclass(frozen=True, eq=False)
class _Pixels:
    rgb: np.ndarray
    alpha: np.ndarray | None
    is_grey: bool
    bit_depth: int
    icc_profile: bytes | None
    warnings: tuple[str, ...] = ()


def _upright_picture(image: Image.Image, pixels: _Pixels, label: str) -> Picture:
    rgb, alpha, dpi = make_upright(pixels.rgb, pixels.alpha, dpi_of(image), orientation_of(image))
    return Picture(
        rgb=rgb,
        alpha=alpha,
        is_grey=pixels.is_grey,
        bit_depth=pixels.bit_depth,
        format=image.format or "unknown",
        icc_profile=pixels.icc_profile,
        exif=exif_of(image),
        dpi=dpi,
        source=label,
        warnings=pixels.warnings,
    )


def _decode_pixels(image: Image.Image, label: str) -> _Pixels:
    """Turn a loaded Pillow image (any mode) into float RGB + optional alpha, before orientation."""
    mode = image.mode
    icc = image.info.get("icc_profile") or None
    transparency = image.info.get("transparency")
    if mode in ("1", "L", "LA", "La"):
        # convert("LA") also turns a tRNS grey level into alpha (Pillow's convert_transparent)
        has_alpha = mode in ("LA", "La") or isinstance(transparency, int)
        grey_alpha = np.asarray(image.convert("LA"))
        return _grey_pixels(grey_alpha[..., 0], grey_alpha[..., 1] if has_alpha else None, 255.0, 8, icc)
    if mode.startswith("I;16") or mode == "I":
        # "I" is 32-bit integer grey (some TIFFs): taken as a 16-bit range, values beyond it clipped.
        grey = np.clip(np.asarray(image), 0, 65535).astype(np.uint16)
        return _grey_pixels(grey, _transparency_mask(grey, transparency), 65535.0, 16, icc)
    if mode == "F":
        # Float grey is taken as 0..1 (the usual convention); kept at 16-bit precision on output.
        grey, warnings = _finite_floats(np.asarray(image, dtype=np.float32), label)
        return _Pixels(_expand_grey(np.clip(grey, 0.0, 1.0)), None, True, 16, icc, warnings)
    if mode == "CMYK":
        return _colour_pixels(np.asarray(_cmyk_to_rgb(image, icc)), False, _srgb_profile() if icc else None)
    has_alpha = (
        mode in ("RGBA", "RGBa", "PA")
        or (mode == "RGB" and isinstance(transparency, tuple))
        or (mode == "P" and (transparency is not None or image.palette.mode == "RGBA"))
    )
    # convert() resolves palettes, premultiplied alpha, YCbCr/LAB/HSV and tRNS colours into RGB(A).
    converted = image.convert("RGBA" if has_alpha else "RGB")
    return _colour_pixels(np.asarray(converted), has_alpha, icc)


def _finite_floats(samples: np.ndarray, label: str) -> tuple[np.ndarray, tuple[str, ...]]:
    """Float samples with NaN and -inf as 0 (black) and +inf as 1 (white), and a warning saying how many.

    A NaN fed to the model spreads through every convolution and comes out as an all-black image;
    scientific and HDR tools use NaN for "no data", so a few of them are replaced and reported, while
    an image with no finite sample at all is refused, since nothing of it would survive.
    """
    finite = np.isfinite(samples)
    bad = int(finite.size - np.count_nonzero(finite))
    if bad == 0:
        return samples, ()
    if bad == finite.size:
        raise InputImageError(f"{label}: every pixel is NaN or infinite; the image holds no values to upscale")
    nan = int(np.count_nonzero(np.isnan(samples)))
    positive = int(np.count_nonzero(np.isposinf(samples)))
    negative = bad - nan - positive
    counts = ", ".join(
        f"{count} {what}" for count, what in ((nan, "NaN"), (positive, "+inf"), (negative, "-inf")) if count
    )
    warning = (
        f"{label}: {bad} of {finite.size} pixels were not finite ({counts}); "
        "NaN and -inf were replaced by 0 (black), +inf by 1 (white)"
    )
    return np.nan_to_num(samples, nan=0.0, posinf=1.0, neginf=0.0), (warning,)


def _sixteen_bit_png_pixels(samples: np.ndarray, image: Image.Image) -> _Pixels:
    """Floats from the exact uint16 samples of a 16-bit PNG (grey+alpha, RGB or RGBA)."""
    icc = image.info.get("icc_profile") or None
    if samples.shape[2] == 2:
        return _grey_pixels(samples[..., 0], samples[..., 1], 65535.0, 16, icc)
    scale = np.float32(65535)
    rgb16 = samples[..., :3]
    rgb = np.ascontiguousarray(rgb16).astype(np.float32) / scale
    if samples.shape[2] == 4:
        alpha = samples[..., 3].astype(np.float32) / scale
    else:
        mask = _transparency_mask(rgb16, image.info.get("transparency"))
        alpha = None if mask is None else mask.astype(np.float32) / scale
    return _Pixels(rgb, alpha, False, 16, icc)


def _grey_pixels(
    grey: np.ndarray, alpha: np.ndarray | None, scale: float, bit_depth: int, icc: bytes | None
) -> _Pixels:
    grey_float = grey.astype(np.float32) / np.float32(scale)
    alpha_float = None if alpha is None else alpha.astype(np.float32) / np.float32(scale)
    return _Pixels(_expand_grey(grey_float), alpha_float, True, bit_depth, icc)


def _colour_pixels(channels8: np.ndarray, has_alpha: bool, icc: bytes | None) -> _Pixels:
    rgb = np.ascontiguousarray(channels8[..., :3]).astype(np.float32) / np.float32(255)
    alpha = channels8[..., 3].astype(np.float32) / np.float32(255) if has_alpha else None
    return _Pixels(rgb, alpha, False, 8, icc)


def _expand_grey(grey: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.repeat(grey[..., None], 3, axis=2))


def _transparency_mask(samples: np.ndarray, transparency: object) -> np.ndarray | None:
    """PNG tRNS of a 16-bit image: one colour (or grey level) that is fully transparent.

    Pillow converts this for 8-bit images but would drop to 8 bits for 16-bit ones. The mask is
    returned in the samples' own scale (0 or the maximum), so it divides like the samples do.
    """
    if samples.ndim == 3 and isinstance(transparency, tuple) and len(transparency) == 3:
        hidden = np.all(samples == np.asarray(transparency, dtype=samples.dtype), axis=2)
    elif samples.ndim == 2 and isinstance(transparency, int):
        hidden = samples == transparency
    else:
        return None
    return np.where(hidden, 0, np.iinfo(samples.dtype).max).astype(samples.dtype)


def _cmyk_to_rgb(image: Image.Image, icc: bytes | None) -> Image.Image:
    """CMYK through its own ICC profile to sRGB when it has one; Pillow's naive formula otherwise."""
    if icc:
        try:
            from PIL import ImageCms

            source_profile = ImageCms.ImageCmsProfile(BytesIO(icc))
            srgb = ImageCms.createProfile("sRGB")
            converted = ImageCms.profileToProfile(image, source_profile, srgb, outputMode="RGB")
            if converted is not None:
                return converted
        except (ImportError, OSError, ImageCms.PyCMSError):
            pass  # an unusable profile is no reason to refuse the image: fall back to the plain conversion
    return image.convert("RGB")


def _srgb_profile() -> bytes | None:
    """The sRGB profile that CMYK images are converted into (their own profile describes CMYK)."""
    try:
        from PIL import ImageCms

        return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    except (ImportError, OSError):
        return None
