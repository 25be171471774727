"""Images as people have them: every kind reads right, round-trips, and fails with a useful line."""

from __future__ import annotations

import functools
import io
import os
import re
import struct
import zlib
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from PIL import Image, ImageCms, ImageOps

from cli_helpers import made_picture as picture
from stablesr_cli.errors import InputImageError, OptionError, OutputPathError
from stablesr_cli.imaging import io as imaging_io
from stablesr_cli.imaging import write as imaging_write
from stablesr_cli.imaging.io import (
    encode_picture,
    format_for_path,
    read_picture,
    write_picture,
)
from stablesr_cli.imaging.tensor_bridge import from_model_output, to_model_input

IMAGES = Path(__file__).parent / "fixtures" / "images"
ORIENTATION = 0x0112


# --- helpers ------------------------------------------------------------------------------------


def pillow_open(source: Path | bytes) -> Image.Image:
    """Image.open on the bytes, so no file handle is left open for a ResourceWarning."""
    data = source if isinstance(source, bytes) else source.read_bytes()
    return Image.open(io.BytesIO(data))


def pillow_rgb(path: Path) -> np.ndarray:
    return np.asarray(pillow_open(path).convert("RGB")).astype(np.float32) / np.float32(255)


def write_file(folder: Path, name: str, data: bytes) -> Path:
    (folder / name).write_bytes(data)
    return folder / name


def save(image: Image.Image, path: Path, **options: object) -> Path:
    image.save(path, **options)
    return path


def as_uint8(values: np.ndarray) -> np.ndarray:
    return np.round(values * 255).astype(np.uint8)


def as_uint16(values: np.ndarray) -> np.ndarray:
    return np.round(values.astype(np.float64) * 65535).astype(np.uint16)


@functools.lru_cache(maxsize=1)
def srgb_icc() -> bytes:
    """An sRGB profile; made once, since littleCMS stamps each new profile with the current second."""
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()



# A PNG writer independent of the library's, so 16-bit reading is checked against every filter
# type and against Adam7 interlacing (the library's own writer is adaptive and never interlaces).
ADAM7_PASSES = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2))


def _paeth(a: int, b: int, c: int) -> int:
    p = a + b - c
    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
    if pa <= pb and pa <= pc:
        return a
    return b if pb <= pc else c


def _filtered_scanlines(samples: np.ndarray, filter_type: int) -> bytes:
    height, width, channels = samples.shape
    bpp = channels * 2
    rows = samples.astype(">u2").view(np.uint8).reshape(height, width * bpp).astype(int).tolist()
    out = bytearray()
    previous = [0] * (width * bpp)
    for row in rows:
        out.append(filter_type)
        for i, x in enumerate(row):
            a = row[i - bpp] if i >= bpp else 0
            b = previous[i]
            c = previous[i - bpp] if i >= bpp else 0
            predictor = (0, a, b, (a + b) // 2, _paeth(a, b, c))[filter_type]
            out.append((x - predictor) & 0xFF)
        previous = row
    return bytes(out)


def png16_bytes(
    samples: np.ndarray, *, filter_type: int = 0, interlace: bool = False, trns: bytes | None = None
) -> bytes:
    """samples: uint16 [H, W, C], C in 1..4 (grey, grey+alpha, RGB, RGBA)."""
    height, width, channels = samples.shape
    colour_type = {1: 0, 2: 4, 3: 2, 4: 6}[channels]
    if interlace:
        raw = b"".join(
            _filtered_scanlines(samples[y0::dy, x0::dx], filter_type)
            for x0, y0, dx, dy in ADAM7_PASSES
            if samples[y0::dy, x0::dx].size
        )
    else:
        raw = _filtered_scanlines(samples, filter_type)

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    header = struct.pack(">IIBBBBB", width, height, 16, colour_type, 0, 0, int(interlace))
    chunks = [chunk(b"IHDR", header)]
    if trns is not None:
        chunks.append(chunk(b"tRNS", trns))
    chunks += [chunk(b"IDAT", zlib.compress(raw)), chunk(b"IEND", b"")]
    return b"\x89PNG\r\n\x1a\n" + b"".join(chunks)


def reference_png16_rgba(data: bytes) -> np.ndarray:
    """Decode a non-interlaced 16-bit RGBA PNG using only None/Up filters (what the fixture uses)."""
    position, idat = 8, b""
    while position < len(data):
        (length,) = struct.unpack(">I", data[position : position + 4])
        kind = data[position + 4 : position + 8]
        payload = data[position + 8 : position + 8 + length]
        if kind == b"IHDR":
            width, height, depth, colour_type, _, _, interlace = struct.unpack(">IIBBBBB", payload)
            assert (depth, colour_type, interlace) == (16, 6, 0)
        if kind == b"IDAT":
            idat += payload
        position += 12 + length
    rows = np.frombuffer(zlib.decompress(idat), dtype=np.uint8).reshape(height, 1 + width * 8)
    assert set(rows[:, 0].tolist()) <= {0, 2}, "reference decoder only handles the None and Up filters"
    decoded = np.zeros((height, width * 8), dtype=np.uint8)
    previous = np.zeros(width * 8, dtype=np.uint8)
    for y in range(height):
        decoded[y] = rows[y, 1:] + (previous if rows[y, 0] == 2 else 0)
        previous = decoded[y]
    return decoded.view(">u2").reshape(height, width, 4).astype(np.uint16)


# --- reading the real test images -----------------------------------------------------------------

REAL_IMAGES = [
    # name, format, (width, height), is_grey, has_alpha, bit_depth
    ("00003.png", "PNG", (512, 256), False, False, 8),
    ("00017_gray.png", "PNG", (500, 351), True, False, 8),
    ("0014.jpg", "JPEG", (179, 179), False, False, 8),
    ("0030.jpg", "JPEG", (220, 220), False, False, 8),
    ("ADE_val_00000114.jpg", "JPEG", (256, 256), False, False, 8),
    ("OST_009.png", "PNG", (448, 640), False, False, 8),
    ("children-alpha.png", "PNG", (566, 350), False, True, 8),
    ("tree_alpha_16bit.png", "PNG", (342, 256), False, True, 16),
    ("wolf_gray.jpg", "JPEG", (236, 236), True, False, 8),
]


@pytest.mark.parametrize("name, format, size, is_grey, has_alpha, bit_depth", REAL_IMAGES)
def test_real_images_read_with_the_right_traits(name, format, size, is_grey, has_alpha, bit_depth):
    path = IMAGES / name
    pic = read_picture(path)
    assert (pic.format, (pic.width, pic.height), pic.is_grey, pic.alpha is not None, pic.bit_depth) == (
        format,
        size,
        is_grey,
        has_alpha,
        bit_depth,
    )
    assert pic.rgb.dtype == np.float32 and pic.rgb.shape == (size[1], size[0], 3)
    assert pic.rgb.flags.c_contiguous
    assert 0.0 <= pic.rgb.min() and pic.rgb.max() <= 1.0
    assert pic.source == str(path)
    if is_grey:
        assert np.array_equal(pic.rgb[..., 0], pic.rgb[..., 1]) and np.array_equal(pic.rgb[..., 0], pic.rgb[..., 2])
    if has_alpha:
        assert pic.alpha.dtype == np.float32 and pic.alpha.shape == (size[1], size[0])
    if bit_depth == 8:
        np.testing.assert_array_equal(pic.rgb, pillow_rgb(path))


def test_real_image_metadata_is_carried():
    tree = read_picture(IMAGES / "tree_alpha_16bit.png")
    assert tree.icc_profile == pillow_open(IMAGES / "tree_alpha_16bit.png").info["icc_profile"]
    assert tree.dpi == pytest.approx((72.009, 72.009))
    wolf = read_picture(IMAGES / "wolf_gray.jpg")
    assert wolf.exif is not None and wolf.exif.startswith(b"Exif\x00\x00")
    assert wolf.icc_profile is not None and wolf.dpi == (72.0, 72.0)
    assert read_picture(IMAGES / "0014.jpg").dpi is None  # JFIF aspect ratio only, no real DPI


def test_sixteen_bit_rgba_png_keeps_every_bit():
    path = IMAGES / "tree_alpha_16bit.png"
    expected = reference_png16_rgba(path.read_bytes())
    pic = read_picture(path)
    np.testing.assert_array_equal(as_uint16(pic.rgb), expected[..., :3])
    np.testing.assert_array_equal(as_uint16(pic.alpha), expected[..., 3])
    assert np.any((expected & 0xFF) != (expected >> 8)), "the fixture should have real 16-bit detail"


@pytest.mark.parametrize("channels", [1, 2, 3, 4])
@pytest.mark.parametrize(
    "filter_type, interlace", [(0, False), (1, False), (2, False), (3, False), (4, False), (4, True)]
)
def test_sixteen_bit_png_decodes_exactly_for_every_filter(channels, filter_type, interlace):
    rng = np.random.default_rng(channels * 10 + filter_type)
    samples = rng.integers(0, 65536, size=(11, 13, channels), dtype=np.uint16)
    pic = read_picture(png16_bytes(samples, filter_type=filter_type, interlace=interlace))
    assert pic.bit_depth == 16 and pic.is_grey == (channels <= 2) and (pic.alpha is not None) == (channels in (2, 4))
    colour = samples[..., :1].repeat(3, axis=2) if channels <= 2 else samples[..., :3]
    np.testing.assert_array_equal(as_uint16(pic.rgb), colour)
    if channels in (2, 4):
        np.testing.assert_array_equal(as_uint16(pic.alpha), samples[..., -1])


def test_sixteen_bit_rgb_png_with_a_transparent_colour():
    samples = np.array([[[1000, 2000, 3000], [1000, 2000, 3001]]], dtype=np.uint16)
    pic = read_picture(png16_bytes(samples, trns=struct.pack(">HHH", 1000, 2000, 3000)))
    assert pic.bit_depth == 16
    np.testing.assert_array_equal(pic.alpha, [[0.0, 1.0]])


# --- other kinds of input ---------------------------------------------------------------------------


def test_webp_named_jpg_is_sniffed_from_content(tmp_path):
    path = save(Image.new("RGB", (8, 6), (10, 200, 30)), tmp_path / "actually_webp.jpg", format="WEBP", lossless=True)
    pic = read_picture(path)
    assert pic.format == "WEBP" and (pic.width, pic.height) == (8, 6)
    np.testing.assert_array_equal(as_uint8(pic.rgb[0, 0]), [10, 200, 30])


def test_palette_images_with_transparency_get_alpha(tmp_path):
    palette_image = Image.new("P", (4, 2), 0)
    palette_image.putpalette([255, 0, 0, 0, 0, 255] + [0] * (254 * 3))
    palette_image.putpixel((1, 0), 1)
    for suffix in ("png", "gif"):
        pic = read_picture(save(palette_image, tmp_path / f"p.{suffix}", transparency=0))
        assert not pic.is_grey and pic.alpha is not None
        assert pic.alpha[0, 0] == 0.0 and pic.alpha[0, 1] == 1.0
        np.testing.assert_array_equal(as_uint8(pic.rgb[0, 1]), [0, 0, 255])
    opaque = read_picture(save(palette_image, tmp_path / "opaque.png"))
    assert opaque.alpha is None


def test_animated_gif_reads_its_first_frame(tmp_path):
    frames = [Image.new("RGB", (5, 5), (255, 0, 0)), Image.new("RGB", (5, 5), (0, 0, 255))]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=50)
    pic = read_picture(path)
    assert pic.format == "GIF"
    np.testing.assert_array_equal(as_uint8(pic.rgb[2, 2]), [255, 0, 0])


def test_cmyk_jpeg_becomes_rgb(tmp_path):
    pic = read_picture(save(Image.new("CMYK", (16, 16), (0, 255, 255, 0)), tmp_path / "cmyk.jpg", quality=100))
    assert not pic.is_grey and pic.alpha is None
    assert np.allclose(pic.rgb[8, 8], [1.0, 0.0, 0.0], atol=0.03)


@pytest.mark.parametrize(
    "image, bit_depth, grey_value",
    [
        (Image.new("1", (6, 4), 1), 8, 1.0),
        (Image.new("I;16", (6, 4), 40000), 16, 40000 / 65535),
        (Image.new("I", (6, 4), 70000), 16, 1.0),  # 32-bit grey: clipped to the 16-bit range
        (Image.new("F", (6, 4), 0.25), 16, 0.25),
    ],
    ids=["bilevel", "I;16", "I", "F"],
)
def test_grey_modes(tmp_path, image, bit_depth, grey_value):
    pic = read_picture(save(image, tmp_path / "grey.tif"))
    assert pic.is_grey and pic.bit_depth == bit_depth and pic.alpha is None
    assert pic.rgb[0, 0].tolist() == pytest.approx([grey_value] * 3, abs=1e-6)


def float_grey_tiff(folder: Path, samples: np.ndarray, name: str = "float.tif") -> Path:
    return save(Image.fromarray(samples.astype(np.float32), "F"), folder / name)


def float_rgb_tiff(samples: np.ndarray) -> bytes:
    """An uncompressed little-endian TIFF of float32 samples [H, W, C] (SampleFormat 3: IEEE float),
    a layout HDR and scientific tools write and Pillow cannot decode."""
    height, width, channels = samples.shape
    pixels = samples.astype("<f4").tobytes()
    entries, directory_at = 10, 8
    extra_at = directory_at + 2 + entries * 12 + 4  # per-channel BitsPerSample and SampleFormat follow the IFD
    per_channel = struct.pack(f"<{channels}H", *[32] * channels) + struct.pack(f"<{channels}H", *[3] * channels)
    pixels_at = extra_at + len(per_channel)
    tags = [  # (tag, type: 3 short / 4 long, count, value or offset)
        (256, 4, 1, width), (257, 4, 1, height), (258, 3, channels, extra_at), (259, 3, 1, 1), (262, 3, 1, 2),
        (273, 4, 1, pixels_at), (277, 3, 1, channels), (278, 4, 1, height), (279, 4, 1, len(pixels)),
        (339, 3, channels, extra_at + 2 * channels),
    ]  # fmt: skip
    out = b"II*\x00" + struct.pack("<IH", directory_at, entries)
    for tag, kind, count, value in tags:
        inline = struct.pack("<HH", value, 0) if kind == 3 and count == 1 else struct.pack("<I", value)
        out += struct.pack("<HHI", tag, kind, count) + inline
    return out + struct.pack("<I", 0) + per_channel + pixels


def test_float_grey_nan_and_infinity_are_replaced_and_reported(tmp_path):
    samples = np.full((4, 6), 0.5, dtype=np.float32)
    samples[0, :3] = np.nan
    samples[1, 0] = np.inf
    samples[2, 0] = -np.inf
    path = float_grey_tiff(tmp_path, samples)
    pic = read_picture(path)
    assert pic.warnings == (
        f"{path}: 5 of 24 pixels were not finite (3 NaN, 1 +inf, 1 -inf); "
        "NaN and -inf were replaced by 0 (black), +inf by 1 (white)",
    )
    grey = pic.rgb[..., 0]
    assert np.isfinite(pic.rgb).all()
    assert grey[0, :3].tolist() == [0, 0, 0] and grey[1, 0] == 1 and grey[2, 0] == 0 and grey[3, 5] == 0.5


def test_finite_images_carry_no_warnings(tmp_path):
    assert read_picture(float_grey_tiff(tmp_path, np.full((2, 2), 2.0))).warnings == ()  # out of range: clipped
    assert read_picture(IMAGES / "00003.png").warnings == ()


def test_float_grey_without_a_single_finite_pixel_is_refused(tmp_path):
    path = float_grey_tiff(tmp_path, np.full((3, 3), np.nan))
    with pytest.raises(InputImageError, match=rf"^{re.escape(str(path))}: every pixel is NaN or infinite"):
        read_picture(path)


def test_float_colour_tiff_is_named_not_called_corrupt(tmp_path):
    path = write_file(tmp_path, "hdr.tif", float_rgb_tiff(np.random.default_rng(0).random((4, 5, 3))))
    with pytest.raises(InputImageError) as caught:
        read_picture(path)
    assert str(caught.value) == (
        f"{path}: a 32-bit floating-point TIFF with 3 samples per pixel, which Pillow cannot decode; "
        "save it as a 16-bit TIFF or PNG (one-channel floating-point TIFFs are read)"
    )


def test_grey_with_alpha_and_rgb_with_transparent_colour(tmp_path):
    la = Image.merge("LA", [Image.new("L", (3, 2), 90), Image.new("L", (3, 2), 51)])
    pic = read_picture(save(la, tmp_path / "la.png"))
    assert pic.is_grey and pic.alpha is not None and pic.alpha[0, 0] == np.float32(51 / 255)
    rgb = Image.new("RGB", (2, 1), (1, 2, 3))
    rgb.putpixel((1, 0), (9, 9, 9))
    pic = read_picture(save(rgb, tmp_path / "trns.png", transparency=(1, 2, 3)))
    np.testing.assert_array_equal(pic.alpha, [[0.0, 1.0]])


def test_bytes_from_stdin_are_named_stdin():
    pic = read_picture((IMAGES / "0014.jpg").read_bytes())
    assert pic.source == "<stdin>" and pic.format == "JPEG"
    assert read_picture((IMAGES / "0014.jpg").read_bytes(), name="piped.jpg").source == "piped.jpg"


# --- EXIF orientation -----------------------------------------------------------------------------


def quadrant_image(width: int = 40, height: int = 20) -> Image.Image:
    """Four flat colours, so a wrong rotation or flip cannot go unnoticed (and JPEG keeps them)."""
    image = Image.new("RGB", (width, height), (255, 0, 0))
    image.paste((0, 255, 0), (width // 2, 0, width, height // 2))
    image.paste((0, 0, 255), (0, height // 2, width // 2, height))
    image.paste((255, 255, 255), (width // 2, height // 2, width, height))
    return image


def exif_with(orientation: int) -> Image.Exif:
    exif = Image.Exif()
    exif[ORIENTATION] = orientation
    exif[0x010F] = "StableSR test camera"  # Make: must survive the orientation reset
    return exif


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_exif_orientation_matches_pillow_exif_transpose(tmp_path, orientation):
    path = save(quadrant_image(5, 3), tmp_path / "o.png", exif=exif_with(orientation), dpi=(100, 200))
    pic = read_picture(path)
    expected = ImageOps.exif_transpose(pillow_open(path))
    np.testing.assert_array_equal(as_uint8(pic.rgb), np.asarray(expected))
    assert pic.exif is not None
    exif = Image.Exif()
    exif.load(pic.exif)
    assert exif[ORIENTATION] == 1 and exif[0x010F] == "StableSR test camera"
    assert pic.dpi == pytest.approx((200, 100) if orientation >= 5 else (100, 200), rel=1e-3)


def test_jpeg_with_orientation_6_round_trip(tmp_path):
    icc = srgb_icc()
    source = save(
        quadrant_image(), tmp_path / "camera.jpg", exif=exif_with(6), icc_profile=icc, dpi=(300, 300), quality=100
    )
    pic = read_picture(source)
    assert (pic.width, pic.height) == (20, 40)  # rotated upright
    np.testing.assert_array_equal(as_uint8(pic.rgb), np.asarray(ImageOps.exif_transpose(pillow_open(source))))

    upscaled = from_model_output(pic, F.interpolate(to_model_input(pic), scale_factor=2, mode="nearest"))
    out = tmp_path / "out.jpg"
    write_picture(upscaled, out)
    written = pillow_open(out)
    assert written.format == "JPEG" and written.size == (40, 80)
    assert written.getexif()[ORIENTATION] == 1 and written.getexif()[0x010F] == "StableSR test camera"
    assert written.info["icc_profile"] == icc
    assert written.info["dpi"] == pytest.approx((600, 600))
    again = read_picture(out)  # orientation 1: a second read must not rotate again
    assert (again.width, again.height) == (40, 80)
    assert np.abs(again.rgb - upscaled.rgb).max() < 0.05


# --- round trips ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["00003.png", "00017_gray.png", "children-alpha.png", "tree_alpha_16bit.png"])
def test_png_round_trip_is_lossless(tmp_path, name):
    pic = read_picture(IMAGES / name)
    out = tmp_path / "out.png"
    write_picture(pic, out)
    again = read_picture(out)
    np.testing.assert_array_equal(again.rgb, pic.rgb)
    assert (again.alpha is None) == (pic.alpha is None)
    if pic.alpha is not None:
        np.testing.assert_array_equal(again.alpha, pic.alpha)
    assert (again.is_grey, again.bit_depth, again.icc_profile) == (pic.is_grey, pic.bit_depth, pic.icc_profile)
    assert again.dpi == pytest.approx(pic.dpi) if pic.dpi else again.dpi is None
    expected_mode = {"00003.png": "RGB", "00017_gray.png": "L", "children-alpha.png": "RGBA"}.get(name)
    if expected_mode:  # 8-bit files go through Pillow and must look ordinary to other programs
        assert pillow_open(out).mode == expected_mode


@pytest.mark.parametrize("channels", [1, 2, 3, 4])
def test_sixteen_bit_png_written_by_us_round_trips(tmp_path, channels):
    rng = np.random.default_rng(channels)
    samples = rng.integers(0, 65536, size=(300, 7, channels), dtype=np.uint16)  # > one 256-row block
    pic = read_picture(png16_bytes(samples, filter_type=4))
    out = tmp_path / "out16.png"
    write_picture(replace(pic, icc_profile=srgb_icc(), dpi=(144.0, 144.0)), out)
    again = read_picture(out)
    assert again.bit_depth == 16 and again.icc_profile == srgb_icc()
    assert again.dpi == pytest.approx((144, 144), rel=1e-3)
    np.testing.assert_array_equal(again.rgb, pic.rgb)
    if channels in (2, 4):
        np.testing.assert_array_equal(again.alpha, pic.alpha)


@pytest.mark.parametrize("bit_depth", [8, 16])  # Pillow's writer and our 16-bit PNG writer
def test_writer_resets_a_stray_exif_orientation(bit_depth):
    pic = picture(np.full((2, 3, 3), 0.5), bit_depth=bit_depth, exif=exif_with(6).tobytes())
    written = pillow_open(encode_picture(pic, "PNG"))
    assert written.size == (3, 2)
    assert written.getexif()[ORIENTATION] == 1 and written.getexif()[0x010F] == "StableSR test camera"


def test_sixteen_bit_grey_tiff_stays_sixteen_bit(tmp_path):
    samples = np.arange(0, 65536, 257 * 3, dtype=np.uint16).reshape(1, -1, 1)
    pic = read_picture(png16_bytes(samples))
    out = tmp_path / "grey16.tif"
    write_picture(pic, out)
    assert pillow_open(out).mode == "I;16"
    np.testing.assert_array_equal(read_picture(out).rgb, pic.rgb)


@pytest.mark.parametrize(
    "format, lossy", [("PNG", False), ("JPEG", True), ("WEBP", True), ("TIFF", False), ("BMP", False)]
)
def test_every_writable_format(tmp_path, format, lossy):
    pic = read_picture(IMAGES / "0030.jpg")
    data = encode_picture(pic, format)
    again = read_picture(data)
    assert again.format == format and (again.width, again.height) == (pic.width, pic.height)
    if lossy:
        assert np.abs(again.rgb - pic.rgb).mean() < 0.02
    else:
        np.testing.assert_array_equal(again.rgb, pic.rgb)


def test_alpha_is_kept_where_possible_and_flattened_on_white_for_jpeg(tmp_path):
    rgb = np.zeros((4, 4, 3), dtype=np.float32)  # black ...
    alpha = np.full((4, 4), 0.0, dtype=np.float32)  # ... fully transparent
    pic = picture(rgb, alpha)
    assert read_picture(encode_picture(pic, "WEBP", quality=100)).alpha is not None
    assert read_picture(encode_picture(pic, "TIFF")).alpha is not None
    for format in ("JPEG", "BMP"):
        flattened = read_picture(encode_picture(pic, format))
        assert flattened.alpha is None and flattened.rgb.min() > 0.97  # white, not black
    half = read_picture(encode_picture(picture(rgb, np.full((4, 4), 0.5), is_grey=True), "BMP"))
    assert half.is_grey and np.allclose(half.rgb, 127 / 255)  # 0 * 0.5 + 1 * 0.5, truncated


def test_format_for_path():
    assert [format_for_path(p) for p in ["a.PNG", "b.jpg", "c.jpeg", "d.webp", "e.tif", "f.TIFF", "g.bmp"]] == [
        "PNG",
        "JPEG",
        "JPEG",
        "WEBP",
        "TIFF",
        "TIFF",
        "BMP",
    ]
    assert format_for_path("h.gif") is None and format_for_path("noextension") is None


def test_stream_destination_and_format_choice(tmp_path):
    pic = read_picture(IMAGES / "0014.jpg")
    stream = io.BytesIO()
    write_picture(pic, stream)  # no format, no path: the source's format
    assert Image.open(io.BytesIO(stream.getvalue())).format == "JPEG"
    write_picture(pic, tmp_path / "out.jpg", format="png")  # an explicit format beats the extension
    assert pillow_open(tmp_path / "out.jpg").format == "PNG"
    with pytest.raises(OptionError, match="between 1 and 100, got 0"):
        encode_picture(pic, "JPEG", quality=0)
    with pytest.raises(OptionError, match="'gif'"):
        encode_picture(pic, "gif")
    with pytest.raises(OutputPathError, match=r"out\.xyz.*unknown image extension"):
        write_picture(pic, tmp_path / "out.xyz")


# --- quantisation ---------------------------------------------------------------------------------


def test_eight_bit_output_truncates_like_upstream(tmp_path):
    values = np.array([0.0, 0.999, 0.9999 / 255, 254.9 / 255, 1.5, -0.2, 1.0, 0.5], dtype=np.float32)
    rgb = np.repeat(values[None, :, None], 3, axis=2)
    out = tmp_path / "q.png"
    write_picture(picture(rgb), out)
    assert np.asarray(pillow_open(out))[0, :, 0].tolist() == [0, 254, 0, 254, 255, 0, 255, 127]


def test_sixteen_bit_output_rounds(tmp_path):
    values = np.array([0.25, 1e-5, 0.3 / 65535, 2.0, -1.0, 1.0], dtype=np.float32)
    rgb = np.repeat(values[None, :, None], 3, axis=2)
    again = read_picture(encode_picture(picture(rgb, bit_depth=16), "PNG"))
    assert as_uint16(again.rgb[0, :, 0]).tolist() == [16384, 1, 0, 65535, 0, 65535]


# --- errors when reading ---------------------------------------------------------------------------


def _truncated(tmp_path: Path, name: str) -> Path:
    data = (IMAGES / name).read_bytes()
    path = tmp_path / f"half_{name}"
    path.write_bytes(data[: len(data) // 2])
    return path


def _huge_png_header(width: int, height: int) -> bytes:
    """A PNG that claims an enormous size but carries almost no data: a decompression bomb's header."""
    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    header = chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
    return b"\x89PNG\r\n\x1a\n" + header + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")


@pytest.mark.parametrize(
    "make, expected",
    [
        (lambda d: d / "missing.png", "no such file"),
        (lambda d: d, "is a folder"),
        (lambda d: write_file(d, "empty.png", b""), "empty file"),
        (lambda d: write_file(d, "notes.png", b"just some text\n"), "not an image"),
        (
            lambda d: write_file(d, "garbage.png", b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4),
            "PNG file but its header is corrupt",
        ),
        (lambda d: write_file(d, "garbage.jpg", b"\xff\xd8\xff\xe0" + bytes(range(256)) * 4), "corrupt"),
        (lambda d: _truncated(d, "00003.png"), "truncated"),
        (lambda d: _truncated(d, "0030.jpg"), "truncated"),
        (lambda d: _truncated(d, "tree_alpha_16bit.png"), "truncated"),
    ],
    ids=[
        "missing", "directory", "empty", "text", "corrupt-png", "corrupt-jpeg",
        "truncated-png", "truncated-jpeg", "truncated-png16",
    ],
)
def test_unreadable_inputs_raise_one_line_naming_the_file(tmp_path, make, expected):
    path = make(tmp_path)
    with pytest.raises(InputImageError) as caught:
        read_picture(path)
    message = str(caught.value)
    assert message.startswith(str(path) + ":") and expected in message and "\n" not in message


def test_decompression_bomb_is_refused_before_decoding(tmp_path):
    path = tmp_path / "bomb.png"
    path.write_bytes(_huge_png_header(20000, 20000))  # above Pillow's own hard limit too
    with pytest.raises(InputImageError) as caught:
        read_picture(path)
    assert str(caught.value) == (
        f"{path}: image is 20000×20000 = 400000000 pixels, above the limit of {imaging_io.DEFAULT_MAX_PIXELS}; "
        "pass --max-pixels to raise it"
    )
    assert Image.MAX_IMAGE_PIXELS is not None  # Pillow's global guard is restored


def test_max_pixels_applies_to_real_images(tmp_path):
    path = IMAGES / "00003.png"
    with pytest.raises(InputImageError, match=r"512×256 = 131072 pixels, above the limit of 100000"):
        read_picture(path, max_pixels=100_000)
    assert read_picture(path, max_pixels=None).width == 512


def test_stdin_errors_name_stdin():
    with pytest.raises(InputImageError, match=r"^<stdin>: not an image"):
        read_picture(b"hello")
    with pytest.raises(InputImageError, match=r"^<stdin>: empty file"):
        read_picture(b"")


# --- errors and atomicity when writing --------------------------------------------------------------


def test_write_leaves_only_the_finished_file(tmp_path):
    out = tmp_path / "out.png"
    write_picture(read_picture(IMAGES / "0014.jpg"), out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.png"]
    umask = os.umask(0)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o666 & ~umask  # not tempfile's 0600


@pytest.mark.parametrize("existing", [None, b"the previous output"])
def test_failed_write_leaves_no_temporary_and_no_partial_file(tmp_path, monkeypatch, existing):
    out = tmp_path / "out.png"
    if existing is not None:
        out.write_bytes(existing)
    seen_temporaries = []

    def exploding_encoder(picture, format, quality, stream):
        stream.write(b"\x89PNG half an image")
        stream.flush()
        seen_temporaries.extend(p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp"))
        raise RuntimeError("encoder failed midway")

    monkeypatch.setattr(imaging_write, "_encode_into", exploding_encoder)
    with pytest.raises(RuntimeError, match="midway"):
        write_picture(read_picture(IMAGES / "0014.jpg"), out)
    assert len(seen_temporaries) == 1 and seen_temporaries[0].startswith(".out.png.")  # hidden, beside the target
    assert [p.name for p in tmp_path.iterdir()] == ([] if existing is None else ["out.png"])
    if existing is not None:
        assert out.read_bytes() == existing


def test_unwritable_destinations_raise_output_path_error(tmp_path):
    pic = read_picture(IMAGES / "0014.jpg")
    with pytest.raises(OutputPathError, match=r"missing/out\.png: folder .*missing does not exist"):
        write_picture(pic, tmp_path / "missing" / "out.png")
    a_file = tmp_path / "a_file.txt"
    a_file.write_text("not a folder")
    # Tests run as root, so permission bits stop nothing; a path under a regular file always fails.
    with pytest.raises(OutputPathError, match=r"a_file\.txt/out\.png: .*a_file\.txt is not a folder"):
        write_picture(pic, a_file / "out.png")
    (tmp_path / "folder.png").mkdir()
    with pytest.raises(OutputPathError, match=r"folder\.png: is a folder"):
        write_picture(pic, tmp_path / "folder.png")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file.txt", "folder.png"]


# --- property: 8-bit PNG read -> write -> read is lossless ----------------------------------------

CHANNELS_BY_MODE = {"L": 1, "RGB": 3, "RGBA": 4}


@st.composite
def small_uint8_images(draw):
    mode = draw(st.sampled_from(sorted(CHANNELS_BY_MODE)))
    height, width = draw(st.integers(1, 9)), draw(st.integers(1, 9))
    pixels = draw(arrays(np.uint8, (height, width, CHANNELS_BY_MODE[mode])))
    return mode, pixels


@settings(max_examples=30, deadline=None, derandomize=True)
@given(small_uint8_images())
def test_eight_bit_png_read_write_read_is_lossless(image):
    mode, pixels = image
    buffer = io.BytesIO()
    Image.fromarray(pixels[..., 0] if mode == "L" else pixels).save(buffer, format="PNG")
    first = read_picture(buffer.getvalue())
    rewritten = encode_picture(first, "PNG")
    second = read_picture(rewritten)
    np.testing.assert_array_equal(second.rgb, first.rgb)
    assert (second.is_grey, second.bit_depth) == (mode == "L", 8)
    if mode == "RGBA":
        np.testing.assert_array_equal(second.alpha, first.alpha)
    decoded = np.asarray(Image.open(io.BytesIO(rewritten)))
    np.testing.assert_array_equal(decoded, pixels[..., 0] if mode == "L" else pixels)
