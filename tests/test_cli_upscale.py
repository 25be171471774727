"""`stablesr upscale` through the real Typer app (CliRunner) with a tiny random-weight model."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cli_helpers import (
    FAST,
    crop_fixture,
    error_lines,
    gradient,
    invoke,
    leftovers,
    visible_files,
    write_broken_files,
    write_every_kind,
)
from stablesr_cli.cli.scan import RUN_MARKER
from stablesr_cli.imaging.io import read_picture


pytestmark = pytest.mark.usefixtures("offline", "one_torch_thread")


# ----------------------------------------------------------- the big folder run


def test_a_folder_of_every_kind_of_image_including_broken_ones(tmp_path, model):
    inputs = tmp_path / "in"
    good = write_every_kind(inputs)
    broken = write_broken_files(inputs)
    out = tmp_path / "out"

    result = invoke(["upscale", str(inputs), "-o", str(out), *model])

    assert result.exit_code == 1, result.stderr  # some failed, the rest were processed
    assert result.stdout_bytes == b""
    # every broken file: exactly one error line naming it, with its cause
    errors = error_lines(result.stderr)
    causes = {
        "empty": "empty file",
        "truncated": "truncated or corrupt",
        "not_an_image": "not an image",
        "corrupt": "not an image",
    }
    for what, path in broken.items():
        mine = [line for line in errors if str(path) in line]
        assert len(mine) == 1, (what, errors)
        assert causes[what] in mine[0], mine[0]
    assert len(errors) == len(broken)
    assert "failed:" in result.stderr and "4 failed" in result.stderr

    for what, source in good.items():
        written = out / source.name  # an --output folder keeps the names and formats
        assert written.is_file(), (what, sorted(p.name for p in out.iterdir()))
        before, after = read_picture(source), read_picture(written)
        assert (after.width, after.height) == (before.width * 2, before.height * 2), what
        assert after.is_grey == before.is_grey, what
        assert (after.alpha is None) == (before.alpha is None), what
        assert after.bit_depth == before.bit_depth, what
    assert not leftovers(out)
    assert visible_files(out) == sorted(p.name for p in good.values())
    assert (out / RUN_MARKER).is_file()  # a later scan of a folder above out/ leaves it out


def test_image_traits_survive_the_round_trip(tmp_path, model):
    """Grey stays one channel, alpha is reattached, 16 bits stay 16, EXIF is upright, ICC and DPI carried."""
    folder = tmp_path / "in"
    kinds = write_every_kind(folder)
    chosen = [kinds[k] for k in ("grey_jpeg_exif_icc", "rgba16_png", "exif_rotated_jpeg", "tiff", "palette_png")]
    result = invoke(["upscale", *map(str, chosen), *model, "--suffix", "_big"])
    assert result.exit_code == 0, result.stderr

    wolf = Image.open(folder / "wolf_big.jpg")
    assert wolf.mode == "L"
    assert wolf.info.get("icc_profile") == Image.open(kinds["grey_jpeg_exif_icc"]).info.get("icc_profile") != None

    tree = read_picture(folder / "tree16_big.png")
    assert tree.bit_depth == 16 and tree.alpha is not None
    assert len(np.unique(tree.rgb)) > 256  # values between the 8-bit steps: really 16-bit samples

    rotated = Image.open(folder / "rotated_big.jpg")
    assert rotated.size == (64, 80)  # 40x32 stored sideways, orientation 6 -> 32x40 upright, x2
    assert rotated.getexif().get(0x0112, 1) == 1

    scan = Image.open(folder / "scan_big.tiff")
    assert tuple(round(v) for v in scan.info["dpi"]) == (600, 600)

    palette = read_picture(folder / "palette_big.png")
    assert (palette.width, palette.height) == (80, 64)


def test_output_file_json_lines_and_nothing_but_json_on_stderr(tmp_path, model):
    source = crop_fixture("0030.jpg", tmp_path / "a.jpg")
    result = invoke(["upscale", str(source), "-o", str(tmp_path / "big.webp"), "--quality", "80", "--json", *model])
    assert result.exit_code == 0, result.stderr
    records = [json.loads(line) for line in result.stderr.splitlines()]
    assert len(records) == 1
    [record] = records
    assert record["input"] == str(source) and record["output"] == str(tmp_path / "big.webp")
    assert record["status"] == "done" and record["size"] == [80, 64] and record["seconds"] > 0
    assert Image.open(tmp_path / "big.webp").format == "WEBP"


def test_json_file_is_appended_and_human_messages_stay(tmp_path, model):
    source = crop_fixture("0030.jpg", tmp_path / "a.jpg")
    log = tmp_path / "log.jsonl"
    first = invoke(["upscale", str(source), "--json-file", str(log), *model])
    again = invoke(["upscale", str(source), "--json-file", str(log), "--skip-existing", *model])
    assert (first.exit_code, again.exit_code) == (0, 0), first.stderr + again.stderr
    assert "a_x2.jpg" in first.stderr  # the human line is still there
    statuses = [json.loads(line)["status"] for line in log.read_text().splitlines()]
    assert statuses == ["done", "skipped"]


def test_existing_output_fails_only_that_image_and_is_left_untouched(tmp_path, model):
    a = crop_fixture("0030.jpg", tmp_path / "a.png", format="PNG")
    b = crop_fixture("0014.jpg", tmp_path / "b.png", format="PNG")
    existing = tmp_path / "a_x2.png"
    existing.write_bytes(b"keep me")
    result = invoke(["upscale", str(a), str(b), *model])
    assert result.exit_code == 1
    [line] = error_lines(result.stderr)
    assert str(a) in line and "already exists" in line and "--overwrite" in line
    assert existing.read_bytes() == b"keep me"
    assert (tmp_path / "b_x2.png").is_file()

    replaced = invoke(["upscale", str(a), *model, "--overwrite"])
    assert replaced.exit_code == 0, replaced.stderr
    assert Image.open(existing).size == (80, 64)


def test_rerun_with_skip_existing_loads_no_model(tmp_path, model, monkeypatch):
    crop_fixture("0030.jpg", tmp_path / "in" / "a.png", format="PNG")
    crop_fixture("0014.jpg", tmp_path / "in" / "sub" / "b.png", format="PNG")
    first = invoke(["upscale", str(tmp_path / "in"), "-r", *model])
    assert first.exit_code == 0, first.stderr
    assert (tmp_path / "in" / "sub" / "b_x2.png").is_file()

    from stablesr_cli.api import Upscaler

    monkeypatch.setattr(Upscaler, "from_pretrained", classmethod(lambda *a, **k: pytest.fail("model loaded")))
    again = invoke(["upscale", str(tmp_path / "in"), "-r", "--skip-existing", *model])
    assert again.exit_code == 0, again.stderr
    assert "0 upscaled, 2 skipped, 0 failed" in again.stderr
    assert not (tmp_path / "in" / "a_x2_x2.png").exists()  # last run's outputs are not new inputs


# ----------------------------------------------------------- runs that need no model


def test_dry_run_lists_the_plan_and_writes_nothing(tmp_path, no_model):
    write_every_kind(tmp_path / "in")
    (tmp_path / "in" / "rgb_x4.jpg").write_bytes(b"an earlier output")
    result = invoke(["upscale", str(tmp_path / "in"), "--dry-run", "--skip-existing"])
    assert result.exit_code == 0, result.stderr
    assert f"would upscale {tmp_path / 'in' / 'grey.png'} -> {tmp_path / 'in' / 'grey_x4.png'}" in result.stderr
    assert f"skipped {tmp_path / 'in' / 'rgb.jpg'}" in result.stderr
    assert "9 to upscale, 1 to skip, 0 would fail" in result.stderr
    assert sorted(p.name for p in (tmp_path / "in").iterdir() if "_x4" in p.name) == ["rgb_x4.jpg"]


def test_dry_run_json_reports_planned_and_failing_images(tmp_path, no_model):
    crop_fixture("0030.jpg", tmp_path / "a.png", format="PNG")
    (tmp_path / "a_x4.png").write_bytes(b"x")
    crop_fixture("0014.jpg", tmp_path / "b.png", format="PNG")
    result = invoke(["upscale", str(tmp_path / "a.png"), str(tmp_path / "b.png"), "--dry-run", "--json"])
    assert result.exit_code == 1  # a real run would fail a.png
    records = [json.loads(line) for line in result.stderr.splitlines()]
    assert [(Path(r["input"]).name, r["status"]) for r in records] == [("a.png", "failed"), ("b.png", "planned")]


def test_unwritable_output_folder_fails_every_image_before_loading_the_model(tmp_path, no_model):
    crop_fixture("0030.jpg", tmp_path / "a.png", format="PNG")
    crop_fixture("0014.jpg", tmp_path / "b.png", format="PNG")
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("a file where the output folder should go")
    result = invoke(["upscale", str(tmp_path / "a.png"), str(tmp_path / "b.png"), "-o", str(blocker / "out")])
    assert result.exit_code == 1
    errors = error_lines(result.stderr)
    assert len(errors) == 2 and all("is a file" in line for line in errors), errors


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root can write anywhere")
def test_read_only_output_folder(tmp_path, no_model):
    crop_fixture("0030.jpg", tmp_path / "a.png", format="PNG")
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        result = invoke(["upscale", str(tmp_path / "a.png"), "-o", str(locked) + "/"])
    finally:
        locked.chmod(0o700)
    assert result.exit_code == 1
    [line] = error_lines(result.stderr)
    assert "not writable" in line


def test_an_input_is_never_overwritten_even_with_overwrite(tmp_path, no_model):
    a = crop_fixture("0030.jpg", tmp_path / "a.png", format="PNG")
    before = a.read_bytes()
    result = invoke(["upscale", str(a), "-o", str(a), "--overwrite"])
    assert result.exit_code == 1
    [line] = error_lines(result.stderr)
    assert "is an input" in line
    assert a.read_bytes() == before


def test_decompression_bomb_guard_and_override(tmp_path, model):
    a = crop_fixture("0030.jpg", tmp_path / "a.png", format="PNG")
    refused = invoke(["upscale", str(a), "--max-pixels", "1000", *model])
    assert refused.exit_code == 1
    [line] = error_lines(refused.stderr)
    assert str(a) in line and "--max-pixels" in line
    allowed = invoke(["upscale", str(a), "--max-pixels", "0", *model])
    assert allowed.exit_code == 0, allowed.stderr


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--w", "1.5"], "--w must be between 0 and 1"),
        (["--scale", "0"], "--scale must be a positive number"),
        (["--tile-size", "60"], "--tile-size must be a multiple of 8"),
        (["--skip-existing", "--overwrite"], "contradict"),
        (["--suffix", "_{size}"], "--suffix"),
        (["-o", "out.png", "--format", "jpg"], "does not match"),
    ],
)
def test_usage_errors_exit_2_with_one_line(tmp_path, no_model, arguments, message):
    a = crop_fixture("0030.jpg", tmp_path / "a.png", format="PNG")
    result = invoke(["upscale", str(a), *arguments])
    assert result.exit_code == 2
    [line] = [l for l in result.stderr.splitlines() if l.strip()]
    assert line.startswith("stablesr: ") and message in line


def test_stdin_mixed_with_files_is_a_usage_error(tmp_path, no_model):
    a = crop_fixture("0030.jpg", tmp_path / "a.png", format="PNG")
    result = invoke(["upscale", "-", str(a)], input=b"")
    assert result.exit_code == 2
    assert error_lines(result.stderr) == ["stablesr: '-' (standard input) cannot be combined with other inputs"]


def test_missing_files_and_empty_globs_are_named_and_the_rest_runs(tmp_path, model):
    a = crop_fixture("0030.jpg", tmp_path / "a.png", format="PNG")
    result = invoke(["upscale", str(tmp_path / "nope.png"), str(tmp_path / "*.gif"), str(a), *model])
    assert result.exit_code == 1
    assert error_lines(result.stderr) == [
        f"stablesr: {tmp_path / 'nope.png'}: no such file or folder",
        f"stablesr: {tmp_path / '*.gif'}: no image matches this pattern",
    ]
    assert (tmp_path / "a_x2.png").is_file()


def test_missing_weights_offline_is_one_line_naming_the_fix(tmp_path):
    a = crop_fixture("0030.jpg", tmp_path / "a.png", format="PNG")
    result = invoke(["upscale", str(a), "--model", "turbo", "--offline", *FAST])
    assert result.exit_code == 1
    [line] = error_lines(result.stderr)
    assert "stablesr weights download turbo" in line
    assert not (tmp_path / "a_x2.png").exists()


def test_readme_documents_every_upscale_option():
    import re

    import typer.main

    from stablesr_cli.cli import app

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    command = typer.main.get_command(app).commands["upscale"]
    options = [name for param in command.params for name in param.opts if name.startswith("--") and name != "--help"]
    assert len(options) > 25
    undocumented = [name for name in options if not re.search(rf"(`|, ){re.escape(name)}[ `]", readme)]
    assert undocumented == []
    for use in ("**One image**", "**A folder", "**A pipe**", "stablesr weights download turbo", "python -m pytest -q"):
        assert use in readme
