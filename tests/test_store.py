"""The weights store: manifest, downloads from a hub-like local server, verification, offline mode."""

from __future__ import annotations

import hashlib
import json
import shutil
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch

from hub_server import COMMIT, HubServer, HubState
from store_helpers import patch_manifest, unpublished
from stablesr_cli import store
from stablesr_cli.checkpoints.io import read_safetensors, read_state_dict
from stablesr_cli.checkpoints.keymap import COMPONENT_PREFIXES, strip_prefix
from stablesr_cli.errors import CheckpointError, ChecksumError, WeightsNotFoundError
from tiny_checkpoints import tiny_sr_state_dict, write_tiny_cfw_ckpt, write_tiny_sr_ckpt

REPO = "Iceclear/StableSR"
SR, CFW = "stablesr_turbo.ckpt", "vqgan_cfw_00011.ckpt"
TEXT_HEADS = 4  # the tiny text tower is 16 wide
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def official(tmp_path_factory) -> Path:
    """A folder holding the two files of the 'turbo' model under their official names."""
    folder = tmp_path_factory.mktemp("official")
    write_tiny_sr_ckpt(folder / SR)
    write_tiny_cfw_ckpt(folder / CFW)
    return folder


@pytest.fixture
def hub(official, monkeypatch):
    state = HubState(files={(REPO, name): (official / name).read_bytes() for name in (SR, CFW)})
    with HubServer(state, max_lifetime_s=120) as server:
        monkeypatch.setenv("HF_ENDPOINT", server.endpoint)
        yield server


def _unused_endpoint() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


@pytest.fixture(autouse=True)
def _tiny_files_have_no_published_hash(monkeypatch):
    unpublished(monkeypatch)


def _with_sha(monkeypatch, filename: str, sha: str) -> None:
    patch_manifest(monkeypatch, **{SR: {"sha256": None, "size": None}, CFW: {"sha256": None, "size": None}, filename: {"sha256": sha}})


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _leftovers(*roots: Path) -> list[Path]:
    return [p for root in roots if root.exists() for p in root.rglob("*") if p.name.endswith((".incomplete", ".tmp"))]


# ---------------------------------------------------------------------------------------------- manifest


def test_manifest_copies_are_identical():
    packaged = (ROOT / "stablesr_cli" / "data" / "manifest.json").read_bytes()
    assert (ROOT / "weights" / "manifest.json").read_bytes() == packaged


def test_manifest_models():
    manifest = store.load_manifest()
    assert list(manifest.models) == ["turbo", "v2-512", "v2-768v", "face"]
    expected = {
        "turbo": ("stablesr_turbo.ckpt", "vqgan_cfw_00011.ckpt", "eps", 64, 4, 0.5),
        "v2-512": ("stablesr_000117.ckpt", "vqgan_cfw_00011.ckpt", "eps", 64, 200, 0.5),
        "v2-768v": ("stablesr_768v_000139.ckpt", "vqgan_cfw_00011.ckpt", "v", 96, 200, 0.5),
        "face": ("face_stablesr_000050.ckpt", "face_vqgan_cfw_00011.ckpt", "v", 64, 200, 0.0),
    }
    for name, (sr, cfw, prediction, tile, steps, w) in expected.items():
        m = manifest.model(name)
        assert (m.file.filename, m.cfw_file.filename, m.prediction, m.tile_latent, m.default_steps, m.default_w) == (
            sr, cfw, prediction, tile, steps, w
        )
        assert m.licence == "S-Lab License 1.0" and m.file.kind == "sr" and m.cfw_file.kind == "cfw"
    assert manifest.model("v2-768v").native_size == 768
    for spec in manifest.files.values():
        assert spec.urls[0] == f"https://huggingface.co/{REPO}/resolve/main/{spec.filename}"
        assert spec.sha256 is None or (len(spec.sha256) == 64 and set(spec.sha256) <= set("0123456789abcdef"))
    with pytest.raises(WeightsNotFoundError, match="turbo"):
        manifest.model("v3")


def test_store_imports_without_torch_or_huggingface_hub():
    code = (
        "import sys, stablesr_cli.store, stablesr_cli.cli.weights;"
        "heavy = [m for m in ('torch', 'huggingface_hub') if m in sys.modules];"
        "print(heavy); sys.exit(1 if heavy else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


# ---------------------------------------------------------------------------------------------- downloads


def test_first_use_downloads_verifies_and_converts(hub, tmp_path):
    events: list[store.WeightsEvent] = []
    model = store.ensure_model("turbo", on_event=events.append, text_heads=TEXT_HEADS)

    assert model.spec.name == "turbo" and model.prediction == "eps"
    assert set(model.components) >= set(store.REQUIRED_PARTS)
    assert all(p.is_file() and str(p).startswith(str(tmp_path / "stablesr")) for p in model.components.values())
    # said what it fetches, how big and where
    fetches = [e for e in events if e.kind == "fetch"]
    assert [e.file for e in fetches] == [SR, CFW]
    sr_size = len(hub.state.files[(REPO, SR)])
    assert fetches[0].total == sr_size and hub.endpoint in fetches[0].message and str(tmp_path / "hf") in fetches[0].message
    assert max(e.done for e in events if e.kind == "progress" and e.file == SR) == sr_size
    # the downloaded file sits in the shared HF cache, verified against the Hub's LFS hash
    status = {f.spec.filename: f for m in store.model_status() if m.spec.name == "turbo" for f in m.files}
    assert status[SR].downloaded is not None and status[SR].downloaded.read_bytes() == hub.state.files[(REPO, SR)]
    assert f"snapshots/{COMMIT}" in str(status[SR].downloaded)
    assert status[SR].verified_by == "hub" and status[CFW].verified_by == "hub"
    # the converted UNet holds exactly the checkpoint's tensors
    unet = read_state_dict(model.components["unet"])
    reference = strip_prefix(tiny_sr_state_dict(), COMPONENT_PREFIXES["unet"])
    assert set(unet) == set(reference) and all(torch.equal(unet[k], v) for k, v in reference.items())
    assert read_safetensors(model.components["unet"])[1]["model"] == "turbo"

    # second use: nothing fetched again
    before = len(hub.state.requests)
    again = store.ensure_model("turbo", text_heads=TEXT_HEADS)
    assert again.components == model.components and len(hub.state.requests) == before


def test_download_resumes_after_a_dropped_connection(hub):
    size = len(hub.state.files[(REPO, SR)])
    assert size > 11_000_000  # huggingface_hub resumes from whole 10 MiB chunks
    hub.state.drop_first_get[SR] = 11_000_000
    model = store.ensure_model("turbo", text_heads=TEXT_HEADS)
    gets = hub.state.gets(SR)
    assert len(gets) == 2 and gets[0].range is None
    assert gets[1].range is not None and gets[1].range.startswith("bytes=") and gets[1].range != "bytes=0-"
    assert model.components["unet"].is_file()
    downloaded = store.file_status(store.load_manifest().files[SR]).downloaded
    assert downloaded.read_bytes() == hub.state.files[(REPO, SR)]


def test_manifest_checksum_mismatch_is_refused_and_not_converted(hub, monkeypatch, tmp_path):
    wrong = "ab" * 32
    _with_sha(monkeypatch, SR, wrong)
    with pytest.raises(ChecksumError) as err:
        store.ensure_model("turbo", text_heads=TEXT_HEADS)
    message = str(err.value)
    assert SR in message and wrong in message and "\n" not in message
    assert hashlib.sha256(hub.state.files[(REPO, SR)]).hexdigest() in message
    assert not (tmp_path / "stablesr" / "converted" / "stablesr_turbo").exists()
    assert store.file_status(store.load_manifest().files[SR]).downloaded is None  # the bad file was removed


def test_hub_hash_mismatch_is_refused(hub, tmp_path):
    hub.state.etag_override[SR] = "0" * 64  # the Hub says one SHA-256, the bytes have another
    with pytest.raises(ChecksumError, match="0" * 64):
        store.ensure_model("turbo", text_heads=TEXT_HEADS)
    assert not (tmp_path / "stablesr" / "converted" / "stablesr_turbo" / "stamp.json").exists()


def test_published_checksum_that_matches_is_recorded(hub, monkeypatch, official):
    _with_sha(monkeypatch, SR, _sha(official / SR))
    store.ensure_model("turbo", text_heads=TEXT_HEADS)
    assert store.file_status(store.load_manifest().files[SR]).verified_by == "manifest"


def test_concurrent_double_download_does_not_corrupt(hub, tmp_path):
    hub.state.get_delay_s = 0.3  # keep both callers inside the download at once
    results: list[store.ResolvedModel] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            results.append(store.ensure_model("turbo", text_heads=TEXT_HEADS))
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    assert len(results) == 2 and results[0].components == results[1].components
    assert len(hub.state.gets(SR)) == 1 and len(hub.state.gets(CFW)) == 1
    unet = read_state_dict(results[0].components["unet"])
    reference = strip_prefix(tiny_sr_state_dict(), COMPONENT_PREFIXES["unet"])
    assert all(torch.equal(unet[k], v) for k, v in reference.items())
    assert not _leftovers(tmp_path / "stablesr", tmp_path / "hf")


# ---------------------------------------------------------------------------------------------- offline


@pytest.mark.parametrize("how", ["argument", "STABLESR_OFFLINE", "HF_HUB_OFFLINE"])
def test_offline_mode_names_the_command_and_fetches_nothing(hub, monkeypatch, how):
    if how != "argument":
        monkeypatch.setenv(how, "1")
    with pytest.raises(WeightsNotFoundError) as err:
        store.ensure_model("turbo", offline=how == "argument", text_heads=TEXT_HEADS)
    assert "stablesr weights download turbo" in str(err.value) and "\n" not in str(err.value)
    assert hub.state.requests == []


def test_offline_mode_uses_what_is_already_here(hub, monkeypatch, tmp_path):
    hub_files = store.ensure_model("turbo", text_heads=TEXT_HEADS)
    # converted weights gone, downloads kept: offline conversion from the HF cache
    shutil.rmtree(tmp_path / "stablesr" / "converted")
    before = len(hub.state.requests)
    monkeypatch.setenv("STABLESR_OFFLINE", "1")
    model = store.ensure_model("turbo", text_heads=TEXT_HEADS)
    assert model.components == hub_files.components and len(hub.state.requests) == before


# ---------------------------------------------------------------------------------------------- local files


def test_from_dir_needs_no_network(official, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", _unused_endpoint())
    (model,) = store.download(["turbo"], from_dir=official, text_heads=TEXT_HEADS)
    assert model.components["cfw"].is_file()
    status = store.file_status(store.load_manifest().files[SR])
    assert status.converted is not None and status.verified_by is None  # no published hash to compare
    assert status.source_path == str(official / SR) and status.downloaded is None


def test_from_dir_with_a_bad_file_keeps_it_and_refuses_it(official, monkeypatch, tmp_path):
    monkeypatch.setenv("HF_ENDPOINT", _unused_endpoint())
    _with_sha(monkeypatch, SR, "cd" * 32)
    with pytest.raises(ChecksumError, match="not used"):
        store.download(["turbo"], from_dir=official, text_heads=TEXT_HEADS)
    assert (official / SR).is_file()
    assert not (tmp_path / "stablesr" / "converted" / "stablesr_turbo").exists()
    with pytest.raises(WeightsNotFoundError, match="face_stablesr_000050.ckpt"):
        store.download(["face"], from_dir=official, text_heads=TEXT_HEADS)


def test_model_given_as_a_ckpt_path(official, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", _unused_endpoint())
    model = store.ensure_model(official / SR, text_heads=TEXT_HEADS)
    assert model.spec.name == "turbo" and model.source == str(official / SR)
    odd = official.parent / "renamed"
    odd.mkdir(exist_ok=True)
    (odd / "my_model.ckpt").write_bytes((official / SR).read_bytes())
    with pytest.raises(CheckpointError, match="--model NAME"):
        store.ensure_model(odd / "my_model.ckpt", text_heads=TEXT_HEADS)


def test_model_given_as_a_folder_of_converted_files(official, hub, tmp_path):
    folder = tmp_path / "mine"
    store.convert_checkpoint(official / SR, folder, model="turbo", prediction="eps", text_heads=TEXT_HEADS)
    model = store.ensure_model(folder)  # no cfw.safetensors there: the paired CFW is fetched
    assert model.spec.name == "turbo" and model.components["unet"] == folder / "unet.safetensors"
    assert model.components["cfw"].is_file() and len(hub.state.gets(CFW)) == 1 and hub.state.gets(SR) == []
    with pytest.raises(WeightsNotFoundError, match="unet.safetensors"):
        store.ensure_model(tmp_path)


def test_unknown_names_are_refused():
    with pytest.raises(WeightsNotFoundError, match="turbo, v2-512, v2-768v, face"):
        store.ensure_model("sd-upscaler")
    with pytest.raises(WeightsNotFoundError, match="'nope'"):
        store.download(["turbo", "nope"])


def test_stamp_records_the_verified_source(hub, tmp_path):
    store.ensure_model("turbo", text_heads=TEXT_HEADS)
    stamp = json.loads((tmp_path / "stablesr" / "converted" / "stablesr_turbo" / "stamp.json").read_text())
    assert stamp["source_sha256"] == hashlib.sha256(hub.state.files[(REPO, SR)]).hexdigest()
    assert set(stamp["files"]) == {f"{p}.safetensors" for p in ("unet", "time_encoder", "vae", "text_encoder", "context_empty")}
