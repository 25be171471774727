"""`stablesr info`: versions, devices, and which weights are present and verified."""

from __future__ import annotations

import json

import pytest
import torch

from cli_helpers import invoke
from hub_server import HubServer, HubState
from store_helpers import unpublished
from stablesr_cli import __version__

REPO = "Iceclear/StableSR"
SR, CFW = "stablesr_turbo.ckpt", "vqgan_cfw_00011.ckpt"


@pytest.fixture(autouse=True)
def _tiny_files_have_no_published_hash(monkeypatch):
    unpublished(monkeypatch)


def info_json() -> dict:
    result = invoke(["info", "--json"])
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)


def test_fresh_machine(tmp_path):
    facts = info_json()
    assert facts["stablesr"] == __version__
    assert facts["torch"]["torch"] == torch.__version__
    assert facts["torch"]["cuda_available"] == torch.cuda.is_available()
    assert facts["torch"]["default_device"] == ("cuda" if torch.cuda.is_available() else "cpu")
    assert facts["cache_dir"] == str(tmp_path / "stablesr")
    models = {m["name"]: m for m in facts["models"]}
    assert set(models) >= {"turbo", "v2-512", "v2-768v", "face"}
    assert not any(m["ready"] for m in models.values())

    human = invoke(["info"])
    assert human.exit_code == 0
    text = " ".join(human.stdout.split())
    assert torch.__version__ in text and "turbo" in text and "stablesr weights download turbo" in text


def test_downloaded_weights_show_as_ready_and_verified(tmp_path, monkeypatch, official_tiny_wide):
    official = official_tiny_wide  # 64-wide text tower: open_clip heads, no head count needed
    state = HubState(files={(REPO, name): (official / name).read_bytes() for name in (SR, CFW)})
    with HubServer(state, max_lifetime_s=120) as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
        download = invoke(["weights", "download", "turbo"])
    assert download.exit_code == 0, download.stderr

    turbo = {m["name"]: m for m in info_json()["models"]}["turbo"]
    assert turbo["ready"]
    assert [(f["file"], f["verified_by"]) for f in turbo["files"]] == [(SR, "hub"), (CFW, "hub")]

    monkeypatch.setenv("COLUMNS", "200")  # one table row per line, so the sentences stay whole
    human = invoke(["info"])
    text = " ".join(human.stdout.split())
    assert "ready" in text and "SHA-256 matches the Hub's published hash" in text
    assert "No model is ready yet" not in text

    vae = tmp_path / "stablesr" / "converted" / "stablesr_turbo" / "vae.safetensors"
    vae.write_bytes(vae.read_bytes()[:-1])  # truncated: no longer ready, and said so
    turbo = {m["name"]: m for m in info_json()["models"]}["turbo"]
    assert not turbo["ready"] and "vae.safetensors" in turbo["files"][0]["damaged"]
    text = " ".join(invoke(["info"]).stdout.split())
    assert "damaged" in text and "stablesr weights download" in text
