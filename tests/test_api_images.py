"""The Python API keeps what the command line keeps: mode, alpha, bit depth, orientation and metadata.

`Upscaler.upscale(PIL.Image)` and `stablesr upscale FILE` share one path (a `Picture` through the
tensor bridge); these tests use the tiny converted model that the CLI tests use.
"""

from __future__ import annotations

import dataclasses
import io
import warnings

import numpy as np
import pytest
import torch
from PIL import Image, ImageCms

from cli_helpers import FAST, IMAGES, crop_fixture, gradient, invoke
from stablesr_cli.api import Upscaler
from stablesr_cli.errors import InputImageError
from stablesr_cli.imaging.pil_images import ImageChangedWarning
from stablesr_cli.imaging.tensor_bridge import resize_alpha
from stablesr_cli.options import UpscaleOptions

# The same settings as the CLI tests' FAST: 2 steps, 2x, one 64-pixel diffusion tile.
OPTIONS = UpscaleOptions(scale=2, w=0.5, steps=2, tile_size=64, tile_overlap=0)
ORIENTATION = 0x0112


@pytest.fixture(scope="module")
def upscaler(tiny_model_dir) -> Upscaler:
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors run fastest on one thread, and the CI box is shared
    yield Upscaler.from_pretrained(tiny_model_dir)
    torch.set_num_threads(before)


def upscale(upscaler: Upscaler, image: Image.Image) -> Image.Image:
    return upscaler.upscale(image, OPTIONS)


def opened(image: Image.Image, format: str = "PNG", **options: object) -> Image.Image:
    """`image` saved and opened again, as a user's `Image.open` hands it over (lazily loaded, with its info)."""
    buffer = io.BytesIO()
    image.save(buffer, format=format, **options)
    return Image.open(io.BytesIO(buffer.getvalue()))


def test_rgba_keeps_its_alpha(upscaler):
    source = gradient().convert("RGBA")
    y, x = np.mgrid[0:32, 0:40]
    source.putalpha(Image.fromarray(np.where(x < 20, 0, np.minimum(255, y * 8)).astype(np.uint8)))  # hard edge + ramp
    out = upscale(upscaler, source)
    assert (out.mode, out.size) == ("RGBA", (80, 64))
    alpha_in = np.asarray(source)[..., 3].astype(np.float32) / 255
    expected = (resize_alpha(alpha_in, 64, 80) * 255).astype(np.uint8)  # bicubic, clamped, truncated
    np.testing.assert_array_equal(np.asarray(out)[..., 3], expected)


def test_grey_comes_back_grey(upscaler):
    source = Image.open(IMAGES / "00017_gray.png").crop((100, 100, 140, 132))
    assert source.mode == "L"
    out = upscale(upscaler, source)
    assert (out.mode, out.size) == ("L", (80, 64))
    assert np.asarray(out).std() > 0


def test_sixteen_bit_grey_comes_back_sixteen_bit(upscaler):
    ramp = (np.linspace(0, 65535, 40 * 32).reshape(32, 40)).astype(np.uint16)
    source = opened(Image.fromarray(ramp))
    assert source.mode == "I;16"
    out = upscale(upscaler, source)
    assert (out.mode, out.size) == ("I;16", (80, 64))
    values = np.asarray(out).astype(np.int64)
    assert values.max() > 255
    assert np.any(values % 257 != 0)  # not 8-bit values stretched to 16 bits: the low byte carries detail


@pytest.mark.parametrize(
    "make, mode_out",
    [
        (lambda: gradient().convert("LA"), "LA"),
        (lambda: gradient(), "RGB"),
        (lambda: gradient().convert("1"), "L"),  # a bilevel image gains grey levels when enlarged
        (lambda: gradient().convert("P", palette=Image.Palette.ADAPTIVE, colors=16), "RGB"),
        (lambda: opened(gradient().convert("P", palette=Image.Palette.ADAPTIVE, colors=16), transparency=0), "RGBA"),
        (lambda: gradient().convert("CMYK"), "RGB"),
        (lambda: Image.fromarray(np.linspace(0, 1, 40 * 32, dtype=np.float32).reshape(32, 40), "F"), "F"),
        (lambda: Image.fromarray(np.linspace(0, 65535, 40 * 32).reshape(32, 40).astype(np.int32), "I"), "I"),
    ],
    ids=["LA", "RGB", "1", "P", "P-transparent", "CMYK", "F", "I"],
)
def test_every_mode_comes_back_in_its_own_kind(upscaler, make, mode_out):
    out = upscale(upscaler, make())
    assert (out.mode, out.size) == (mode_out, (80, 64))
    values = np.asarray(out, dtype=np.float64)
    assert np.isfinite(values).all() and values.std() > 0
    if mode_out == "F":
        assert 0.0 <= values.min() and values.max() <= 1.0
    if mode_out == "RGBA":
        assert values[..., 3].min() == 0  # palette entry 0 was transparent


def test_exif_orientation_is_applied_and_metadata_carried(upscaler):
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    exif = Image.Exif()
    exif[ORIENTATION] = 6  # the camera was turned: upright is 90 degrees clockwise
    source = opened(gradient(40, 32), "JPEG", exif=exif.tobytes(), icc_profile=icc, dpi=(72, 72))
    out = upscale(upscaler, source)
    assert out.size == (64, 80)  # 32x40 upright, doubled
    assert out.info["icc_profile"] == icc
    assert tuple(round(v) for v in out.info["dpi"]) == (144, 144)  # same print size at twice the pixels
    assert out.getexif().get(ORIENTATION) == 1
    saved = opened(out, "JPEG", exif=out.info["exif"], icc_profile=out.info["icc_profile"])
    assert saved.getexif().get(ORIENTATION) == 1 and saved.info["icc_profile"] == icc


def test_api_and_cli_give_the_same_image(upscaler, tmp_path, tiny_model_dir):
    """One implementation: the same RGBA file through `stablesr upscale` and through `Upscaler.upscale`."""
    source = crop_fixture("children-alpha.png", tmp_path / "rgba.png")
    model = ["--model", str(tiny_model_dir), *FAST, "--w", "0.5"]
    result = invoke(["upscale", str(source), "-o", str(tmp_path / "cli.png"), *model])
    assert result.exit_code == 0, result.stderr
    from_cli = Image.open(tmp_path / "cli.png")
    from_api = upscale(upscaler, Image.open(source))
    assert from_cli.mode == from_api.mode == "RGBA"
    np.testing.assert_array_equal(np.asarray(from_api), np.asarray(from_cli))


def test_nan_pixels_are_replaced_with_a_warning(upscaler):
    samples = np.tile(np.linspace(0, 1, 40, dtype=np.float32), (32, 1))
    samples[3, :5] = np.nan
    samples[4, 0] = np.inf
    with pytest.warns(ImageChangedWarning, match=r"6 of 1280 pixels were not finite \(5 NaN, 1 \+inf\)"):
        out = upscale(upscaler, Image.fromarray(samples, "F"))
    values = np.asarray(out)
    assert out.mode == "F" and np.isfinite(values).all() and values.max() > 0.5


def test_finite_images_raise_no_warning(upscaler):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        upscale(upscaler, Image.fromarray(np.full((32, 40), 0.25, dtype=np.float32), "F"))


def test_an_image_with_no_finite_pixel_is_refused(upscaler):
    with pytest.raises(InputImageError, match="every pixel is NaN or infinite"):
        upscale(upscaler, Image.fromarray(np.full((32, 40), np.nan, dtype=np.float32), "F"))


def test_options_and_overrides_still_apply(upscaler):
    out = upscaler.upscale(gradient(), dataclasses.replace(OPTIONS, scale=1.5))
    assert out.size == (60, 48)
    assert upscaler.upscale(gradient(), OPTIONS, scale=1).size == (40, 32)
