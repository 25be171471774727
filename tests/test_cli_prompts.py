"""`stablesr upscale --sampler ddim --prompt ... --negative-prompt ...` through the real Typer app, tiny model."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from cli_helpers import error_lines, gradient, invoke, visible_files
from stablesr_cli.errors import PromptTruncatedWarning
from stablesr_cli.imaging.io import read_picture

pytestmark = pytest.mark.usefixtures("offline", "one_torch_thread")

# 40x32 at 2x is 80x64, reflect-padded to 96x96: 64-pixel patches at stride 48 make 2 x 2 pixel patches
PATCHES = ["--vae-tiling", "upstream", "--vae-tile-size", "64", "--vae-tile-stride", "48"]
LONG_PROMPT = "sharp " * 80  # 80 words of one token each, plus start and end: 82 tokens


@pytest.fixture
def photo(tmp_path):
    path = tmp_path / "photo.png"
    gradient(40, 32).save(path)
    return path


def upscale(photo, out, model, *options):
    result = invoke(["upscale", str(photo), "-o", str(out), *model, *PATCHES, *options])
    assert result.exit_code == 0, result.stderr
    return result, read_picture(out).rgb


def test_ddim_with_prompts_and_guidance_from_the_command_line(tmp_path, photo, model):
    result, guided = upscale(
        photo, tmp_path / "guided.png", model,
        "--sampler", "ddim", "--eta", "1", "--prompt", "a photo", "--negative-prompt", "cartoon, blurry",
    )  # fmt: skip
    assert guided.shape == (64, 80, 3)
    assert "2 ddim steps" in result.stderr
    _, ddpm = upscale(photo, tmp_path / "ddpm.png", model)
    _, unguided = upscale(photo, tmp_path / "ddim.png", model, "--sampler", "ddim", "--eta", "1", "--prompt", "a photo")
    _, again = upscale(
        photo, tmp_path / "again.png", model,
        "--sampler", "ddim", "--eta", "1", "--prompt", "a photo", "--negative-prompt", "cartoon, blurry",
    )  # fmt: skip
    assert not np.array_equal(guided, ddpm) and not np.array_equal(guided, unguided)
    assert np.array_equal(guided, again)


def test_help_lists_the_sampler_options():
    result = invoke(["upscale", "--help"])
    assert result.exit_code == 0
    for option in ("--sampler", "--eta", "--prompt", "--negative-prompt", "--cfg"):
        assert option in result.stdout


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--eta", "0.5"], "--eta applies to --sampler ddim only"),
        (["--sampler", "ddim", "--eta", "2"], "--eta must be between 0 and 1"),
        (["--cfg", "-1"], "--cfg must be a number >= 0"),
        (["--sampler", "ddim", "--negative-prompt", "x", "--cfg", "-0.5"], "--cfg must be a number >= 0"),
    ],
)
def test_bad_combinations_exit_2_with_one_line(tmp_path, photo, arguments, message):
    result = invoke(["upscale", str(photo), "-o", str(tmp_path / "out.png"), *arguments])
    assert result.exit_code == 2
    [line] = error_lines(result.stderr)
    assert message in line
    assert not (tmp_path / "out.png").exists()


def test_missing_tokenizer_extra_is_a_one_line_error(tmp_path, photo, monkeypatch):
    monkeypatch.setitem(sys.modules, "ftfy", None)  # `import ftfy` now raises ImportError
    result = invoke(["upscale", str(photo), "-o", str(tmp_path / "out.png"), "--prompt", "a cat"])
    assert result.exit_code == 2
    [line] = error_lines(result.stderr)
    assert "pip install 'stablesr[prompts]'" in line and "ftfy" in line
    assert not (tmp_path / "out.png").exists()


def test_a_long_prompt_warns_once_for_the_whole_run(tmp_path, model, recwarn):
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("a.png", "b.png"):
        gradient(24, 20).save(folder / name)
    result = invoke(["upscale", str(folder), "-o", str(tmp_path / "out"), *model, "--prompt", LONG_PROMPT])
    assert result.exit_code == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if "tokens long" in line]
    assert len(warnings) == 1, result.stderr
    assert "--prompt is 82 tokens long" in warnings[0] and "all 2 images" in warnings[0]
    assert visible_files(tmp_path / "out") == ["a.png", "b.png"]
    # the API's own per-prompt warning is silenced inside the run: the line above says it all
    assert not [w for w in recwarn if issubclass(w.category, PromptTruncatedWarning)]
