"""A new user's first hour with `stablesr upscale` (issue 10): no traps, an honest --dry-run,
messages that say what to do, and what Real-ESRGAN users type. Through the real Typer app."""

from __future__ import annotations

import json
import shutil
from io import StringIO
from pathlib import Path

import pytest
from rich.console import Console

from cli_helpers import FAST, error_lines, gradient, invoke, png_bytes
from cli_helpers import gradient_png as picture
from stablesr_cli.cli.batch import model_label
from stablesr_cli.cli.console import RunProgress
from stablesr_cli.cli.scan import RUN_MARKER
from stablesr_cli.errors import OptionError
from stablesr_cli.options import UpscaleOptions, VaeTiling
from stablesr_cli.progress import ProgressEvent


pytestmark = pytest.mark.usefixtures("offline", "one_torch_thread")


@pytest.fixture(scope="module")
def tiny(tiny_model_dir) -> Path:
    return tiny_model_dir



def lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


# ------------------------------------------------------------ 1. the VAE tile stride follows the tile size


@pytest.mark.parametrize("tiling", ["upstream", "lean", "none"])
def test_vae_tile_size_alone_is_accepted_in_every_mode(tmp_path, no_model, tiling):
    a = picture(tmp_path / "a.png")
    result = invoke(["upscale", str(a), "--vae-tile-size", "768", "--vae-tiling", tiling, "--dry-run"])
    assert result.exit_code == 0, result.stderr


def test_the_stride_follows_the_size_and_is_ignored_outside_upstream():
    assert UpscaleOptions().patch_stride == 1000  # upstream's pair, 1280 / 1000
    assert UpscaleOptions(vae_tile_size=768).patch_stride == 600
    assert UpscaleOptions(vae_tile_size=768, vae_tile_stride=512).patch_stride == 512
    UpscaleOptions(vae_tiling=VaeTiling.LEAN, vae_tile_size=256, vae_tile_stride=4000)  # ignored: no error
    with pytest.raises(OptionError, match="vae_tile_stride must be between 1 and vae_tile_size"):
        UpscaleOptions(vae_tile_size=256, vae_tile_stride=4000)


def test_small_pixel_patches_run_end_to_end_with_the_derived_stride(tmp_path, model):
    a = picture(tmp_path / "a.png", 48, 40)  # enlarged to 77x64, padded to 96x64: two 64-px patches
    result = invoke(["upscale", str(a), *model, "--vae-tile-size", "64"])
    assert result.exit_code == 0, result.stderr
    assert (tmp_path / "a_x2.png").is_file()


# ------------------------------------------------------------ 2. earlier outputs are not new inputs


def test_a_second_run_at_another_scale_leaves_the_first_runs_outputs_out(tmp_path, model):
    folder = tmp_path / "dir"
    picture(folder / "grey.png")
    gradient().save(folder / "anim.gif")  # GIF is read when named, not by a scan
    first = invoke(["upscale", str(folder), *model])
    named = invoke(["upscale", str(folder / "anim.gif"), *model])
    assert (first.exit_code, named.exit_code) == (0, 0), first.stderr + named.stderr
    assert (folder / "grey_x2.png").is_file() and (folder / "anim_x2.png").is_file()

    again = invoke(["upscale", str(folder), "--scale", "3", "--dry-run"])
    assert again.exit_code == 0, again.stderr
    planned = [line for line in again.stderr.splitlines() if line.startswith("would upscale")]
    assert planned == [f"would upscale {folder / 'grey.png'} -> {folder / 'grey_x3.png'} (40x32 -> 120x96)"]
    assert "2 files left out as earlier stablesr outputs" in again.stderr
    assert "anim_x2.png" in again.stderr and "grey_x2.png" in again.stderr
    assert "1 file skipped (not images by extension): " + str(folder / "anim.gif") in again.stderr


def test_an_earlier_output_folder_below_the_scan_is_left_out(tmp_path, model):
    folder = tmp_path / "dir"
    picture(folder / "a.png")
    first = invoke(["upscale", str(folder), "-o", str(folder / "out") + "/", *model])
    assert first.exit_code == 0, first.stderr
    assert (folder / "out" / RUN_MARKER).is_file()

    second = invoke(["upscale", str(folder), "-r", "-o", str(folder / "out2") + "/", "--dry-run"])
    assert second.exit_code == 0, second.stderr
    assert [line for line in second.stderr.splitlines() if line.startswith("would")] == [
        f"would upscale {folder / 'a.png'} -> {folder / 'out2' / 'a.png'} (40x32 -> 160x128)"
    ]
    assert "1 file left out as earlier stablesr outputs" in second.stderr

    # naming the output folder itself means its files
    direct = invoke(["upscale", str(folder / "out"), "-o", str(tmp_path / "again") + "/", "--dry-run"])
    assert "would upscale" in direct.stderr and "left out" not in direct.stderr


def test_an_output_folder_holding_inputs_gets_no_marker(tmp_path, model):
    folder = tmp_path / "photos"
    picture(folder / "a.png")
    result = invoke(["upscale", str(folder), "-o", str(folder) + "/", "--suffix", "_big", *model])
    assert result.exit_code == 0, result.stderr
    assert (folder / "a_big.png").is_file() and not (folder / RUN_MARKER).exists()


def test_our_temporary_files_are_never_inputs(tmp_path, no_model):
    temporary = tmp_path / ".a.png.4242-0123abcd.stablesr.tmp"
    temporary.write_bytes(png_bytes(gradient()))
    result = invoke(["upscale", str(temporary), "--dry-run"])
    assert result.exit_code == 1
    [line] = error_lines(result.stderr)
    assert "unfinished file" in line


# ------------------------------------------------------------ 3. --dry-run finds what the run would find


def test_dry_run_refuses_an_unknown_model_and_a_missing_device(tmp_path, no_model):
    a = picture(tmp_path / "a.png")
    unknown = invoke(["upscale", str(a), "--model", "nosuch", "--dry-run"])
    assert unknown.exit_code == 2
    assert error_lines(unknown.stderr) == [
        "stablesr: --model nosuch: neither a model name (turbo, v2-512, v2-768v, face) nor an existing file or "
        "folder; `stablesr weights list` shows the models"
    ]
    gpu = invoke(["upscale", str(a), "--device", "gpu", "--dry-run"])
    assert gpu.exit_code == 2
    [line] = error_lines(gpu.stderr)
    assert line.startswith("stablesr: --device 'gpu' is not a device")
    fp16 = invoke(["upscale", str(a), "--device", "cpu", "--dtype", "fp16", "--dry-run"])
    assert fp16.exit_code == 2 and "fp16" in fp16.stderr


def test_dry_run_reads_every_image_like_the_run(tmp_path, no_model):
    folder = tmp_path / "in"
    picture(folder / "good.png")
    picture(folder / "big.png", 400, 300)
    (folder / "empty.png").write_bytes(b"")
    whole = png_bytes(gradient())
    (folder / "truncated.png").write_bytes(whole[: len(whole) // 2])
    (folder / "notes.jpg").write_text("not a picture")
    result = invoke(["upscale", str(folder), "--max-pixels", "50000", "--dry-run", "--json"])
    assert result.exit_code == 1
    records = {Path(r["input"]).name: r for r in map(json.loads, result.stderr.splitlines())}
    assert records["good.png"]["status"] == "planned"
    assert (records["good.png"]["input_size"], records["good.png"]["size"]) == ([40, 32], [160, 128])
    causes = {"big.png": "--max-pixels", "empty.png": "empty file", "truncated.png": "truncated", "notes.jpg": "not an image"}
    for name, cause in causes.items():
        assert records[name]["status"] == "failed" and cause in records[name]["error"], records[name]
    assert not (tmp_path / "in" / "good_x4.png").exists()


# ------------------------------------------------------------ 5. progress without a terminal


def test_progress_lines_at_a_steady_interval_without_a_terminal(tmp_path, model, monkeypatch):
    monkeypatch.setenv("STABLESR_PROGRESS_INTERVAL", "0")
    a = picture(tmp_path / "a.png")
    result = invoke(["upscale", str(a), *model])
    assert result.exit_code == 0, result.stderr
    progress = [line for line in result.stderr.splitlines() if line.startswith("progress: ")]
    assert progress, result.stderr
    sampling = [line for line in progress if "step 2/2" in line]
    assert sampling and all("(image 1/1)" in line and "elapsed" in line and "ETA" in line for line in sampling)

    monkeypatch.setenv("STABLESR_PROGRESS_INTERVAL", "3600")
    quiet = invoke(["upscale", str(a), *model, "--overwrite"])
    assert quiet.exit_code == 0 and "progress: " not in quiet.stderr


def test_progress_bars_on_a_terminal_show_an_eta():
    buffer = StringIO()
    console = Console(file=buffer, force_terminal=True, width=120)
    progress = RunProgress(console, total_images=2, bars=True)
    with progress.shown():  # the bars are drawn once more when they stop, then erased (transient)
        progress.start_image("a.png")
        progress.on_event(ProgressEvent("sample", step=1, total_steps=4, tile=0, total_tiles=1))
    assert "ETA" in buffer.getvalue()


# ------------------------------------------------------------ 6. output names


@pytest.mark.parametrize(
    ("output", "several", "message"),
    [
        ("results", False, "needs an image extension (results.png); to write into a folder, end its name with / (results/)"),
        ("x.foo", False, ".foo is not an image extension"),
        ("one.png", True, "several inputs need an output folder"),
    ],
)
def test_output_names_that_would_surprise_are_usage_errors(tmp_path, no_model, monkeypatch, output, several, message):
    monkeypatch.chdir(tmp_path)
    inputs = [str(picture(tmp_path / "a.png"))] + ([str(picture(tmp_path / "b.png"))] if several else [])
    result = invoke(["upscale", *inputs, "-o", output])
    assert result.exit_code == 2
    [line] = lines(result.stderr)
    assert message in line
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(Path(i).name for i in inputs)


def test_a_trailing_slash_makes_a_folder_for_one_input(tmp_path, no_model, monkeypatch):
    monkeypatch.chdir(tmp_path)
    picture(tmp_path / "a.png")
    result = invoke(["upscale", "a.png", "-o", "results/", "--dry-run"])
    assert result.exit_code == 0
    assert "would upscale a.png -> results/a.png" in result.stderr


# ------------------------------------------------------------ 7. help reads like a man page: tests/test_cli_help.py
# ------------------------------------------------------------ 8. messages


def test_unknown_model_is_a_usage_error_before_any_work(tmp_path, no_model):
    a = picture(tmp_path / "a.png")
    result = invoke(["upscale", str(a), "--model", "nosuch"])
    assert result.exit_code == 2
    assert len(error_lines(result.stderr)) == 1


def test_device_errors_do_not_name_the_model_path(tmp_path, tiny):
    a = picture(tmp_path / "a.png")
    result = invoke(["upscale", str(a), "--model", str(tiny), "--device", "cuda:7", *FAST])
    assert result.exit_code == 2
    [line] = error_lines(result.stderr)
    assert line.startswith("stablesr: --device cuda:7") and str(tiny) not in line


def test_the_header_names_the_weights_folder_as_given(tmp_path, tiny, monkeypatch):
    shutil.copytree(tiny, tmp_path / "model")
    monkeypatch.chdir(tmp_path)
    picture(tmp_path / "a.png")
    result = invoke(["upscale", "a.png", "--model", "model", *FAST])
    assert result.exit_code == 0, result.stderr
    assert "weights in model/ (turbo) on cpu, 2 steps, w 0.5" in result.stderr
    assert model_label("model", "model") == "weights in model/"  # no official name: the folder alone
    assert model_label("turbo", "turbo") == "model turbo"


def test_api_errors_speak_in_parameters_and_the_cli_in_flags(tmp_path, no_model):
    from stablesr_cli.cli.console import cli_message
    from stablesr_cli.runtime import resolve_device

    with pytest.raises(OptionError) as raised:
        resolve_device("gpu")
    assert "--" not in str(raised.value) and raised.value.options == ("device",)
    assert cli_message(raised.value).startswith("--device 'gpu' is not a device")
    with pytest.raises(OptionError) as stride:
        UpscaleOptions(vae_tile_size=256, vae_tile_stride=4000)
    assert str(stride.value).startswith("vae_tile_stride must be between 1 and vae_tile_size (256)")
    assert cli_message(stride.value).startswith("--vae-tile-stride must be between 1 and --vae-tile-size (256)")

    tiny_input = picture(tmp_path / "dot.png", 1, 1)
    result = invoke(["upscale", str(tiny_input), "--scale", "0.5", "--dry-run"])
    assert result.exit_code == 1
    [line] = error_lines(result.stderr)
    assert line.endswith("a 1x1 image at --scale 0.5 would be 0x0 pixels; use a larger scale")


# ------------------------------------------------------------ 9. --format aliases, plain-word errors


@pytest.mark.parametrize(("given", "extension"), [("jpeg", ".jpg"), ("JPG", ".jpg"), ("tif", ".tiff"), ("TIFF", ".tiff"), ("Png", ".png")])
def test_format_aliases_and_any_case(tmp_path, no_model, given, extension):
    a = picture(tmp_path / "a.png")
    result = invoke(["upscale", str(a), "--format", given, "--dry-run"])
    assert result.exit_code == 0, result.stderr
    assert f"-> {tmp_path / ('a_x4' + extension)}" in result.stderr


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--format", "gif"], "--format gif: not a format stablesr writes; choose png, jpg (or jpeg), webp, tiff (or tif) or bmp"),
        (["--color-fix", "foo"], "--color-fix foo: choose one of adain, wavelet, none"),
        (["--dtype", "fp8"], "--dtype fp8: choose one of auto, fp32, fp16, bf16"),
        (["--vae-tiling", "some"], "--vae-tiling some: choose one of none, upstream, lean"),
        (["--quality", "0"], "--quality must be between 1 and 100, got 0"),
    ],
)
def test_bad_choices_are_one_plain_line(tmp_path, no_model, arguments, message):
    a = picture(tmp_path / "a.png")
    result = invoke(["upscale", str(a), *arguments])
    assert result.exit_code == 2
    assert lines(result.stderr) == [f"stablesr: {message}"]
    assert "Value error" not in result.stderr


# ------------------------------------------------------------ 10. --json with --json-file, -q, skipped files


def test_json_and_json_file_together_both_get_the_lines(tmp_path, model):
    a = picture(tmp_path / "a.png")
    log = tmp_path / "log.jsonl"
    result = invoke(["upscale", str(a), "--json", "--json-file", str(log), *model])
    assert result.exit_code == 0, result.stderr
    on_stderr = [json.loads(line) for line in result.stderr.splitlines()]
    in_file = [json.loads(line) for line in log.read_text().splitlines()]
    assert on_stderr == in_file and [r["status"] for r in in_file] == ["done"]


def test_quiet_dry_run_prints_nothing_but_errors(tmp_path, no_model):
    a = picture(tmp_path / "a.png")
    assert invoke(["upscale", str(a), "-q", "--dry-run"]).stderr == ""
    (tmp_path / "b.png").write_bytes(b"")
    failing = invoke(["upscale", str(a), str(tmp_path / "b.png"), "-q", "--dry-run"])
    assert failing.exit_code == 1 and len(lines(failing.stderr)) == 1


def test_a_scan_says_in_one_line_which_files_it_skipped(tmp_path, no_model):
    folder = tmp_path / "in"
    picture(folder / "a.png")
    for name in ["b.gif", "c.txt", "d.psd", "e.heic", "f.md", "g.svg", "h.raw", ".hidden"]:
        (folder / name).write_text("x")
    result = invoke(["upscale", str(folder), "--dry-run"])
    [line] = [line for line in result.stderr.splitlines() if "not images by extension" in line]
    names = ", ".join(str(folder / n) for n in ["b.gif", "c.txt", "d.psd", "e.heic", "f.md"])
    assert line == f"7 files skipped (not images by extension): {names} and 2 more"


# ------------------------------------------------------------ 11. Real-ESRGAN's spellings


def test_real_esrgan_spellings_are_accepted(tmp_path, no_model):
    a = picture(tmp_path / "a.png")
    result = invoke(["upscale", "-i", str(a), "--outscale", "2", "-f", "jpeg", "--fp32", "--tile", "0", "--dry-run"])
    assert result.exit_code == 0, result.stderr
    assert f"would upscale {a} -> {tmp_path / 'a_x2.jpg'} (40x32 -> 80x64)" in result.stderr
    ext = invoke(["upscale", str(a), "--ext", "webp", "--dry-run"])
    assert f"-> {tmp_path / 'a_x4.webp'}" in ext.stderr


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--fp32", "--dtype", "bf16"], "--fp32 and --dtype bf16 disagree"),
        (["--tile", "0", "--vae-tiling", "lean"], "--tile 0 (no tiling) and --vae-tiling lean disagree"),
        (["--tile", "400"], "--tile 400: stablesr has two tile sizes"),
        (["--outscale", "2", "--scale", "3"], "--outscale 2 and --scale 3 disagree"),
        (["-g", "0", "--device", "cpu"], "-g 0 and --device cpu disagree"),
        (["-g", "1"], "--device cuda:1"),  # -g N is --device cuda:N, which this CPU-only machine lacks
    ],
)
def test_real_esrgan_spellings_that_contradict_or_cannot_work(tmp_path, no_model, arguments, message):
    a = picture(tmp_path / "a.png")
    result = invoke(["upscale", str(a), *arguments, "--dry-run"])
    assert result.exit_code == 2
    [line] = error_lines(result.stderr)
    assert message in line


def test_real_esrgan_spellings_stay_out_of_help_and_in_the_readme():
    help_text = invoke(["upscale", "--help"]).stdout
    for alias in ("--outscale", "--ext", "--fp32", "--gpu-id", "--tile ", "--input"):
        assert alias not in help_text
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    assert "### Coming from Real-ESRGAN" in readme
    for alias in ("`-i INPUT`", "`--outscale`", "`--ext`", "`--fp32`", "`-g N`", "`--tile 0`"):
        assert alias in readme


def test_a_run_with_tile_zero_works(tmp_path, model):
    a = picture(tmp_path / "a.png")
    result = invoke(["upscale", str(a), "-t", "0", *model])
    assert result.exit_code == 0, result.stderr


# ------------------------------------------------------------ 12. re-runs: "already existed" apart from failures


def test_rerun_counts_existing_outputs_apart_and_names_the_flags_once(tmp_path, model):
    folder = tmp_path / "in"
    for name in ["a.png", "b.png", "c.png"]:
        picture(folder / name)
    (folder / "broken.png").write_bytes(b"")
    assert invoke(["upscale", str(folder / "a.png"), str(folder / "b.png"), *model]).exit_code == 0

    again = invoke(["upscale", str(folder), *model])
    assert again.exit_code == 1  # still a failure: nothing is replaced silently
    errors = error_lines(again.stderr)
    exists = [line for line in errors if "already exists" in line]
    assert len(exists) == 2
    assert "--skip-existing" in exists[0] and "--overwrite" in exists[0]
    assert "--skip-existing" not in exists[1]
    assert "1 upscaled, 0 skipped, 2 already existed, 1 failed" in again.stderr
    assert "2 outputs already existed and were left alone: pass --skip-existing" in again.stderr
    failed_list = again.stderr.split("failed:")[-1]
    assert "broken.png" in failed_list and "a.png" not in failed_list
