"""The streamed safetensors writer and page release used by `weights convert` on multi-GB checkpoints."""

from __future__ import annotations

import struct

import torch
from safetensors.torch import load_file, save_file

from stablesr_cli.checkpoints import stream_safetensors
from stablesr_cli.checkpoints.convert import convert_cfw_checkpoint
from stablesr_cli.checkpoints.safe_pickle import load_zip_checkpoint_mapped
from tiny_checkpoints import tiny_cfw_state_dict, write_tiny_cfw_ckpt


def _mixed_tensors() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    base = torch.randn(6, 5, generator=g)
    return {
        "b.weight": torch.randn(4, 3, 3, generator=g),
        "a.bias": torch.randn(7, generator=g).to(torch.bfloat16),
        "half": torch.randn(2, 3, generator=g).to(torch.float16),
        "steps": torch.arange(5, dtype=torch.int64),
        "mask": torch.tensor([True, False, True]),
        "scalar": torch.tensor(0.5, dtype=torch.float64),
        "empty": torch.empty(0, 3),
        "transposed": base.t(),  # a view: written dense
        "slice": base[2:4],  # a view of a larger storage
    }


def _sections(path) -> tuple[bytes, bytes]:
    raw = path.read_bytes()
    size = struct.unpack("<Q", raw[:8])[0]
    return raw[8 : 8 + size], raw[8 + size :]


def test_streamed_file_matches_save_file_tensor_for_tensor(tmp_path):
    tensors = _mixed_tensors()
    meta = {"format": "x", "component": "unet"}
    ours, theirs = tmp_path / "ours.safetensors", tmp_path / "theirs.safetensors"
    stream_safetensors.write_streamed(ours, tensors, lambda t: t.contiguous(), lambda t: t.dtype, meta)
    save_file({k: v.contiguous().clone() for k, v in tensors.items()}, str(theirs), metadata=meta)
    # same tensor order and bytes as safetensors' own writer, so converted files stay as before
    assert _sections(ours)[1] == _sections(theirs)[1]
    loaded, expected = load_file(str(ours)), load_file(str(theirs))
    assert loaded.keys() == expected.keys()
    for key, value in expected.items():
        assert loaded[key].dtype == value.dtype and torch.equal(loaded[key], value), key


def test_release_is_called_while_writing_and_a_wrong_preparation_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(stream_safetensors, "RELEASE_EVERY_BYTES", 64)
    calls = []
    tensors = {f"t{i}": torch.randn(32) for i in range(4)}  # 128 bytes each
    stream_safetensors.write_streamed(
        tmp_path / "a.safetensors", tensors, lambda t: t, lambda t: t.dtype, {}, after_bytes=lambda: calls.append(1)
    )
    assert len(calls) == 5  # after every tensor, and once at the end
    try:
        stream_safetensors.write_streamed(tmp_path / "b.safetensors", tensors, lambda t: t.half(), lambda t: t.dtype, {})
    except ValueError as exc:
        assert "t0" in str(exc) and "float16" in str(exc)
    else:
        raise AssertionError("a tensor prepared in another dtype than announced was written")


def test_released_pages_read_back_the_same_values(tmp_path):
    path = write_tiny_cfw_ckpt(tmp_path / "cfw.ckpt")
    obj, release = load_zip_checkpoint_mapped(path)
    before = {k: v.clone() for k, v in obj["state_dict"].items()}
    release()
    assert all(torch.equal(obj["state_dict"][k], v) for k, v in before.items())


def test_conversion_never_reads_the_optimizer_state(tmp_path, monkeypatch):
    """Adam's state is as big as the trained weights: the converter writes tensors of the state dict
    only, each straight from its memory-mapped record, and never touches an optimizer record."""
    from stablesr_cli.checkpoints import io

    path = write_tiny_cfw_ckpt(tmp_path / "cfw.ckpt")
    loaded = {}

    def spy_load(p):
        obj, release = load_zip_checkpoint_mapped(p)
        loaded["obj"] = obj
        return obj, release

    written_ptrs = []
    real_write = stream_safetensors.write_streamed

    def spy_write(out, sources, prepare, target_dtype, metadata, **kw):
        written_ptrs.extend(t.untyped_storage().data_ptr() for t in sources.values())
        return real_write(out, sources, prepare, target_dtype, metadata, **kw)

    monkeypatch.setattr(io, "load_zip_checkpoint_mapped", spy_load)
    monkeypatch.setattr("stablesr_cli.checkpoints.convert.write_streamed", spy_write)
    convert_cfw_checkpoint(path, tmp_path / "out")
    optimizer = {
        t.untyped_storage().data_ptr()
        for state in loaded["obj"]["optimizer_states"][0]["state"].values()
        for t in state.values()
        if isinstance(t, torch.Tensor)
    }
    kept = {k: v for k, v in tiny_cfw_state_dict().items() if not k.startswith("loss.")}
    assert optimizer and len(written_ptrs) == len(kept)
    assert not optimizer & set(written_ptrs)
