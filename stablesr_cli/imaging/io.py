"""Image files in and out: what people have on disk becomes a `Picture`, and a `Picture` goes back.

Reading sniffs the format from the content (a WebP named `.jpg` works), applies the EXIF
orientation, splits off alpha, keeps 16-bit precision, and carries the ICC profile, EXIF block and
DPI along. Every failure a user can cause raises `InputImageError` / `OutputPathError` with one line
naming the file. Writing is atomic: a hidden temporary file beside the target, fsync, `os.replace`.

16-bit colour PNGs: Pillow has no 16-bit RGB(A) mode and hands them out as 8-bit RGBA (it keeps only
the high byte of every sample). We keep the full value without a PNG decoder of our own: Pillow's
"zip" decoder undoes the PNG filters on the raw bytes and only then unpacks them, so decoding the
same file a second time with the little-endian raw mode (`RGB;16L` / `RGBA;16L`) hands us the low
byte of every big-endian sample, and `high * 256 + low` is the exact value. 16-bit grey+alpha is
decoded with the 8-bit `RGBA` raw mode, which has the same 4 bytes per pixel and yields
[L high, L low, A high, A low]. Interlaced (Adam7) files work the same way because the decoder
de-interlaces before unpacking. Pillow cannot *write* 16-bit colour PNGs either, so
`_encode_png16` is a small PNG writer (IHDR, iCCP, pHYs, eXIf, IDAT, IEND) built on zlib.
"""

from __future__ import annotations

import struct
import threading
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..atomic import atomic_write
from ..errors import InputImageError, OptionError, OutputPathError

DEFAULT_MAX_PIXELS = 89_478_485
"""Pillow's own decompression-bomb threshold (`Image.MAX_IMAGE_PIXELS`, 1024 * 1024 * 1024 // 4 // 3):
about 9459 x 9459, far more than anyone feeds a 4x diffusion upscaler."""

STDIN_NAME = "<stdin>"

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

_EXIF_ORIENTATION_TAG = 0x0112
_EXIF_PREFIX = b"Exif\x00\x00"  # APP1 marker payload prefix; PNG eXIf and WebP EXIF chunks omit it

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


# ------------------------------------------------------------------------------------------------
# Reading
# ------------------------------------------------------------------------------------------------


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

    image = _open_image(data, label, max_pixels)
    png16_rawmode = _png_sixteen_bit_rawmode(image)  # must be read before load() empties image.tile
    try:
        image.load()  # force the full decode now so truncated data is reported here, not later
        pixels = _decode_png16(image, data, png16_rawmode) if png16_rawmode else _decode_pixels(image)
    except (OSError, ValueError, SyntaxError, EOFError, struct.error, zlib.error) as error:
        raise InputImageError(
            f"{label}: image data is truncated or corrupt ({_reason(error)}); re-export or re-download the file"
        ) from error

    rgb, alpha = pixels.rgb, pixels.alpha
    dpi = _dpi_of(image)
    orientation = _orientation_of(image)
    if orientation in _ORIENTATION_TRANSFORMS:
        transform = _ORIENTATION_TRANSFORMS[orientation]
        rgb = np.ascontiguousarray(transform(rgb))
        alpha = None if alpha is None else np.ascontiguousarray(transform(alpha))
        if orientation in _SWAPPING_ORIENTATIONS and dpi is not None:
            dpi = (dpi[1], dpi[0])

    exif = image.info.get("exif")
    return Picture(
        rgb=rgb,
        alpha=alpha,
        is_grey=pixels.is_grey,
        bit_depth=pixels.bit_depth,
        format=image.format or "unknown",
        icc_profile=pixels.icc_profile,
        exif=_upright_exif(exif) if isinstance(exif, bytes) and exif else None,
        dpi=dpi,
        source=label,
    )


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
        raise InputImageError(f"{label}: cannot be read ({_reason(error)})") from error


# Pillow refuses images above 2 * Image.MAX_IMAGE_PIXELS on open, a module-wide setting. We apply our
# own `max_pixels` instead, so Pillow's check is switched off for the duration of one open; the lock
# keeps our concurrent reads from restoring each other's value too early.
_PILLOW_GUARD_LOCK = threading.Lock()


def _open_image(data: bytes, label: str, max_pixels: int | None) -> Image.Image:
    with _PILLOW_GUARD_LOCK:
        pillow_limit = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = None
        try:
            image = Image.open(BytesIO(data))
        except UnidentifiedImageError as error:
            claimed = _format_claimed_by(data)
            if claimed is not None:
                raise InputImageError(
                    f"{label}: starts like a {claimed} file but its header is corrupt; re-export or re-download it"
                ) from error
            raise InputImageError(
                f"{label}: not an image Pillow can read; convert it to PNG, JPEG, WebP, TIFF or BMP"
            ) from error
        except (OSError, ValueError, SyntaxError, EOFError, struct.error, zlib.error) as error:
            raise InputImageError(
                f"{label}: image header is corrupt ({_reason(error)}); re-export or re-download the file"
            ) from error
        finally:
            Image.MAX_IMAGE_PIXELS = pillow_limit
    width, height = image.size
    if max_pixels is not None and width * height > max_pixels:
        raise InputImageError(
            f"{label}: image is {width}×{height} = {width * height} pixels, above the limit of {max_pixels}; "
            "pass --max-pixels to raise it"
        )
    return image


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


def _format_claimed_by(data: bytes) -> str | None:
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WebP"
    return next((name for signature, name in _SIGNATURES if data.startswith(signature)), None)


@dataclass(frozen=True, eq=False)
class _Pixels:
    rgb: np.ndarray
    alpha: np.ndarray | None
    is_grey: bool
    bit_depth: int
    icc_profile: bytes | None


def _decode_pixels(image: Image.Image) -> _Pixels:
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
        grey = np.clip(np.asarray(image, dtype=np.float32), 0.0, 1.0)
        return _Pixels(_expand_grey(grey), None, True, 16, icc)
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


def _png_sixteen_bit_rawmode(image: Image.Image) -> str | None:
    """The raw mode of a 16-bit colour or grey+alpha PNG that Pillow would shorten to 8 bits."""
    if image.format != "PNG" or len(image.tile) != 1 or image.tile[0].codec_name != "zip":
        return None
    rawmode = image.tile[0].args
    return rawmode if rawmode in ("RGB;16B", "RGBA;16B", "LA;16B") else None


def _decode_png16(image: Image.Image, data: bytes, rawmode: str) -> _Pixels:
    """Exact 16-bit samples of a colour / grey+alpha PNG (see the module docstring for the trick)."""
    icc = image.info.get("icc_profile") or None
    transparency = image.info.get("transparency")
    if rawmode == "LA;16B":
        pair_bytes = np.asarray(_decode_with_rawmode(data, "RGBA")).astype(np.uint16)
        grey = (pair_bytes[..., 0] << 8) | pair_bytes[..., 1]
        alpha = (pair_bytes[..., 2] << 8) | pair_bytes[..., 3]
        return _grey_pixels(grey, alpha, 65535.0, 16, icc)
    low_rawmode = "RGB;16L" if rawmode == "RGB;16B" else "RGBA;16L"
    high = np.asarray(image).astype(np.uint16)  # the normal decode keeps the high bytes
    low = np.asarray(_decode_with_rawmode(data, low_rawmode)).astype(np.uint16)
    samples = (high << 8) | low
    rgb16 = samples[..., :3]
    scale = np.float32(65535)
    rgb = np.ascontiguousarray(rgb16).astype(np.float32) / scale
    if rawmode == "RGBA;16B":
        alpha = samples[..., 3].astype(np.float32) / scale
    else:
        mask = _transparency_mask(rgb16, transparency)
        alpha = None if mask is None else mask.astype(np.float32) / scale
    return _Pixels(rgb, alpha, False, 16, icc)


def _decode_with_rawmode(data: bytes, rawmode: str) -> Image.Image:
    with _PILLOW_GUARD_LOCK:
        pillow_limit = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = None  # already checked against max_pixels by the first open
        try:
            image = Image.open(BytesIO(data))
        finally:
            Image.MAX_IMAGE_PIXELS = pillow_limit
    tile = image.tile[0]
    image.tile = [tile._replace(args=rawmode)]
    image.load()
    return image


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


def _dpi_of(image: Image.Image) -> tuple[float, float] | None:
    dpi = image.info.get("dpi")
    if not (isinstance(dpi, tuple) and len(dpi) == 2):
        return None
    x_dpi, y_dpi = float(dpi[0]), float(dpi[1])
    return (x_dpi, y_dpi) if x_dpi > 0 and y_dpi > 0 else None


def _orientation_of(image: Image.Image) -> int:
    try:
        orientation = image.getexif().get(_EXIF_ORIENTATION_TAG, 1)
    except (OSError, ValueError, SyntaxError, struct.error):
        return 1  # unreadable EXIF: show the pixels as stored rather than refuse the image
    return orientation if isinstance(orientation, int) else 1


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


def _upright_exif(exif: bytes) -> bytes:
    """The EXIF block with "Exif\\0\\0" in front and Orientation set to 1 (we rotate the pixels)."""
    block = exif if exif.startswith(_EXIF_PREFIX) else _EXIF_PREFIX + exif
    parsed = Image.Exif()
    try:
        parsed.load(block)
    except (OSError, ValueError, SyntaxError, struct.error):
        return block  # unparsable: carried over untouched, it cannot rotate anything in a viewer either
    if parsed.get(_EXIF_ORIENTATION_TAG, 1) == 1:
        return block  # re-serialising could move maker notes; leave an upright block byte for byte
    parsed[_EXIF_ORIENTATION_TAG] = 1
    return parsed.tobytes()


def _reason(error: BaseException) -> str:
    text = getattr(error, "strerror", None) or str(error) or type(error).__name__
    return text.splitlines()[0] if text else type(error).__name__


# ------------------------------------------------------------------------------------------------
# Writing
# ------------------------------------------------------------------------------------------------


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


def encode_picture(picture: Picture, format: str, quality: int | None = None) -> bytes:
    """The encoded file as bytes (for stdout); same conversions as `write_picture`."""
    _check_quality(quality)
    buffer = BytesIO()
    _encode_into(picture, _resolve_format(format, None, picture), quality, buffer)
    return buffer.getvalue()


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
        _encode_png16(picture, keeps_alpha, stream)
        return
    image = _pillow_image(picture, format, keeps_alpha)
    image.save(stream, format=format, **_save_options(picture, format, quality))


def _pillow_image(picture: Picture, format: str, keeps_alpha: bool) -> Image.Image:
    rgb = picture.rgb
    if picture.alpha is not None and not keeps_alpha:
        # JPEG/BMP: composite onto white, the background most viewers show behind transparency.
        alpha = np.clip(picture.alpha, 0.0, 1.0)[..., None]
        rgb = np.clip(rgb, 0.0, 1.0) * alpha + (1.0 - alpha)
    if picture.is_grey:
        grey = _grey_channel(rgb)
        if picture.bit_depth == 16 and format == "TIFF" and not keeps_alpha:
            return Image.fromarray(quantise_16bit(grey))  # uint16 [H, W] -> mode "I;16"
        if keeps_alpha:
            return Image.fromarray(np.dstack([quantise_8bit(grey), quantise_8bit(picture.alpha)]))  # -> "LA"
        return Image.fromarray(quantise_8bit(grey))  # -> "L"
    channels = [quantise_8bit(rgb)]
    if keeps_alpha:
        channels.append(quantise_8bit(picture.alpha)[..., None])
    return Image.fromarray(np.concatenate(channels, axis=2))  # [H, W, 3 or 4] uint8 -> "RGB" / "RGBA"


def _grey_channel(rgb: np.ndarray) -> np.ndarray:
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


def _save_options(picture: Picture, format: str, quality: int | None) -> dict[str, object]:
    options: dict[str, object] = {}
    if picture.icc_profile and format in ("PNG", "JPEG", "WEBP", "TIFF"):
        options["icc_profile"] = picture.icc_profile
    if picture.exif and format in ("PNG", "JPEG", "WEBP"):
        exif = _upright_exif(picture.exif)
        options["exif"] = exif if format == "JPEG" else exif[len(_EXIF_PREFIX) :]
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


# --- a minimal 16-bit PNG writer (Pillow has no 16-bit RGB/RGBA/LA output) ----------------------

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_ROWS_PER_CHUNK = 256  # filter and compress this many rows at a time to bound memory


def _encode_png16(picture: Picture, keeps_alpha: bool, stream: BinaryIO) -> None:
    planes = [_grey_channel(picture.rgb)[..., None]] if picture.is_grey else [picture.rgb]
    if keeps_alpha:
        planes.append(picture.alpha[..., None])
    samples = quantise_16bit(np.concatenate(planes, axis=2))  # [H, W, C]
    height, width, channels = samples.shape
    colour_type = {1: 0, 2: 4, 3: 2, 4: 6}[channels]  # grey, grey+alpha, RGB, RGBA

    stream.write(_PNG_SIGNATURE)
    _png_chunk(stream, b"IHDR", struct.pack(">IIBBBBB", width, height, 16, colour_type, 0, 0, 0))
    if picture.icc_profile:
        _png_chunk(stream, b"iCCP", b"ICC profile\x00\x00" + zlib.compress(picture.icc_profile))
    if picture.dpi:
        per_metre = [int(round(value / 0.0254)) for value in picture.dpi]
        _png_chunk(stream, b"pHYs", struct.pack(">IIB", per_metre[0], per_metre[1], 1))
    if picture.exif:
        _png_chunk(stream, b"eXIf", _upright_exif(picture.exif)[len(_EXIF_PREFIX) :])

    rows = samples.astype(">u2").view(np.uint8).reshape(height, width * channels * 2)
    compressor = zlib.compressobj(6)
    idat = bytearray()
    previous = np.zeros(rows.shape[1], dtype=np.uint8)
    for start in range(0, height, _PNG_ROWS_PER_CHUNK):
        block = rows[start : start + _PNG_ROWS_PER_CHUNK]
        idat += compressor.compress(_filter_rows(block, previous, bytes_per_pixel=channels * 2).tobytes())
        previous = block[-1]
        if len(idat) >= 1 << 20:
            _png_chunk(stream, b"IDAT", bytes(idat))
            idat.clear()
    idat += compressor.flush()
    _png_chunk(stream, b"IDAT", bytes(idat))
    _png_chunk(stream, b"IEND", b"")


def _png_chunk(stream: BinaryIO, kind: bytes, payload: bytes) -> None:
    stream.write(struct.pack(">I", len(payload)) + kind + payload)
    stream.write(struct.pack(">I", zlib.crc32(kind + payload) & 0xFFFFFFFF))


def _filter_rows(rows: np.ndarray, previous: np.ndarray, bytes_per_pixel: int) -> np.ndarray:
    """PNG-filter each row with whichever of the five filters gives the smallest sum of |bytes|
    (the heuristic the PNG specification recommends). Returns [rows, 1 + row_bytes] uint8."""
    x = rows.astype(np.int16)
    above = np.vstack([previous[None].astype(np.int16), x[:-1]])
    left = np.zeros_like(x)
    left[:, bytes_per_pixel:] = x[:, :-bytes_per_pixel]
    upper_left = np.zeros_like(x)
    upper_left[:, bytes_per_pixel:] = above[:, :-bytes_per_pixel]
    estimate = left + above - upper_left
    distance_left, distance_above, distance_upper_left = (
        np.abs(estimate - left),
        np.abs(estimate - above),
        np.abs(estimate - upper_left),
    )
    paeth = np.where(
        (distance_left <= distance_above) & (distance_left <= distance_upper_left),
        left,
        np.where(distance_above <= distance_upper_left, above, upper_left),
    )
    candidates = np.stack([x, x - left, x - above, x - (left + above) // 2, x - paeth]) & 0xFF  # [5, R, N]
    cost = np.abs(candidates.astype(np.uint8).view(np.int8).astype(np.int32)).sum(axis=2)  # [5, R]
    choice = np.argmin(cost, axis=0)  # [R]
    filtered = candidates[choice, np.arange(len(choice))].astype(np.uint8)
    return np.hstack([choice.astype(np.uint8)[:, None], filtered])
