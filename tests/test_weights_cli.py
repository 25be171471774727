"""`stablesr weights list | download | convert` through Typer's CliRunner."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from hub_server import HubServer, HubState
from store_helpers import unpublished
from stablesr_cli.checkpoints.io import read_safetensors
from stablesr_cli.cli.weights import app
from tiny_checkpoints import write_tiny_cfw_ckpt, write_tiny_sr_ckpt

REPO = "Iceclear/StableSR"
SR, CFW = "stablesr_turbo.ckpt", "vqgan_cfw_00011.ckpt"
# 64 wide: the CLI cannot be told a head count, and open_clip's heads are 64 wide
TEXT_WIDTH = 64


@pytest.fixture(autouse=True)
def _tiny_files_have_no_published_hash(monkeypatch):
    unpublished(monkeypatch)


@pytest.fixture(scope="module")
def official(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("official")
    write_tiny_sr_ckpt(folder / SR, text_width=TEXT_WIDTH)
    write_tiny_cfw_ckpt(folder / CFW)
    return folder


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
