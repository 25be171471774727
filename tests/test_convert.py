"""Conversion of official-layout checkpoints to per-component safetensors."""

from __future__ import annotations

import hashlib
import json
import os
import stat
from pathlib import Path

import pytest
import torch

from stablesr_cli.checkpoints.assemble import empty_prompt_context
from stablesr_cli.checkpoints.convert import (
    CONTEXT_TENSOR,
    FORMAT,
    convert_cfw_checkpoint,
    convert_sr_checkpoint,
    find_converted,
)
from stablesr_cli.checkpoints.io import read_safetensors, read_state_dict
from stablesr_cli.checkpoints.keymap import COMPONENT_PREFIXES, strip_prefix
from stablesr_cli.errors import CheckpointError
from stablesr_cli.store import convert_checkpoint
from tiny_checkpoints import CFW_CKPT, SR_CKPT, TEXT_HEADS, tiny_cfw_state_dict, tiny_sr_state_dict


@pytest.fixture(scope="module")
def ckpts(official_tiny) -> tuple[Path, Path]:
    return official_tiny / SR_CKPT, official_tiny / CFW_CKPT


@pytest.fixture(scope="module")
def converted(ckpts, tmp_path_factory) -> dict[str, Path]:
    sr, cfw = ckpts
    out = tmp_path_factory.mktemp("converted")
    return convert_checkpoint(sr, out, cfw=cfw, model="v2-512", prediction="eps", text_heads=TEXT_HEADS)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_writes_one_file_per_component_with_provenance(ckpts, converted):
    sr, cfw = ckpts
    assert set(converted) == {"unet", "time_encoder", "vae", "text_encoder", "context_empty", "cfw"}
    assert find_converted(converted["unet"].parent) == converted
    for component, path in converted.items():
        _, meta = read_safetensors(path)
        source = cfw if component == "cfw" else sr
        assert meta["format"] == FORMAT
        assert meta["component"] == component
        assert meta["source"] == source.name
        assert meta["source_sha256"] == _sha(source)
        assert meta["model"] == "v2-512"
        if component != "cfw":
            assert meta["prediction"] == "eps"


def test_converted_tensors_equal_the_checkpoint(converted):
    original = tiny_sr_state_dict()
    for component in ("unet", "time_encoder", "vae", "text_encoder"):
        expected = strip_prefix(
            {k: v for k, v in original.items() if k.startswith(COMPONENT_PREFIXES[component])},
            COMPONENT_PREFIXES[component],
        )
        got = read_state_dict(converted[component])
        assert set(got) == set(expected), component
        for key, value in expected.items():
            assert got[key].dtype == value.dtype and torch.equal(got[key], value), f"{component}.{key}"
    cfw_expected = {k: v for k, v in tiny_cfw_state_dict().items() if not k.startswith("loss.")}
    got = read_state_dict(converted["cfw"])
    assert set(got) == set(cfw_expected)
    assert all(torch.equal(got[k], v) for k, v in cfw_expected.items())


def test_training_leftovers_are_dropped(converted):
    every_key = {k for path in converted.values() for k in read_state_dict(path)}
    assert not any(k.startswith(("loss.", "model_ema.")) for k in every_key)
    assert not {"betas", "alphas_cumprod", "posterior_mean_coef2"} & every_key


def test_empty_prompt_context_is_precomputed(converted):
    tensors, meta = read_safetensors(converted["context_empty"])
    context = tensors[CONTEXT_TENSOR]
    assert context.shape == (1, 77, 16) and context.dtype == torch.float32
    text = read_state_dict(converted["text_encoder"])
    assert torch.equal(context, empty_prompt_context(text, heads=TEXT_HEADS))
    assert meta["component"] == "context_empty"


def test_fp16_halves_floats_but_keeps_the_context_in_float32(ckpts, tmp_path):
    sr, cfw = ckpts
    out = convert_checkpoint(sr, tmp_path, cfw=cfw, fp16=True, text_heads=TEXT_HEADS)
    unet = read_state_dict(out["unet"])
    reference = strip_prefix(tiny_sr_state_dict(), COMPONENT_PREFIXES["unet"])
    assert all(t.dtype == torch.float16 for t in unet.values())
    assert all(torch.equal(unet[k], v.half()) for k, v in reference.items() if k in unet)
    assert read_safetensors(out["context_empty"])[0][CONTEXT_TENSOR].dtype == torch.float32
    assert read_safetensors(out["unet"])[1]["dtype"] == "float16"
    assert "model" not in read_safetensors(out["unet"])[1]  # unknown unless the caller says


def test_ema_copy_is_kept_only_on_request(tmp_path):
    sd = tiny_sr_state_dict()
    unet_keys = [k for k in sd if k.startswith("model.diffusion_model.")][:25]
    ema = {"model_ema." + k[len("model."):].replace(".", ""): sd[k] + 1 for k in unet_keys}
    ema["model_ema.decay"] = torch.tensor(0.9999)
    ema["model_ema.num_updates"] = torch.tensor(1000, dtype=torch.int32)
    path = tmp_path / "with_ema.ckpt"
    torch.save({"state_dict": {**sd, **ema}}, path)

    plain = convert_sr_checkpoint(path, tmp_path / "plain", text_heads=TEXT_HEADS)
    assert "unet_ema" not in plain and not (tmp_path / "plain" / "unet_ema.safetensors").exists()

    kept = convert_sr_checkpoint(path, tmp_path / "ema", keep_ema=True, text_heads=TEXT_HEADS)
    got = read_state_dict(kept["unet_ema"])
    assert set(got) == {k[len("model.diffusion_model."):] for k in unet_keys}
    for k in unet_keys:
        assert torch.equal(got[k[len("model.diffusion_model."):]], sd[k] + 1)


def test_swapped_or_foreign_checkpoints_are_refused(ckpts, tmp_path):
    sr, cfw = ckpts
    with pytest.raises(CheckpointError, match="--cfw"):
        convert_sr_checkpoint(cfw, tmp_path / "a", text_heads=TEXT_HEADS)
    with pytest.raises(CheckpointError, match="diffusion model checkpoint"):
        convert_cfw_checkpoint(sr, tmp_path / "b")
    odd = tmp_path / "odd.ckpt"
    torch.save({"state_dict": {**tiny_sr_state_dict(), "mystery.weight": torch.ones(1)}}, odd)
    with pytest.raises(CheckpointError, match="mystery.weight"):
        convert_sr_checkpoint(odd, tmp_path / "c", text_heads=TEXT_HEADS)
    no_text = tmp_path / "no_text.ckpt"
    torch.save({"state_dict": {k: v for k, v in tiny_sr_state_dict().items() if not k.startswith("cond_stage_model.")}}, no_text)
    with pytest.raises(CheckpointError, match="text_encoder"):
        convert_sr_checkpoint(no_text, tmp_path / "d")
    assert not (tmp_path / "a").exists() and not (tmp_path / "c").exists()


def test_no_temporary_files_are_left_and_modes_follow_the_umask(converted, tmp_path):
    folder = converted["unet"].parent
    assert not [p for p in folder.iterdir() if p.name.startswith(".") or p.suffix == ".tmp"]
    plain = tmp_path / "plain_file"
    plain.write_bytes(b"")  # what any other program would create here
    for path in converted.values():
        assert stat.S_IMODE(path.stat().st_mode) == stat.S_IMODE(plain.stat().st_mode), path


def test_the_folder_records_each_files_size_and_sha256(ckpts, converted):
    sr, cfw = ckpts
    folder = converted["unet"].parent
    stamp = json.loads((folder / "stamp.json").read_text())
    assert stamp["source"] == sr.name and stamp["source_sha256"] == _sha(sr)
    assert set(stamp["files"]) == {p.name for p in converted.values()}
    for component, path in converted.items():
        entry = stamp["files"][path.name]
        assert entry == {"size": path.stat().st_size, "sha256": _sha(path), "source": (cfw if component == "cfw" else sr).name}


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="FIFOs are POSIX")
def test_a_fifo_is_refused_before_it_is_opened(tmp_path):
    fifo = tmp_path / "pipe.ckpt"
    os.mkfifo(fifo)
    # with the hash given, nothing hashes the file first: the converter itself must refuse it
    with pytest.raises(CheckpointError, match="named pipe"):
        convert_sr_checkpoint(fifo, tmp_path / "a", source_sha256="0" * 64)
    with pytest.raises(CheckpointError, match="named pipe"):
        convert_cfw_checkpoint(fifo, tmp_path / "b", source_sha256="0" * 64)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
