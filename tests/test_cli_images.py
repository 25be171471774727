"""Float images with NaN or infinite pixels through `stablesr upscale`: replaced, said, and never all black."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from cli_helpers import FAST, crop_fixture, error_lines, invoke, visible_files
from stablesr_cli.imaging.io import read_picture


@pytest.fixture(autouse=True)
def offline(isolated, monkeypatch):
    monkeypatch.setenv("STABLESR_OFFLINE", "1")


@pytest.fixture(scope="module")
def model(tiny_model_dir) -> list[str]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors run fastest on one thread, and the CI box is shared
    yield ["--model", str(tiny_model_dir), *FAST]
    torch.set_num_threads(before)


def float_tiff(path, samples: np.ndarray):
    Image.fromarray(samples.astype(np.float32), "F").save(path)
    return path


def scan_with_holes() -> np.ndarray:
    """A float grey ramp (40x32) with 6 NaN 'no data' pixels and one +inf, as scientific exports have."""
    samples = np.tile(np.linspace(0.1, 0.9, 40, dtype=np.float32), (32, 1))
    samples[10, 4:10] = np.nan
    samples[20, 30] = np.inf
    return samples


def test_nan_pixels_are_replaced_and_the_run_says_so(tmp_path, model):
    source = float_tiff(tmp_path / "scan.tif", scan_with_holes())
    result = invoke(["upscale", str(source), "-o", str(tmp_path / "big.tif"), *model])
    assert result.exit_code == 0, result.stderr
    assert (
        f"stablesr: warning: {source}: 7 of 1280 pixels were not finite (6 NaN, 1 +inf); "
        "NaN and -inf were replaced by 0 (black), +inf by 1 (white)"
    ) in result.stderr.splitlines()
    out = read_picture(tmp_path / "big.tif")
    assert (out.width, out.height, out.is_grey, out.bit_depth) == (80, 64, True, 16)
    assert out.rgb.mean() > 0.2 and out.rgb.std() > 0.05  # the picture, not the all-black image NaN gave


def test_json_lines_carry_the_warning(tmp_path, model):
    source = float_tiff(tmp_path / "scan.tif", scan_with_holes())
    plain = crop_fixture("0030.jpg", tmp_path / "photo.jpg")
    result = invoke(["upscale", str(source), str(plain), "-o", str(tmp_path / "out") + "/", "--json", *model])
    assert result.exit_code == 0, result.stderr
    records = {json.loads(line)["input"]: json.loads(line) for line in result.stderr.splitlines()}  # only JSON
    assert records[str(source)]["status"] == "done"
    [warning] = records[str(source)]["warnings"]
    assert warning.startswith(f"{source}: 7 of 1280 pixels were not finite")
    assert records[str(plain)]["warnings"] == []


def test_quiet_hides_the_warning(tmp_path, model):
    source = float_tiff(tmp_path / "scan.tif", scan_with_holes())
    result = invoke(["upscale", str(source), "-o", str(tmp_path / "big.tif"), "--quiet", *model])
    assert result.exit_code == 0 and result.stderr == ""


def test_an_image_with_no_finite_pixel_fails_alone(tmp_path, model):
    empty = float_tiff(tmp_path / "empty.tif", np.full((32, 40), np.nan))
    plain = crop_fixture("0030.jpg", tmp_path / "photo.jpg")
    result = invoke(["upscale", str(empty), str(plain), "-o", str(tmp_path / "out") + "/", *model])
    assert result.exit_code == 1
    assert error_lines(result.stderr) == [
        f"stablesr: {empty}: every pixel is NaN or infinite; the image holds no values to upscale"
    ]
    assert visible_files(tmp_path / "out") == ["photo.jpg"]  # the batch went on
