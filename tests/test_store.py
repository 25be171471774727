"""The weights store: manifest, downloads from a hub-like local server, verification, offline mode."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from hub_server import COMMIT, HubServer, HubState
from store_helpers import patch_manifest, unpublished
from stablesr_cli import store
from stablesr_cli.checkpoints.io import read_safetensors, read_state_dict
from stablesr_cli.checkpoints.keymap import COMPONENT_PREFIXES, strip_prefix
from stablesr_cli.errors import CheckpointError, ChecksumError, StableSRError, WeightsNotFoundError
from tiny_checkpoints import TEXT_HEADS, tiny_sr_state_dict

REPO = "Iceclear/StableSR"
SR, CFW = "stablesr_turbo.ckpt", "vqgan_cfw_00011.ckpt"
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def official(official_tiny) -> Path:
    """A folder holding the two files of the 'turbo' model under their official names."""
    return official_tiny


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
    changes = {name: {"sha256": None, "size": None} for name in (SR, CFW)}
    changes[filename]["sha256"] = sha
    patch_manifest(monkeypatch, **changes)


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
        assert (m.file.filename, m.cfw_file.filename, m.facts.prediction, m.facts.native_tile, m.facts.default_steps, m.facts.default_w) == (
            sr, cfw, prediction, tile, steps, w
        )
        assert m.licence == "S-Lab License 1.0" and m.file.kind == "sr" and m.cfw_file.kind == "cfw"
    assert manifest.model("v2-768v").facts.native_size == 768
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


def test_checking_a_file_and_a_folder_never_imports_torch(official, tmp_path):
    folder = tmp_path / "mine"
    store.convert_checkpoint(official / SR, folder, cfw=official / CFW, model="turbo", text_heads=TEXT_HEADS)
    code = (
        "import sys; from stablesr_cli import store; from store_helpers import unpublished; import pytest;"
        "unpublished(pytest.MonkeyPatch());"
        f"fetched = store.fetch_file(store.load_manifest().files[{SR!r}], from_dir={str(official)!r});"
        f"checks = store.verify_folder({str(folder)!r}); store.model_status();"
        "assert fetched.sha256 and all(c.ok for c in checks);"
        "heavy = [m for m in ('torch', 'numpy', 'safetensors') if m in sys.modules]; print(heavy); sys.exit(1 if heavy else 0)"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")])}
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


# ---------------------------------------------------------------------------------------------- downloads


def test_first_use_downloads_verifies_and_converts(hub, tmp_path):
    events: list[store.WeightsEvent] = []
    model = store.ensure_model("turbo", on_event=events.append, text_heads=TEXT_HEADS)

    assert model.spec.name == "turbo" and model.spec.facts.prediction == "eps"
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


def test_stamp_records_the_verified_source_and_each_files_hash(hub, tmp_path):
    store.ensure_model("turbo", text_heads=TEXT_HEADS)
    folder = tmp_path / "stablesr" / "converted" / "stablesr_turbo"
    stamp = json.loads((folder / "stamp.json").read_text())
    assert stamp["source_sha256"] == hashlib.sha256(hub.state.files[(REPO, SR)]).hexdigest()
    assert set(stamp["files"]) == {f"{p}.safetensors" for p in ("unet", "time_encoder", "vae", "text_encoder", "context_empty")}
    for name, entry in stamp["files"].items():
        assert entry == {"size": (folder / name).stat().st_size, "sha256": _sha(folder / name), "source": SR}


# ---------------------------------------------------------------------------------------------- published hashes


PUBLISHED = {  # the Hub's Git-LFS SHA-256 and byte count, from each file's page on Iceclear/StableSR
    "stablesr_000117.ckpt": (6_481_647_231, "b8862bf3fd11c5b8fe82fb8a4618a1c74a29e0301a190bd6c2e84d68986ef9cb"),
    "stablesr_768v_000139.ckpt": (6_481_647_231, "d5f83b544035b4bf24ab1d7aa86e0f83328e9ce121efb2c850f833178be3d10b"),
    "stablesr_turbo.ckpt": (6_481_632_291, "3615aa00dcab2868042dcd1bba4979edbb6051e6e49c147cda6a2d550fb62c58"),
    "vqgan_cfw_00011.ckpt": (959_719_471, "5b20ed9a80e9bdbf9e76ff1642a6a5428ca3427b08b779248a88bfbba2e74e8e"),
    "face_stablesr_000050.ckpt": (None, "ea839ea3e1eb99df7c95c7d7d17f282aa79052c74890deacb73e90c6d792b99c"),
    "face_vqgan_cfw_00011.ckpt": (None, None),
}


def test_manifest_records_the_published_hashes_and_sizes():
    files = store.parse_manifest(json.loads((ROOT / "stablesr_cli" / "data" / "manifest.json").read_text())).files
    assert {name: (f.size, f.sha256) for name, f in files.items()} == PUBLISHED


def test_a_file_that_is_not_the_published_one_is_refused(official, monkeypatch, tmp_path):
    """Our tiny stand-in under the official name: a different size than the manifest records, refused
    without hashing; with the size matching, the hash decides."""
    patch_manifest(monkeypatch)  # the real manifest, published values and all
    monkeypatch.setenv("HF_ENDPOINT", _unused_endpoint())
    with pytest.raises(ChecksumError) as err:
        store.download(["turbo"], from_dir=official, text_heads=TEXT_HEADS)
    assert "6481632291" in str(err.value) and "our manifest" in str(err.value) and "not used" in str(err.value)
    size = (official / SR).stat().st_size
    patch_manifest(monkeypatch, **{SR: {"size": size}})
    with pytest.raises(ChecksumError, match=f"3615aa00.*from our manifest for {SR}"):
        store.download(["turbo"], from_dir=official, text_heads=TEXT_HEADS)
    assert not (tmp_path / "stablesr" / "converted" / "stablesr_turbo").exists()


def test_a_file_without_a_published_hash_says_so(official, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", _unused_endpoint())
    events: list[store.WeightsEvent] = []
    store.download(["turbo"], from_dir=official, on_event=events.append, text_heads=TEXT_HEADS)
    notes = [e.message for e in events if e.kind == "note"]
    assert any(SR in n and "no published SHA-256" in n and "unverified" in n for n in notes), notes


# ---------------------------------------------------------------------------------------------- special files


def _finishes(call, seconds: float = 20.0) -> BaseException | None:
    """Run `call` in a thread; fail the test if it has not returned in time (a hang), else its exception."""
    caught: list[BaseException] = []

    def run() -> None:
        try:
            call()
        except BaseException as exc:  # returned to the test
            caught.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), "hung"
    return caught[0] if caught else None


@pytest.mark.skipif(sys.platform == "win32", reason="FIFOs and /dev/zero are POSIX")
def test_a_fifo_or_a_device_is_refused_not_read(official, tmp_path, monkeypatch):
    import os

    from stablesr_cli.hashing import sha256_file

    monkeypatch.setenv("HF_ENDPOINT", _unused_endpoint())
    fifo_dir = tmp_path / "fifo"
    fifo_dir.mkdir()
    os.mkfifo(fifo_dir / SR)
    (fifo_dir / CFW).symlink_to("/dev/zero")
    for call, shown in [
        (lambda: sha256_file(fifo_dir / SR), "named pipe"),
        (lambda: sha256_file("/dev/zero"), "character device"),
        (lambda: store.download(["turbo"], from_dir=fifo_dir, text_heads=TEXT_HEADS), "named pipe"),
        (lambda: store.ensure_model(fifo_dir / SR, text_heads=TEXT_HEADS), "named pipe"),
        (lambda: store.fetch_file(store.load_manifest().files[CFW], from_dir=fifo_dir), "character device"),
    ]:
        error = _finishes(call)
        assert isinstance(error, CheckpointError), error
        assert shown in str(error) and "not a" in str(error) and "\n" not in str(error)


# ---------------------------------------------------------------------------------------------- damaged caches


def _truncate(path: Path, keep: int = 100) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - keep])


def test_a_truncated_cached_file_is_not_ready_and_is_converted_again(hub, tmp_path):
    model = store.ensure_model("turbo", text_heads=TEXT_HEADS)
    unet = model.components["unet"]
    intact = unet.read_bytes()
    _truncate(unet)
    status = store.file_status(store.load_manifest().files[SR])
    assert status.converted is None and "unet.safetensors" in status.problem and "truncated" in status.problem
    assert not next(m for m in store.model_status() if m.spec.name == "turbo").ready
    events: list[store.WeightsEvent] = []
    before = len(hub.state.requests)
    store.ensure_model("turbo", on_event=events.append, text_heads=TEXT_HEADS)
    assert len(unet.read_bytes()) == len(intact) and len(hub.state.requests) == before  # reconverted from the download
    assert store.file_status(store.load_manifest().files[SR]).converted is not None
    assert any(e.kind == "note" and "converting" in e.message and "unet.safetensors" in e.message for e in events)


def test_verify_finds_flipped_bytes_in_converted_files_and_downloads(hub, tmp_path):
    model = store.ensure_model("turbo", text_heads=TEXT_HEADS)
    checks = store.verify_model("turbo")
    assert checks and all(c.ok for c in checks), [c.problem for c in checks if not c.ok]
    assert {c.path.name for c in checks} >= {"unet.safetensors", "cfw.safetensors", SR, CFW}
    vae = model.components["vae"]
    data = bytearray(vae.read_bytes())
    data[-1] ^= 0xFF  # same size, same header: only the hash can tell
    vae.write_bytes(bytes(data))
    assert store.file_status(store.load_manifest().files[SR]).converted is not None  # cheap checks cannot see it
    download = store.file_status(store.load_manifest().files[CFW]).downloaded
    blob = download.resolve()
    blob.chmod(0o644)
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0xFF
    blob.write_bytes(bytes(data))
    bad = {c.path.name: c.problem for c in store.verify_everything() if not c.ok}
    assert set(bad) == {"vae.safetensors", CFW}
    assert "recorded at conversion" in bad["vae.safetensors"] and "Hub" in bad[CFW]


def test_verify_a_folder_and_an_unknown_name(official, tmp_path):
    folder = tmp_path / "mine"
    store.convert_checkpoint(official / SR, folder, cfw=official / CFW, model="turbo", text_heads=TEXT_HEADS)
    assert all(c.ok and "SHA-256" in c.how for c in store.verify_folder(folder))
    (folder / "stamp.json").unlink()  # a folder from before hashes were recorded: headers only
    checks = store.verify_folder(folder)
    assert all(c.ok and "no SHA-256" in c.how for c in checks) and len(checks) == 6
    with pytest.raises(WeightsNotFoundError, match="no converted weights"):
        store.verify_folder(tmp_path)
    with pytest.raises(WeightsNotFoundError, match="stablesr weights download face"):
        store.verify_model("face")


# ---------------------------------------------------------------------------------------------- folders


def test_a_folder_missing_a_component_names_the_file(official, tmp_path):
    folder = tmp_path / "mine"
    mine = tmp_path / "my_model.ckpt"
    shutil.copy(official / SR, mine)
    store.convert_checkpoint(mine, folder, cfw=official / CFW, prediction="v", text_heads=TEXT_HEADS)
    resolved = store.ensure_model(folder)  # no model name recorded: the files' metadata describes it
    assert resolved.spec is None and resolved.metadata.get("prediction") == "v"
    (folder / "vae.safetensors").unlink()
    with pytest.raises(WeightsNotFoundError, match=r"no vae\.safetensors; convert the checkpoint into it again"):
        store.ensure_model(folder)


def test_a_folder_without_cfw_of_an_unknown_model_names_the_cfw_file(official, tmp_path):
    folder = tmp_path / "mine"
    mine = tmp_path / "my_model.ckpt"  # not an official file name: nothing says which model it is
    shutil.copy(official / SR, mine)
    store.convert_checkpoint(mine, folder, prediction="v", text_heads=TEXT_HEADS)
    with pytest.raises(WeightsNotFoundError) as err:
        store.ensure_model(folder)
    assert "cfw.safetensors" in str(err.value) and f"stablesr weights convert --cfw CFW_CKPT -o {folder}" in str(err.value)
    store.convert_checkpoint(None, folder, cfw=official / CFW)  # adds the CFW file, keeps the rest
    assert store.ensure_model(folder).components["cfw"] == folder / "cfw.safetensors"
    stamp = store.read_stamp(folder)
    assert stamp.source == "my_model.ckpt" and stamp.files["cfw.safetensors"].source == CFW and len(stamp.files) == 6


def test_a_truncated_file_in_a_folder_is_named(official, tmp_path):
    folder = tmp_path / "mine"
    store.convert_checkpoint(official / SR, folder, cfw=official / CFW, model="turbo", text_heads=TEXT_HEADS)
    _truncate(folder / "unet.safetensors")
    with pytest.raises(CheckpointError, match=r"unet\.safetensors: .*(truncated|written at conversion)"):
        store.ensure_model(folder)


# ---------------------------------------------------------------------------------------------- environment


def test_an_unreachable_server_fails_at_once_with_the_working_command(monkeypatch):
    patch_manifest(monkeypatch)  # the real sizes
    monkeypatch.setenv("HF_ENDPOINT", _unused_endpoint())
    started = time.monotonic()
    with pytest.raises(store.HubUnreachableError) as err:
        store.ensure_model("turbo")
    message = str(err.value)
    assert time.monotonic() - started < 5
    assert "`stablesr weights download turbo --from-dir DIR`" in message and "7.4 GB" in message
    assert SR in message and CFW in message and "refused" in message and "\n" not in message


@pytest.mark.parametrize("where", ["a file", "under a file", "/dev/null"])
def test_an_unusable_cache_folder_names_the_variable(hub, tmp_path, monkeypatch, where):
    blocker = tmp_path / "blocker"
    blocker.write_text("not a folder")
    value = {"a file": str(blocker), "under a file": str(blocker / "cache"), "/dev/null": "/dev/null"}[where]
    monkeypatch.setenv("STABLESR_CACHE_DIR", value)
    with pytest.raises(StableSRError) as err:
        store.ensure_model("turbo", text_heads=TEXT_HEADS)
    assert f"STABLESR_CACHE_DIR={value}" in str(err.value) and "\n" not in str(err.value)
    assert hub.state.requests == []
