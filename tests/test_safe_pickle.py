"""Safe reading of official-layout .ckpt files: tensors come back exactly, nothing else runs."""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import zipfile
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

from stablesr_cli.checkpoints.io import CheckpointFormat, read_checkpoint, read_state_dict, sniff_format
from stablesr_cli.checkpoints.safe_pickle import InertClass, load_zip_checkpoint
from stablesr_cli.errors import CheckpointError, UnsafeCheckpointError
from tiny_checkpoints import (
    CFW_CKPT,
    LIGHTNING_CALLBACK,
    SR_CKPT,
    lightning_callback_class,
    tiny_cfw_state_dict,
    tiny_sr_state_dict,
)


@pytest.fixture(scope="module")
def sr_ckpt(official_tiny) -> Path:
    return official_tiny / SR_CKPT


@pytest.fixture(scope="module")
def cfw_ckpt(official_tiny) -> Path:
    return official_tiny / CFW_CKPT


def _assert_same(expected: dict[str, torch.Tensor], actual: dict[str, torch.Tensor]) -> None:
    assert set(actual) == set(expected)
    for key, ref in expected.items():
        got = actual[key]
        assert got.dtype == ref.dtype and got.shape == ref.shape, key
        assert torch.equal(got, ref), key


def test_official_layout_reads_back_exactly(sr_ckpt):
    obj = read_checkpoint(sr_ckpt)
    assert {"state_dict", "callbacks", "optimizer_states", "epoch", "global_step", "pytorch-lightning_version"} <= set(obj)
    assert obj["epoch"] == 117 and obj["pytorch-lightning_version"] == "1.4.2"
    (callback_key,) = obj["callbacks"]
    assert isinstance(callback_key, InertClass)
    assert callback_key.qualname == f"{LIGHTNING_CALLBACK}.ModelCheckpoint"
    assert float(obj["callbacks"][callback_key]["best_model_score"]) == 0.25
    _assert_same(tiny_sr_state_dict(), read_state_dict(sr_ckpt))


def test_cfw_layout_reads_back_exactly(cfw_ckpt):
    _assert_same(tiny_cfw_state_dict(), read_state_dict(cfw_ckpt))


def test_matches_torch_load_for_plain_files(tmp_path):
    # views, non-contiguous tensors, parameters, half storages and empty tensors, as torch itself reads them
    base = torch.arange(24, dtype=torch.float32)
    obj = {
        "state_dict": OrderedDict(
            a=torch.randn(3, 4),
            half=torch.randn(5).half(),
            bf16=torch.randn(5).bfloat16(),
            ints=torch.arange(7),
            flags=torch.tensor([True, False]),
            transposed=torch.randn(4, 3).t(),
            view1=base[2:9],
            view2=base.view(4, 6)[:, 1],
            empty=torch.empty(0, 5),
            scalar=torch.tensor(3.5),
        ),
        "param": torch.nn.Parameter(torch.ones(2, 2)),
        "misc": [1, 2.5, "x", None, (True, b"bytes")],
    }
    path = tmp_path / "plain.ckpt"
    torch.save(obj, path)
    ours, ref = load_zip_checkpoint(path), torch.load(path, weights_only=True)
    for key, value in ref["state_dict"].items():
        got = ours["state_dict"][key]
        assert got.dtype == value.dtype and got.shape == value.shape and got.stride() == value.stride(), key
        assert torch.equal(got, value), key
    assert torch.equal(ours["param"], ref["param"])
    assert ours["misc"] == ref["misc"]
    # views of one storage still share it, as in the file
    assert ours["state_dict"]["view1"].untyped_storage().data_ptr() == ours["state_dict"]["view2"].untyped_storage().data_ptr()


def test_loaded_tensors_are_writable_and_the_file_is_untouched(sr_ckpt):
    before = hashlib.sha256(sr_ckpt.read_bytes()).hexdigest()
    sd = read_state_dict(sr_ckpt)
    for tensor in list(sd.values())[:20]:
        tensor.add_(1)  # copy-on-write pages: no error, no write-through
    assert hashlib.sha256(sr_ckpt.read_bytes()).hexdigest() == before


class _RunsCommand:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_checkpoint_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {"w": torch.ones(2)}, "payload": _RunsCommand(marker)}, path)
    with pytest.raises(UnsafeCheckpointError) as err:
        read_checkpoint(path)
    message = str(err.value)
    assert str(path) in message and f"{os.system.__module__}.system" in message
    assert "\n" not in message
    assert not marker.exists()
    with pytest.raises(UnsafeCheckpointError):
        read_state_dict(path)
    assert not marker.exists()


@pytest.mark.parametrize(
    "target",
    [
        (eval, ("1+1",)),
        (getattr, (OrderedDict, "fromkeys")),
        (torch.load, ("x",)),
        (torch._utils._rebuild_device_tensor_from_numpy, (None, torch.float32, "cpu", False)),
        (pickle.loads, (b"",)),
    ],
    ids=["eval", "getattr", "torch.load", "rebuild_from_numpy", "pickle.loads"],
)
def test_every_other_global_is_refused(tmp_path, target):
    class Reducer:
        def __reduce__(self):
            return target

    path = tmp_path / "other.ckpt"
    torch.save({"x": Reducer()}, path)
    with pytest.raises(UnsafeCheckpointError, match="refused to load global"):
        read_checkpoint(path)


def test_lightning_class_placeholder_cannot_be_instantiated(tmp_path):
    with lightning_callback_class() as cls:

        class Builds:
            def __reduce__(self):
                return (cls, ())

        torch.save({"callbacks": {cls: {}}, "instance": Builds()}, tmp_path / "inst.ckpt")
    with pytest.raises(UnsafeCheckpointError, match="refused to instantiate"):
        read_checkpoint(tmp_path / "inst.ckpt")


@pytest.mark.parametrize("keep", [0.5, 0.99, 0.05])
def test_truncated_checkpoint_names_the_file(sr_ckpt, tmp_path, keep):
    data = sr_ckpt.read_bytes()
    path = tmp_path / "cut.ckpt"
    path.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(CheckpointError) as err:
        read_state_dict(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_non_checkpoints_give_clear_errors(tmp_path):
    cases = {
        "empty.ckpt": b"",
        "text.ckpt": b"hello, this is not a checkpoint\n" * 4,
        "image.png": b"\x89PNG\r\n\x1a\n" + bytes(64),
    }
    for name, content in cases.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(CheckpointError, match=name.replace(".", r"\.")):
            read_checkpoint(tmp_path / name)
    with pytest.raises(CheckpointError, match="no such file"):
        read_checkpoint(tmp_path / "missing.ckpt")
    with pytest.raises(CheckpointError, match="folder"):
        read_checkpoint(tmp_path)
    legacy = tmp_path / "legacy.pth"
    torch.save({"w": torch.ones(1)}, legacy, _use_new_zipfile_serialization=False)
    with pytest.raises(CheckpointError, match="legacy"):
        read_checkpoint(legacy)
    # a zip that is not a torch archive
    with zipfile.ZipFile(tmp_path / "other.zip", "w") as zf:
        zf.writestr("readme.txt", "hi")
    with pytest.raises(CheckpointError, match="data.pkl"):
        read_checkpoint(tmp_path / "other.zip")


def test_safetensors_dispatch_is_by_content(tmp_path):
    tensors = {"a": torch.randn(3, 2), "b": torch.arange(4)}
    path = tmp_path / "weights.bin"  # the extension does not decide
    save_file(tensors, str(path))
    assert sniff_format(path) is CheckpointFormat.SAFETENSORS
    _assert_same(tensors, read_state_dict(path))
    ckpt = tmp_path / "weights.safetensors"  # nor does a misleading one
    torch.save({"state_dict": tensors}, ckpt)
    assert sniff_format(ckpt) is CheckpointFormat.TORCH_ZIP
    _assert_same(tensors, read_state_dict(ckpt))


def test_state_dict_without_wrapper_and_without_tensors(tmp_path):
    flat = {"x": torch.ones(2)}
    torch.save(flat, tmp_path / "flat.ckpt")
    _assert_same(flat, read_state_dict(tmp_path / "flat.ckpt"))
    torch.save({"epoch": 3}, tmp_path / "none.ckpt")
    with pytest.raises(CheckpointError, match="no tensors"):
        read_state_dict(tmp_path / "none.ckpt")


def _small_archive() -> tuple[dict[str, bytes], str]:
    buf = io.BytesIO()
    torch.save({"state_dict": OrderedDict(w=torch.arange(6.0).view(2, 3), b=torch.ones(3).half()), "epoch": 1}, buf)
    with zipfile.ZipFile(io.BytesIO(buf.getvalue())) as zf:
        entries = {name: zf.read(name) for name in zf.namelist()}
    pkl = next(n for n in entries if n.endswith("data.pkl"))
    return entries, pkl


_ENTRIES, _PKL = _small_archive()


@settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(edits=st.lists(st.tuples(st.integers(0, len(_ENTRIES[_PKL]) - 1), st.integers(0, 255)), min_size=1, max_size=6))
def test_corrupted_pickles_fail_cleanly(tmp_path, edits):
    """Whatever bytes the pickle holds, loading returns or raises one of our errors; nothing else escapes."""
    pickled = bytearray(_ENTRIES[_PKL])
    for position, value in edits:
        pickled[position] = value
    path = tmp_path / "fuzz.ckpt"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:
        for name, content in _ENTRIES.items():
            zf.writestr(name, bytes(pickled) if name == _PKL else content)
    try:
        load_zip_checkpoint(path)
    except (CheckpointError, UnsafeCheckpointError) as exc:
        assert str(path) in str(exc)
