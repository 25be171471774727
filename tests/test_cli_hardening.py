"""Hostile and careless input to `stablesr upscale`: each case is one line and an exit code, never a traceback.

Impossible sizes fail their image and the batch goes on; options that cannot work are usage errors
(exit 2); file names cannot forge log lines. Signals and broken streams are in test_cli_signals.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cli_helpers import error_lines, invoke, leftovers
from cli_helpers import gradient_png as small_png

TRACEBACK = "Traceback"


pytestmark = pytest.mark.usefixtures("offline", "one_torch_thread")


@pytest.fixture(scope="module")
def folder(tiny_model_dir) -> Path:
    return tiny_model_dir



def one_error_line(stderr: str) -> str:
    assert TRACEBACK not in stderr, stderr
    [line] = error_lines(stderr)
    return line


# ------------------------------------------------------------------ sizes (issue 9, item 6)


def test_a_1x20000_strip_fails_alone_and_the_batch_goes_on(tmp_path, folder):
    """Enlarged to the model's 256-pixel tile on its short side, the strip would be 256x5120000."""
    strip = tmp_path / "in" / "strip.png"
    strip.parent.mkdir()
    Image.fromarray(np.zeros((20000, 1, 3), np.uint8)).save(strip)
    small_png(tmp_path / "in" / "z.png")
    result = invoke(["upscale", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--model", str(folder), "--steps", "1", "--scale", "2"])
    assert result.exit_code == 1
    line = one_error_line(result.stderr)
    assert line.startswith(f"stablesr: {strip}: a 1x20000 image at --scale 2 becomes 2x40000")
    assert "256x5120000" in line and "--max-output-pixels" in line
    assert (tmp_path / "out" / "z.png").is_file() and not (tmp_path / "out" / "strip.png").exists()


@pytest.mark.parametrize(
    ("arguments", "expected"),
    [
        (["--scale", "1000"], "pixels, over the --max-output-pixels limit of 268,435,456"),
        (["--tile-size", "1000000000", "--vae-tiling", "lean"], "(the short side is enlarged to one 1000000000-pixel diffusion tile)"),
        (["--max-output-pixels", "5000"], "over the --max-output-pixels limit of 5,000"),
    ],
)
def test_sizes_that_cannot_fit_are_one_line_per_image(tmp_path, model, arguments, expected):
    a, b = small_png(tmp_path / "a.png"), small_png(tmp_path / "b.png", 48, 40)
    result = invoke(["upscale", str(a), str(b), "-o", str(tmp_path / "out/"), *model, *arguments])
    assert result.exit_code == 1
    assert TRACEBACK not in result.stderr
    lines = error_lines(result.stderr)
    assert len(lines) == 2 and all(expected in line for line in lines), lines
    assert lines[0].startswith(f"stablesr: {a}: ") and lines[1].startswith(f"stablesr: {b}: ")
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


def test_max_output_pixels_zero_lifts_the_limit(tmp_path, model):
    a = small_png(tmp_path / "a.png")
    refused = invoke(["upscale", str(a), *model, "--max-output-pixels", "5000"])
    allowed = invoke(["upscale", str(a), *model, "--max-output-pixels", "0"])
    assert (refused.exit_code, allowed.exit_code) == (1, 0), allowed.stderr
    assert (tmp_path / "a_x2.png").is_file()


def test_running_out_of_memory_fails_that_image_only(tmp_path, model, monkeypatch):
    """The CPU allocator's failure is a plain RuntimeError; it is recognised, not a traceback."""
    from stablesr_cli.api import Upscaler

    real = Upscaler.upscale_tensor
    calls = []

    def first_call_allocates_35_terabytes(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            torch.empty(2**45, dtype=torch.uint8)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Upscaler, "upscale_tensor", first_call_allocates_35_terabytes)
    a, b = small_png(tmp_path / "a.png"), small_png(tmp_path / "b.png")
    result = invoke(["upscale", str(a), str(b), *model])
    assert result.exit_code == 1
    line = one_error_line(result.stderr)
    assert line.startswith(f"stablesr: {a}: out of memory")
    assert (tmp_path / "b_x2.png").is_file() and not (tmp_path / "a_x2.png").exists()


# -------------------------------------------------------------- options (issue 9, item 7)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--seed", str(2**64)], "--seed must be between 0 and 18446744073709551615"),
        (["--seed", "-1"], "--seed must be between 0"),
        (["--suffix", "/x"], "may not contain a path separator"),
        (["--suffix", "../../escaped", "-o", "out/"], "may not contain a path separator"),
        (["--suffix", "{scale:>2000000000}"], "only {scale} may appear in braces"),
        (["--suffix", "{scale!r}"], "only {scale} may appear in braces"),
        (["--suffix", "{0}"], "only {scale} may appear in braces"),
        (["--suffix", "_{"], "not a valid name template"),
        (["--tile-size", "128", "--vae-tile-size", "64", "--vae-tile-stride", "64"], "--vae-tile-size (64) must be at least --tile-size (128)"),
        (["--tile-size", "128", "--tile-overlap", "128"], "--tile-overlap (128) must be smaller than --tile-size (128)"),
    ],
)
def test_options_that_cannot_work_exit_2_before_the_model_loads(tmp_path, no_model, monkeypatch, arguments, message):
    monkeypatch.chdir(tmp_path)
    a = small_png(tmp_path / "in" / "a.png")
    result = invoke(["upscale", str(a), *arguments])
    assert result.exit_code == 2, result.stderr
    assert TRACEBACK not in result.stderr
    [line] = [line for line in result.stderr.splitlines() if line.strip()]
    assert message in line
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == ["a.png"]  # nothing written anywhere


def test_a_literal_brace_suffix_is_still_allowed(tmp_path, model):
    a = small_png(tmp_path / "a.png")
    result = invoke(["upscale", str(a), *model, "--suffix", "_{{x{scale}}}"])
    assert result.exit_code == 0, result.stderr
    assert (tmp_path / "a_{x2}.png").is_file()


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        # the converted tiny model's native tile is 256 pixels: only the loaded model knows it
        (["--tile-overlap", "256"], "--tile-overlap (256) must be smaller than the model's tile size (256)"),
        (["--vae-tile-size", "128", "--vae-tile-stride", "128"], "--vae-tile-size (128) must be at least the model's tile size (256)"),
    ],
)
def test_tilings_the_loaded_model_cannot_run_exit_2(tmp_path, folder, arguments, message):
    a, b = small_png(tmp_path / "a.png"), small_png(tmp_path / "b.png")
    result = invoke(["upscale", str(a), str(b), "--model", str(folder), "--steps", "1", *arguments])
    assert result.exit_code == 2
    line = one_error_line(result.stderr)
    assert message in line
    assert not list(tmp_path.glob("*_x*"))


# ------------------------------------------------------------------ names (issue 9, item 11)

EVIL = "evil\nstablesr: forged.png -> done\x1b[2J\u202e.png"


def test_control_characters_in_names_are_escaped_in_human_output(tmp_path, model):
    bad = tmp_path / "in" / EVIL
    bad.parent.mkdir()
    bad.write_bytes(b"not an image at all")
    good = small_png(tmp_path / "in" / "ok\tname.png")
    result = invoke(["upscale", str(tmp_path / "in"), "-o", str(tmp_path / "out"), *model])
    assert result.exit_code == 1
    assert "\x1b" not in result.stderr and "\u202e" not in result.stderr and "\t" not in result.stderr
    assert not any(line.startswith("stablesr: forged.png") for line in result.stderr.splitlines())
    line = one_error_line(result.stderr)
    assert line.startswith("stablesr: ") and "evil\\nstablesr: forged.png -> done\\x1b[2J\\u202e.png" in line
    assert "ok\\tname.png" in result.stderr  # the finished image's line, escaped too
    assert (tmp_path / "out" / good.name).is_file() and not leftovers(tmp_path / "out")


def test_json_lines_carry_the_names_as_they_are(tmp_path, model):
    bad = tmp_path / EVIL
    bad.write_bytes(b"not an image at all")
    result = invoke(["upscale", str(bad), "--json", *model])
    assert result.exit_code == 1
    [record] = [json.loads(line) for line in result.stderr.splitlines()]
    assert record["input"] == str(bad) and record["status"] == "failed"


def test_dry_run_listing_escapes_names(tmp_path, no_model):
    small_png(tmp_path / "in" / "a\nb.png")
    result = invoke(["upscale", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--dry-run"])
    assert result.exit_code == 0
    [listed] = [line for line in result.stderr.splitlines() if line.startswith("would upscale")]
    assert "a\\nb.png -> " in listed
