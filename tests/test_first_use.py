"""From nothing to an upscaled image in one command: `stablesr upscale` fetches, verifies and
converts the default model on first use (from a hub-like server on 127.0.0.1), saying on stderr
what it fetches, how big, and where it goes; later runs work offline."""

from __future__ import annotations

import socket
import time

import pytest
from PIL import Image

from cli_helpers import error_lines, invoke
from hub_server import HubServer, HubState
from store_helpers import patch_manifest, unpublished


REPO = "Iceclear/StableSR"
SR, CFW = "stablesr_turbo.ckpt", "vqgan_cfw_00011.ckpt"
FAST = ["--steps", "2", "--scale", "2", "--tile-size", "64"]


@pytest.fixture(autouse=True)
def _tiny_files_have_no_published_hash(monkeypatch):
    unpublished(monkeypatch)


@pytest.fixture
def hub_files(official_sd_shaped):
    official = official_sd_shaped
    return {(REPO, name): (official / name).read_bytes() for name in (SR, CFW)}


def test_first_upscale_downloads_converts_and_then_works_offline(tmp_path, monkeypatch, hub_files):
    photo = tmp_path / "photo.png"
    Image.new("RGB", (24, 20), (120, 60, 200)).save(photo)
    with HubServer(HubState(files=hub_files), max_lifetime_s=240) as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
        first = invoke(["upscale", str(photo), *FAST])
    assert first.exit_code == 0, first.stderr
    said = " ".join(first.stderr.split())
    for fact in (SR, CFW, "converted"):
        assert fact in said, f"stderr does not mention {fact!r}: {said}"
    size_mb = len(hub_files[(REPO, SR)]) / 1e6
    assert f"{size_mb:.1f} MB" in said or f"{size_mb:.0f} MB" in said, said
    assert Image.open(tmp_path / "photo_x2.png").size == (48, 40)

    monkeypatch.setenv("STABLESR_OFFLINE", "1")  # no server any more: everything is cached
    again = invoke(["upscale", str(photo), "-o", str(tmp_path / "again.png"), *FAST])
    assert again.exit_code == 0, again.stderr
    assert (tmp_path / "again.png").read_bytes() == (tmp_path / "photo_x2.png").read_bytes()


def test_offline_and_missing_is_one_line_naming_the_fetch_command(tmp_path, monkeypatch):
    photo = tmp_path / "photo.png"
    Image.new("RGB", (24, 20)).save(photo)
    result = invoke(["upscale", str(photo), "--offline", *FAST])
    assert result.exit_code == 1
    lines = [line for line in result.stderr.splitlines() if line.startswith("stablesr:")]
    assert len(lines) == 1 and "stablesr weights download turbo" in lines[0]
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "photo_x2.png").exists()


def test_first_upscale_shows_byte_progress(tmp_path, monkeypatch, hub_files):
    """Not a terminal here (CliRunner): the download progress is a line at each tenth of the file."""
    photo = tmp_path / "photo.png"
    Image.new("RGB", (24, 20)).save(photo)
    with HubServer(HubState(files=hub_files), max_lifetime_s=240) as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
        result = invoke(["upscale", str(photo), *FAST])
    assert result.exit_code == 0, result.stderr
    size = len(hub_files[(REPO, SR)])
    progress = [line for line in result.stderr.splitlines() if line.startswith(f"{SR}: ") and "%)" in line]
    assert progress and progress[-1].endswith("(100%)") and 3 <= len(progress) <= 10, result.stderr
    assert f"of {size / 1e6:.1f} MB" in progress[-1]


def test_no_network_fails_at_once_with_the_command_that_works(tmp_path, monkeypatch):
    photo = tmp_path / "photo.png"
    Image.new("RGB", (24, 20)).save(photo)
    with socket.socket() as s:  # a port nobody listens on: connections are refused at once
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    patch_manifest(monkeypatch)  # the real file sizes
    started = time.monotonic()
    result = invoke(["upscale", str(photo), *FAST])
    assert time.monotonic() - started < 10
    assert result.exit_code == 1
    (line,) = error_lines(result.stderr)
    assert "`stablesr weights download turbo --from-dir DIR`" in line and "7.4 GB" in line
    assert "Retrying" not in result.stderr and "Traceback" not in result.stderr
    assert "pass --from-dir" not in result.stderr  # upscale has no such option
    assert not (tmp_path / "photo_x2.png").exists()


@pytest.mark.parametrize("where", ["a file", "under a file", "/dev/null"])
def test_an_unusable_cache_folder_is_one_line_naming_the_variable(tmp_path, monkeypatch, where):
    photo = tmp_path / "photo.png"
    Image.new("RGB", (24, 20)).save(photo)
    blocker = tmp_path / "blocker"
    blocker.write_text("not a folder")
    value = {"a file": str(blocker), "under a file": str(blocker / "cache"), "/dev/null": "/dev/null"}[where]
    monkeypatch.setenv("STABLESR_CACHE_DIR", value)
    result = invoke(["upscale", str(photo), *FAST])
    assert result.exit_code == 1
    (line,) = error_lines(result.stderr)
    assert f"STABLESR_CACHE_DIR={value}" in line and "Traceback" not in result.stderr
