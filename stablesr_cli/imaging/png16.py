"""16-bit colour PNGs, in and out, which Pillow shortens to 8 bits on reading and cannot write.

Reading: Pillow has no 16-bit RGB(A) mode and hands such files out as 8-bit RGBA (it keeps only the
high byte of every sample). We keep the full value without a PNG decoder of our own: Pillow's "zip"
decoder undoes the PNG filters on the raw bytes and only then unpacks them, so decoding the same
file a second time with the little-endian raw mode (`RGB;16L` / `RGBA;16L`) hands us the low byte
of every big-endian sample, and `high * 256 + low` is the exact value. 16-bit grey+alpha is decoded
with the 8-bit `RGBA` raw mode, which has the same 4 bytes per pixel and yields
[L high, L low, A high, A low]. Interlaced (Adam7) files work the same way because the decoder
de-interlaces before unpacking.

Writing: `encode_png16` is a small PNG writer (IHDR, iCCP, pHYs, eXIf, IDAT, IEND) built on zlib.
"""

from __future__ import annotations

import struct
import zlib
from typing import BinaryIO

import numpy as np
from PIL import Image

from .sniff import open_unlimited

_SIXTEEN_BIT_RAWMODES = ("RGB;16B", "RGBA;16B", "LA;16B")


def sixteen_bit_rawmode(image: Image.Image) -> str | None:
    """The raw mode of a 16-bit colour or grey+alpha PNG that Pillow would shorten to 8 bits.

    Must be asked before `image.load()`, which empties `image.tile`.
    """
    if image.format != "PNG" or len(image.tile) != 1 or image.tile[0].codec_name != "zip":
        return None
    rawmode = image.tile[0].args
    return rawmode if rawmode in _SIXTEEN_BIT_RAWMODES else None


def decode_png16(image: Image.Image, data: bytes, rawmode: str) -> np.ndarray:
    """The exact samples of a 16-bit PNG: uint16 [H, W, C], C = 2 (grey, alpha), 3 (RGB) or 4 (RGBA).

    `image` is the loaded normal decode of `data`; `rawmode` what `sixteen_bit_rawmode` said before loading.
    """
    if rawmode == "LA;16B":
        pair_bytes = np.asarray(_decode_with_rawmode(data, "RGBA")).astype(np.uint16)
        grey = (pair_bytes[..., 0] << 8) | pair_bytes[..., 1]
        alpha = (pair_bytes[..., 2] << 8) | pair_bytes[..., 3]
        return np.stack([grey, alpha], axis=2)
    low_rawmode = "RGB;16L" if rawmode == "RGB;16B" else "RGBA;16L"
    high = np.asarray(image).astype(np.uint16)  # the normal decode keeps the high bytes
    low = np.asarray(_decode_with_rawmode(data, low_rawmode)).astype(np.uint16)
    samples = (high << 8) | low
    return samples if rawmode == "RGBA;16B" else np.ascontiguousarray(samples[..., :3])


def _decode_with_rawmode(data: bytes, rawmode: str) -> Image.Image:
    image = open_unlimited(data)  # already checked against max_pixels by the first open
    tile = image.tile[0]
    image.tile = [tile._replace(args=rawmode)]
    image.load()
    return image


# --- a minimal 16-bit PNG writer (Pillow has no 16-bit RGB/RGBA/LA output) ----------------------

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_ROWS_PER_CHUNK = 256  # filter and compress this many rows at a time to bound memory
_COLOUR_TYPES = {1: 0, 2: 4, 3: 2, 4: 6}  # channels -> PNG colour type: grey, grey+alpha, RGB, RGBA


def encode_png16(
    samples: np.ndarray,
    stream: BinaryIO,
    *,
    icc_profile: bytes | None = None,
    dpi: tuple[float, float] | None = None,
    exif_tiff: bytes | None = None,
) -> None:
    """Write uint16 [H, W, C] samples (C: 1 grey, 2 grey+alpha, 3 RGB, 4 RGBA) as a 16-bit PNG.

    `exif_tiff` is the EXIF TIFF structure without the "Exif\\0\\0" prefix, as the eXIf chunk holds it.
    """
    height, width, channels = samples.shape
    stream.write(_PNG_SIGNATURE)
    _png_chunk(stream, b"IHDR", struct.pack(">IIBBBBB", width, height, 16, _COLOUR_TYPES[channels], 0, 0, 0))
    if icc_profile:
        _png_chunk(stream, b"iCCP", b"ICC profile\x00\x00" + zlib.compress(icc_profile))
    if dpi:
        per_metre = [int(round(value / 0.0254)) for value in dpi]
        _png_chunk(stream, b"pHYs", struct.pack(">IIB", per_metre[0], per_metre[1], 1))
    if exif_tiff:
        _png_chunk(stream, b"eXIf", exif_tiff)

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
