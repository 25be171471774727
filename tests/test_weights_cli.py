"""`stablesr weights list | download | convert | verify` through Typer's CliRunner."""

from __future__ import annotations

import os
import socket
import sys
import time
from pathlib import Path

import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from cli_helpers import error_lines, invoke
from hub_server import HubServer, HubState
from store_helpers import unpublished
from stablesr_cli.checkpoints.io import read_safetensors
from stablesr_cli.cli.weights import app
from stablesr_cli.store import verify_folder
from tiny_checkpoints import WIDE_TEXT_WIDTH as TEXT_WIDTH

REPO = "Iceclear/StableSR"
SR, CFW = "stablesr_turbo.ckpt", "vqgan_cfw_00011.ckpt"


@pytest.fixture(autouse=True)
def _tiny_files_have_no_published_hash(monkeypatch):
    unpublished(monkeypatch)


@pytest.fixture(scope="module")
def official(official_tiny_wide) -> Path:
    """The 64-wide text tower: `weights download` cannot be told a head count."""
    return official_tiny_wide


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


def _one_error_line(result) -> str:
    """The error: exactly one `stablesr: ` line, and the last thing said (progress notes may precede it)."""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("stablesr: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], result.stderr
    return errors[0]


def test_help_explains_the_path_to_the_first_image(runner):
    result = runner.invoke(app, ["--help"], terminal_width=120)
    assert result.exit_code == 0
    text = " ".join(result.stdout.split())
    for needle in ("stablesr weights download turbo", "stablesr upscale", "--from-dir", "HF_ENDPOINT", "STABLESR_OFFLINE",
                   "S-Lab", "list", "convert", "STABLESR_CACHE_DIR"):
        assert needle in text, needle


def test_list_on_a_fresh_machine(runner):
    result = runner.invoke(app, ["list"], terminal_width=200)
    assert result.exit_code == 0, result.stderr
    for name in ("turbo", "v2-512", "v2-768v", "face", "stablesr_768v_000139.ckpt", "face_vqgan_cfw_00011.ckpt"):
        assert name in result.stdout
    assert "stablesr weights download turbo" in result.stdout


def test_download_then_list(runner, official, monkeypatch, tmp_path):
    state = HubState(files={(REPO, n): (official / n).read_bytes() for n in (SR, CFW)})
    with HubServer(state, max_lifetime_s=120) as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
        result = runner.invoke(app, ["download", "turbo"])
    assert result.exit_code == 0, result.stderr
    assert f"downloading {SR}" in result.stderr and hub.endpoint in result.stderr
    assert "turbo: ready" in result.stderr
    listing = runner.invoke(app, ["list"], terminal_width=250)
    assert listing.exit_code == 0
    turbo_rows = [line for line in listing.stdout.splitlines() if SR in line or CFW in line]
    assert len(turbo_rows) >= 2 and all("Hub SHA-256" in row for row in turbo_rows[:2])
    assert str(tmp_path / "stablesr") in listing.stdout
    assert "turbo: " in listing.stdout and "; ready" in listing.stdout


def test_download_from_dir(runner, official, tmp_path):
    result = runner.invoke(app, ["download", "turbo", "--from-dir", str(official)])
    assert result.exit_code == 0, result.stderr
    assert (tmp_path / "stablesr" / "converted" / "stablesr_turbo" / "unet.safetensors").is_file()


def test_download_errors(runner, monkeypatch):
    result = runner.invoke(app, ["download", "turbo", "sdxl"])
    assert result.exit_code == 2
    assert "sdxl" in _one_error_line(result)
    monkeypatch.setenv("STABLESR_OFFLINE", "1")
    result = runner.invoke(app, ["download", "turbo"])
    assert result.exit_code == 1
    assert "stablesr weights download turbo" in _one_error_line(result)


def test_convert(runner, official, tmp_path):
    out = tmp_path / "converted"
    result = runner.invoke(app, ["convert", str(official / SR), "--cfw", str(official / CFW), "-o", str(out), "--fp16"])
    assert result.exit_code == 0, result.stderr
    names = {p.name for p in out.iterdir()}
    assert names == {"unet.safetensors", "time_encoder.safetensors", "vae.safetensors", "text_encoder.safetensors",
                     "context_empty.safetensors", "cfw.safetensors", "stamp.json"}
    tensors, meta = read_safetensors(out / "unet.safetensors")
    assert meta["model"] == "turbo" and meta["prediction"] == "eps" and meta["format"] == "stablesr/1"
    assert all(t.dtype == torch.float16 for t in tensors.values())
    context = read_safetensors(out / "context_empty.safetensors")[0]["context"]
    assert context.shape == (1, 77, TEXT_WIDTH)


def test_convert_errors(runner, official, tmp_path):
    result = runner.invoke(app, ["convert", str(official / CFW), "-o", str(tmp_path / "a")])
    assert result.exit_code == 1 and "--cfw" in _one_error_line(result)

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    evil = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "x": Evil()}, evil)
    result = runner.invoke(app, ["convert", str(evil), "-o", str(tmp_path / "b")])
    assert result.exit_code == 1 and "refused" in _one_error_line(result) and "pwned" not in result.stdout

    result = runner.invoke(app, ["convert", str(tmp_path / "missing.ckpt"), "-o", str(tmp_path / "c")])
    assert result.exit_code == 1 and "missing.ckpt" in _one_error_line(result)

    result = runner.invoke(app, ["convert", str(official / SR), "-o", str(tmp_path / "d"), "--model", "v9"])
    assert result.exit_code == 2 and "v9" in _one_error_line(result)


# ---------------------------------------------------------------------------------------------- convert without --cfw


def test_convert_without_cfw_of_an_unknown_model_warns_and_upscale_names_the_cfw_file(runner, official, tmp_path):
    mine = tmp_path / "my_model.ckpt"
    mine.write_bytes((official / SR).read_bytes())
    out = tmp_path / "mine"
    result = runner.invoke(app, ["convert", str(mine), "-o", str(out), "--prediction", "v"])
    assert result.exit_code == 0, result.stderr  # crashed after converting before (no model, no --cfw)
    warning = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert len(warning) == 1 and "cfw.safetensors" in warning[0]
    assert f"stablesr weights convert --cfw CFW_CKPT -o {out}" in " ".join(result.stderr.split())

    photo = tmp_path / "photo.png"
    Image.new("RGB", (16, 16)).save(photo)
    upscale = invoke(["upscale", str(photo), "--model", str(out), "--steps", "1"])
    assert upscale.exit_code == 1
    (line,) = error_lines(upscale.stderr)
    assert "cfw.safetensors" in line and "--cfw CFW_CKPT" in line and "which StableSR model" not in line

    added = runner.invoke(app, ["convert", "--cfw", str(official / CFW), "-o", str(out)])
    assert added.exit_code == 0, added.stderr
    assert (out / "cfw.safetensors").is_file() and "warning" not in added.stderr
    assert {c.path.name for c in verify_folder(out)} == {p.name for p in out.glob("*.safetensors")}


def test_convert_without_cfw_of_an_official_model_says_what_happens_next(runner, official, tmp_path):
    out = tmp_path / "turbo"
    result = runner.invoke(app, ["convert", str(official / SR), "-o", str(out)])
    assert result.exit_code == 0, result.stderr
    said = " ".join(result.stderr.split())
    assert f"the first upscale fetches {CFW}" in said and f"stablesr weights convert --cfw {CFW} -o {out}" in said


def test_convert_needs_something_to_convert(runner, tmp_path):
    result = runner.invoke(app, ["convert", "-o", str(tmp_path / "x")])
    assert result.exit_code == 2 and "nothing to convert" in _one_error_line(result)


@pytest.mark.skipif(sys.platform == "win32", reason="FIFOs and /dev/zero are POSIX")
@pytest.mark.parametrize("special", ["fifo", "/dev/zero"])
def test_convert_refuses_a_fifo_or_a_device(runner, official, tmp_path, special):
    if special == "fifo":
        path = tmp_path / "pipe.ckpt"
        os.mkfifo(path)
        shown = "named pipe"
    else:
        path, shown = Path(special), "character device"
    for arguments in (["convert", str(path), "-o", str(tmp_path / "a")],
                      ["convert", str(official / SR), "--cfw", str(path), "-o", str(tmp_path / "b")]):
        result = runner.invoke(app, arguments)
        assert result.exit_code == 1
        assert str(path) in _one_error_line(result) and shown in _one_error_line(result)
    assert not (tmp_path / "b").exists()  # refused before the long conversion started


# ---------------------------------------------------------------------------------------------- verify, list


def test_verify_a_folder(runner, official, tmp_path):
    out = tmp_path / "converted"
    assert runner.invoke(app, ["convert", str(official / SR), "--cfw", str(official / CFW), "-o", str(out)]).exit_code == 0
    result = runner.invoke(app, ["verify", str(out)])
    assert result.exit_code == 0, result.stderr
    assert result.stdout.count("ok  ") == 6 and "all 6 files are as recorded" in result.stdout
    for name in ("unet.safetensors", "cfw.safetensors"):
        data = bytearray((out / name).read_bytes())
        data[-3] ^= 0x01
        (out / name).write_bytes(bytes(data))
    result = runner.invoke(app, ["verify", str(out)])
    assert result.exit_code == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("stablesr: ")]
    assert sorted(Path(line.split(": ")[1]).name for line in errors) == ["cfw.safetensors", "unet.safetensors"]
    assert all("recorded at conversion" in line for line in errors) and "2 of 6 files damaged" in result.stderr


def test_verify_usage(runner, tmp_path):
    result = runner.invoke(app, ["verify"])
    assert result.exit_code == 0 and "nothing to verify" in result.stdout
    result = runner.invoke(app, ["verify", "turbo"])
    assert result.exit_code == 1 and "stablesr weights download turbo" in _one_error_line(result)
    result = runner.invoke(app, ["verify", str(tmp_path / "nowhere")])
    assert result.exit_code == 2 and "neither a model name" in _one_error_line(result)


def test_download_verify_and_a_truncated_cache_file(runner, official, tmp_path):
    assert runner.invoke(app, ["download", "turbo", "--from-dir", str(official)]).exit_code == 0
    result = runner.invoke(app, ["verify", "turbo"])
    assert result.exit_code == 0, result.stderr
    assert result.stdout.count("ok  ") == 6  # five converted diffusion files and the CFW file (no download in the HF cache)
    unet = tmp_path / "stablesr" / "converted" / "stablesr_turbo" / "unet.safetensors"
    unet.write_bytes(unet.read_bytes()[:-10])
    listing = runner.invoke(app, ["list"], terminal_width=250)
    assert listing.exit_code == 0
    row = next(line for line in listing.stdout.splitlines() if SR in line)
    assert "damaged" in row and "ready" not in next(line for line in listing.stdout.splitlines() if line.startswith("turbo: "))
    assert "stablesr weights download turbo" in listing.stdout
    result = runner.invoke(app, ["verify", "turbo"])
    assert result.exit_code == 1 and "unet.safetensors" in result.stderr and "truncated" in result.stderr
    assert runner.invoke(app, ["download", "turbo", "--from-dir", str(official)]).exit_code == 0  # converts it again
    assert runner.invoke(app, ["verify", "turbo"]).exit_code == 0


# ---------------------------------------------------------------------------------------------- environment


@pytest.mark.parametrize("where", ["a file", "under a file", "/dev/null"])
def test_download_with_an_unusable_cache_folder(runner, official, tmp_path, monkeypatch, where):
    blocker = tmp_path / "blocker"
    blocker.write_text("not a folder")
    value = {"a file": str(blocker), "under a file": str(blocker / "cache"), "/dev/null": "/dev/null"}[where]
    monkeypatch.setenv("STABLESR_CACHE_DIR", value)
    result = runner.invoke(app, ["download", "turbo", "--from-dir", str(official)])
    assert result.exit_code == 1
    assert f"STABLESR_CACHE_DIR={value}" in _one_error_line(result) and "Traceback" not in result.output


def test_download_without_network_fails_at_once(runner, monkeypatch):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    started = time.monotonic()
    result = runner.invoke(app, ["download", "turbo"])
    assert time.monotonic() - started < 5 and result.exit_code == 1
    line = _one_error_line(result)
    assert "refused" in line and "`stablesr weights download turbo --from-dir DIR`" in line
    assert "Retrying" not in result.stderr
