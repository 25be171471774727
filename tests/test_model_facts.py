"""Model facts have one home: the manifest or a converted folder's metadata, validated at load, and
options meaning "the model's default" are filled in by one function for the CLI and the API alike."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from cli_helpers import FAST, invoke
from stablesr_cli.api import Upscaler
from stablesr_cli.errors import CheckpointError, WeightsNotFoundError
from stablesr_cli.model_facts import ModelFacts, facts_from_metadata, resolve_options
from stablesr_cli.options import UpscaleOptions
from stablesr_cli.store import load_manifest
from stablesr_cli.store.record import STAMP_NAME
from tiny_models import tiny_upscaler


def test_face_defaults_come_from_the_manifest():
    face = load_manifest().model("face").facts
    assert (face.default_w, face.default_steps, face.prediction) == (0.0, 200, "v")
    assert resolve_options(None, face).w == 0.0
    assert resolve_options(UpscaleOptions(w=0.7), face).w == 0.7
    assert resolve_options(UpscaleOptions(steps=3), face).steps == 3
    turbo = load_manifest().model("turbo").facts
    assert (resolve_options(None, turbo).w, resolve_options(None, turbo).steps) == (0.5, 4)


def test_ddim_defaults_to_fifty_steps_unless_the_model_needs_fewer():
    assert ModelFacts("m", default_steps=200).default_steps_for("ddim") == 50
    assert ModelFacts("m", default_steps=4).default_steps_for("ddim") == 4
    assert ModelFacts("m", default_steps=200).default_steps_for("ddpm") == 200


def test_python_api_uses_the_models_own_w():
    """A model whose default w is 0 (face) upscales with 0 through the Python API, as on the CLI."""
    base = tiny_upscaler()
    face_like = Upscaler(base.models, ModelFacts("face-like", default_w=0.0, default_steps=1))
    x = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    fast = UpscaleOptions(scale=2, tile_size=64, tile_overlap=0)
    by_default = face_like.upscale_tensor(x, fast)
    assert torch.equal(by_default, face_like.upscale_tensor(x, UpscaleOptions(scale=2, tile_size=64, tile_overlap=0, w=0.0)))
    assert not torch.equal(by_default, face_like.upscale_tensor(x, UpscaleOptions(scale=2, tile_size=64, tile_overlap=0, w=1.0)))


def test_pipeline_refuses_unresolved_options():
    x = torch.rand(1, 3, 16, 16)
    from stablesr_cli.pipeline.noise import SeededNoise
    from stablesr_cli.pipeline.upscale import upscale_tensor

    with pytest.raises(ValueError, match="resolve_options"):
        upscale_tensor(x, tiny_upscaler().models, UpscaleOptions(scale=2), SeededNoise(0))


def test_metadata_overrides_the_named_models_facts():
    base = load_manifest().model("v2-768v").facts
    facts = facts_from_metadata("u.safetensors", {"model": "v2-768v", "num_head_channels": "32"}, {"num_heads": "8"}, base=base)
    assert (facts.native_tile, facts.unet_head_channels, facts.time_encoder_heads, facts.prediction) == (96, 32, 8, "v")


@pytest.mark.parametrize(
    "key, value, words",
    [
        ("num_head_channels", "abc", "expected a whole number"),
        ("num_head_channels", "0", "positive whole number"),
        ("num_head_channels", "-1", "positive whole number"),
        ("prediction", "x", "expected 'eps' or 'v'"),
        ("native_tile", "0", "multiple of 8"),
        ("native_tile", "100000", "multiple of 8"),
        ("default_steps", "0", "1 to 1000"),
        ("default_w", "nan", "0 to 1"),
    ],
)
def test_bad_metadata_values_are_one_line_errors(key, value, words):
    with pytest.raises(CheckpointError) as caught:
        facts_from_metadata("/m/unet.safetensors", {key: value})
    message = str(caught.value)
    assert message.startswith("/m/unet.safetensors: ") and key in message and words in message and "\n" not in message


# ------------------------------------------------------------- converted folders through the CLI


@pytest.fixture()
def model_copy(tiny_model_dir, tmp_path) -> Path:
    folder = tmp_path / "model"
    shutil.copytree(tiny_model_dir, folder)
    # a folder converted elsewhere and copied by hand: no record of sizes and hashes, so what is
    # checked here is the metadata and tensors themselves (a recorded size would flag any rewrite)
    (folder / STAMP_NAME).unlink(missing_ok=True)
    return folder


def _rewrite(path: Path, *, metadata: dict[str, str] | None = None, tensors: dict | None = None) -> None:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        meta = dict(handle.metadata() or {})
    meta.update(metadata or {})
    save_file(tensors if tensors is not None else load_file(str(path)), str(path), metadata=meta)


def _upscale(model: Path, tmp_path: Path):
    from PIL import Image

    image = tmp_path / "in.png"
    Image.new("RGB", (16, 16), (90, 120, 30)).save(image)
    return invoke(["upscale", str(image), "-o", str(tmp_path / "out.png"), "--model", str(model), *FAST])


@pytest.mark.parametrize(
    "component, key, value",
    [
        ("unet", "num_head_channels", "abc"),
        ("unet", "num_head_channels", "0"),
        ("unet", "num_head_channels", "-1"),
        ("unet", "num_head_channels", "3"),
        ("unet", "prediction", "x"),
        ("unet", "native_tile", "0"),
        ("unet", "native_tile", "100000"),
        ("time_encoder", "num_heads", "0"),
        ("time_encoder", "num_heads", "7"),
    ],
)
def test_upscale_with_bad_metadata_fails_in_one_line(model_copy, tmp_path, component, key, value):
    _rewrite(model_copy / f"{component}.safetensors", metadata={key: value})
    result = _upscale(model_copy, tmp_path)
    assert result.exit_code == 1, result.output
    lines = [line for line in result.stderr.splitlines() if line.startswith("stablesr: ")]
    assert lines and "Traceback" not in result.stderr
    assert any(f"{component}.safetensors" in line for line in lines), result.stderr
    assert not (tmp_path / "out.png").exists()


def test_context_of_the_wrong_shape_is_refused(model_copy, tmp_path):
    _rewrite(model_copy / "context_empty.safetensors", tensors={"context": torch.zeros(1, 77, 5)})
    result = _upscale(model_copy, tmp_path)
    assert result.exit_code == 1
    assert "context_empty.safetensors" in result.stderr and "expected (1, 77, 16)" in result.stderr


@pytest.mark.parametrize("missing", ["vae.safetensors", "cfw.safetensors", "time_encoder.safetensors"])
def test_a_missing_component_is_named(model_copy, tmp_path, missing, monkeypatch):
    monkeypatch.setenv("STABLESR_OFFLINE", "1")
    (model_copy / missing).unlink()
    result = _upscale(model_copy, tmp_path)
    assert result.exit_code == 1
    assert "do not say which" not in result.stderr and "Traceback" not in result.stderr
    if missing == "cfw.safetensors":  # the folder names turbo: its CFW partner is fetched, here offline
        assert "vqgan_cfw_00011.ckpt" in result.stderr, result.stderr
    else:
        assert f"no {missing}" in result.stderr, result.stderr


def test_a_folder_without_a_model_name_loads_with_metadata_facts(model_copy):
    _rewrite(model_copy / "unet.safetensors", metadata={"model": "", "source": "my_finetune.ckpt", "default_w": "0.25", "default_steps": "3"})
    upscaler = Upscaler.from_pretrained(model_copy, device="cpu", dtype="fp32", offline=True)
    assert (upscaler.facts.name, upscaler.facts.default_w, upscaler.facts.default_steps) == ("model", 0.25, 3)
    with pytest.raises(WeightsNotFoundError):
        (model_copy / "cfw.safetensors").unlink()
        Upscaler.from_pretrained(model_copy, device="cpu", dtype="fp32", offline=True)
