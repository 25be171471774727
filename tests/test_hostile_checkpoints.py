"""Crafted checkpoints that try to leak memory or demand far more than the file holds are refused.

Each file is written by hand the way torch.save lays it out (a zip with `archive/data.pkl` and one
`archive/data/<key>` record per storage), with tensor geometry, records and opcodes chosen by the
test. Before these checks, `Tensor.set_` grew a zero-byte record with uninitialised heap memory that
a conversion then wrote out, and a stride-0 tensor turned 4 bytes into GBs.
"""

from __future__ import annotations

import io
import pickle
import zipfile
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

from cli_helpers import invoke
from stablesr_cli.checkpoints import safe_pickle
from stablesr_cli.checkpoints.convert import convert_sr_checkpoint
from stablesr_cli.checkpoints.io import is_finite, read_safetensors, read_state_dict
from stablesr_cli.checkpoints.safe_pickle import load_zip_checkpoint
from stablesr_cli.errors import CheckpointError, UnsafeCheckpointError
from tiny_checkpoints import TEXT_HEADS, tiny_sr_state_dict


class Record:
    """A storage record: pickled as torch.save's persistent id, stored as `archive/data/<key>`."""

    def __init__(self, key: str, data: bytes, numel: int | None = None) -> None:
        self.key, self.data = key, data
        self.numel = len(data) // 4 if numel is None else numel


class Tensor:
    """A float32 tensor on `record` with the given geometry, pickled as torch.save does."""

    def __init__(self, record: Record, size: tuple, stride: tuple, offset: int = 0, state=None) -> None:
        self.args = (record, offset, size, stride, False, OrderedDict())
        self.state = state  # anything but None adds a BUILD opcode on the tensor

    def __reduce__(self):
        if self.state is None:
            return (torch._utils._rebuild_tensor_v2, self.args)
        return (torch._utils._rebuild_tensor_v2, self.args, self.state)


class _Pickler(pickle.Pickler):
    def persistent_id(self, obj):
        if isinstance(obj, Record):
            return ("storage", torch.FloatStorage, obj.key, "cpu", obj.numel)
        return None


def write_archive(path: Path, obj, records: list[Record], *, compress_records: bool = False) -> Path:
    buffer = io.BytesIO()
    _Pickler(buffer, protocol=2).dump(obj)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:
        zf.writestr("archive/data.pkl", buffer.getvalue())
        zf.writestr("archive/byteorder", "little")
        for record in records:
            kind = zipfile.ZIP_DEFLATED if compress_records else zipfile.ZIP_STORED
            zf.writestr(f"archive/data/{record.key}", record.data, compress_type=kind)
        zf.writestr("archive/version", "3\n")
    return path


def refusal(path: Path, error=CheckpointError) -> str:
    with pytest.raises(error) as caught:
        load_zip_checkpoint(path)
    message = str(caught.value)
    assert str(path) in message and "\n" not in message
    return message


def test_hand_written_archives_load_like_torch_save(tmp_path):
    """The writer above is faithful: an honest tensor comes back exactly (so the refusals below are
    about the geometry, not the writer)."""
    values = torch.arange(12, dtype=torch.float32)
    record = Record("0", values.numpy().tobytes())
    path = write_archive(tmp_path / "ok.ckpt", {"state_dict": {"w": Tensor(record, (3, 4), (4, 1))}}, [record])
    loaded = load_zip_checkpoint(path)["state_dict"]["w"]
    assert torch.equal(loaded, values.view(3, 4))
    assert torch.equal(torch.load(path, weights_only=True)["state_dict"]["w"], loaded)


@pytest.mark.parametrize(
    ("record_bytes", "size", "stride", "offset"),
    [
        (0, (1024,), (1,), 0),  # the zero-byte record the issue found: set_ grew it from the heap
        (16, (5,), (1,), 0),  # one element too many
        (16, (2,), (1,), 3),  # offset pushes the end past the record
        (64, (4, 4), (4, 2), 0),  # stride reaches past the record with no more elements than it holds
    ],
    ids=["empty-record", "longer", "offset", "stride"],
)
def test_tensor_beyond_its_record_is_refused(tmp_path, record_bytes, size, stride, offset):
    record = Record("7", bytes(record_bytes))
    path = write_archive(tmp_path / "leak.ckpt", {"state_dict": {"w": Tensor(record, size, stride, offset)}}, [record])
    assert "storage record '7'" in refusal(path)


@settings(max_examples=150, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    elements=st.integers(0, 12),
    dims=st.lists(st.tuples(st.integers(0, 5), st.integers(0, 6)), max_size=3),
    offset=st.integers(0, 14),
)
def test_any_geometry_loads_inside_its_record_or_is_refused(tmp_path, elements, dims, offset):
    """Whatever the geometry: either the tensor is exactly that view of the record's bytes, with the
    record's storage not grown by a byte, or loading fails with our one-line error."""
    values = torch.arange(1.0, elements + 1.0)
    record = Record("0", values.numpy().tobytes())
    size, stride = tuple(d for d, _ in dims), tuple(s for _, s in dims)
    path = write_archive(tmp_path / "geometry.ckpt", {"w": Tensor(record, size, stride, offset)}, [record])
    try:
        loaded = load_zip_checkpoint(path)["w"]
    except CheckpointError as exc:
        assert str(path) in str(exc) and "\n" not in str(exc)
        return
    assert loaded.untyped_storage().nbytes() == 4 * elements
    assert loaded.shape == size and loaded.numel() <= max(elements, 0)
    if loaded.numel():
        assert torch.equal(loaded, torch.as_strided(values, size, stride, offset))


def test_build_on_a_tensor_is_refused(tmp_path):
    """BUILD calls Tensor.__setstate__, i.e. set_ with whatever geometry the state names."""
    empty, other = Record("0", b""), Record("1", bytes(16))
    state = (Tensor(other, (4,), (1,)), 0, (1 << 20,), (1,))
    path = write_archive(tmp_path / "build.ckpt", {"state_dict": {"w": Tensor(empty, (0,), (1,), state=state)}}, [empty, other])
    assert "refused to restore state into a tensor" in refusal(path, UnsafeCheckpointError)


class _Reduces:
    def __init__(self, *reduced) -> None:
        self.reduced = reduced

    def __reduce__(self):
        return self.reduced


def test_build_is_refused_on_everything_but_an_ordered_dict(tmp_path):
    cases = {
        "set": _Reduces(set, ([1, 2],), {"x": 1}),
        "slots": _Reduces(OrderedDict, (), ({"x": 1}, {"y": 2})),  # a (dict, slots) state, not plain attributes
        "non-string": _Reduces(OrderedDict, (), {1: 2}),
    }
    for name, obj in cases.items():
        path = write_archive(tmp_path / f"{name}.ckpt", {"x": obj}, [])
        assert "refused to restore state" in refusal(path, UnsafeCheckpointError), name
    write_archive(tmp_path / "attrs.ckpt", {"x": _Reduces(OrderedDict, (), {"_metadata": {"": {"version": 1}}})}, [])
    assert load_zip_checkpoint(tmp_path / "attrs.ckpt")["x"]._metadata == {"": {"version": 1}}


def test_module_state_dict_metadata_still_loads(tmp_path):
    """torch.save writes BUILD for a module's state dict (its `_metadata`): that one stays allowed."""
    module = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.LayerNorm(2))
    torch.save({"state_dict": module.state_dict()}, tmp_path / "module.ckpt")
    loaded = load_zip_checkpoint(tmp_path / "module.ckpt")["state_dict"]
    assert loaded._metadata == module.state_dict()._metadata
    assert all(torch.equal(loaded[k], v) for k, v in module.state_dict().items())


@pytest.mark.parametrize("numel", [1 << 28, 10**12])
def test_stride_zero_expansion_is_refused(tmp_path, numel):
    record = Record("0", bytes(4))
    path = write_archive(tmp_path / "expand.ckpt", {"state_dict": {"w": Tensor(record, (numel,), (0,))}}, [record])
    assert "repeats elements" in refusal(path)


def test_a_broadcast_size_one_dim_with_stride_zero_is_fine(tmp_path):
    record = Record("0", torch.arange(3.0).numpy().tobytes())
    path = write_archive(tmp_path / "one.ckpt", {"w": Tensor(record, (1, 3), (0, 1))}, [record])
    assert torch.equal(load_zip_checkpoint(path)["w"], torch.arange(3.0).view(1, 3))


def test_overlapping_strides_cannot_show_more_elements_than_stored(tmp_path):
    record = Record("0", bytes(4 * 256))  # 256 elements; 128 x 128 = 16384 shown with strides (1, 1)
    path = write_archive(tmp_path / "overlap.ckpt", {"w": Tensor(record, (128, 128), (1, 1))}, [record])
    assert "more than the record's 256" in refusal(path)


def test_many_views_of_one_record_are_refused(tmp_path):
    record = Record("0", bytes(1 << 20))  # 1 MiB, viewed 40 times: 40 MiB for any conversion to write
    views = {f"w{i}": Tensor(record, (record.numel,), (1,)) for i in range(40)}
    assert "viewed many times" in refusal(write_archive(tmp_path / "views.ckpt", views, [record]))
    few = {f"w{i}": Tensor(record, (record.numel,), (1,)) for i in range(2)}  # tied weights stay fine
    assert len(load_zip_checkpoint(write_archive(tmp_path / "tied.ckpt", few, [record]))) == 2


def test_compressed_records_are_refused_unread(tmp_path, monkeypatch):
    record = Record("0", bytes(1 << 22))  # 4 MiB of zeros deflate to a few KB
    path = write_archive(tmp_path / "bomb.ckpt", {"w": Tensor(record, (record.numel,), (1,))}, [record], compress_records=True)
    assert path.stat().st_size < 100_000
    opened, real_open = [], zipfile.ZipFile.open

    def recording_open(self, name, *args, **kwargs):
        opened.append(getattr(name, "filename", name))
        return real_open(self, name, *args, **kwargs)

    monkeypatch.setattr(zipfile.ZipFile, "open", recording_open)
    assert "storage record 'archive/data/0' is compressed" in refusal(path)
    assert not [name for name in opened if "/data/" in name]


def test_an_oversized_data_pkl_is_refused_before_reading(tmp_path, monkeypatch):
    torch.save({"w": torch.ones(3)}, tmp_path / "small.ckpt")
    monkeypatch.setattr(safe_pickle, "_MAX_PICKLE_BYTES", 100)
    assert "data.pkl declares" in refusal(tmp_path / "small.ckpt")


def test_converting_a_leaking_checkpoint_writes_nothing(tmp_path):
    """End to end: the crafted file never reaches the converter's output, by the API or the CLI."""
    sd = tiny_sr_state_dict()
    victim = "model.diffusion_model.out.2.bias"
    records, tensors = [], {}
    for i, (key, value) in enumerate(sd.items()):
        value = value.to(torch.float32).contiguous()
        if key == victim:  # a zero-byte record dressed as a 4-element bias: 16 bytes from the heap
            record = Record(str(i), b"")
        else:
            record = Record(str(i), value.numpy().tobytes())
        records.append(record)
        tensors[key] = Tensor(record, tuple(value.shape), tuple(value.stride()))
    path = write_archive(tmp_path / "leaky.ckpt", {"state_dict": tensors}, records)
    with pytest.raises(CheckpointError, match=rf"storage record '{records[list(sd).index(victim)].key}'"):
        convert_sr_checkpoint(path, tmp_path / "out", text_heads=TEXT_HEADS)
    assert not (tmp_path / "out").exists()
    result = invoke(["weights", "convert", str(path), "-o", str(tmp_path / "cli_out")])
    assert result.exit_code == 1
    lines = [line for line in result.stderr.splitlines() if line.startswith("stablesr: ")]
    assert len(lines) == 1 and "leaky.ckpt" in lines[0] and "storage record" in lines[0], result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "cli_out").exists()


# ----------------------------------------------------------------- non-finite weights


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_non_finite_weights_are_refused_naming_file_and_tensor(tmp_path, bad, dtype):
    tensors = {"good": torch.randn(64).to(dtype), "decoder.conv.weight": torch.randn(4, 4, 3, 3).to(dtype)}
    tensors["decoder.conv.weight"][1, 2, 0, 1] = bad
    path = tmp_path / "unet.safetensors"
    save_file(tensors, str(path))
    with pytest.raises(CheckpointError) as caught:
        read_safetensors(path)
    message = str(caught.value)
    assert str(path) in message and "'decoder.conv.weight'" in message and "NaN or infinite" in message
    assert "\n" not in message
    assert read_safetensors(path, check_finite=False)[0].keys() == tensors.keys()


def test_finite_weights_whose_sum_overflows_are_accepted():
    big = torch.full((4096,), 60000.0, dtype=torch.float16)  # the fp16 sum overflows; every value is finite
    assert not torch.isfinite(big.sum()) and is_finite(big)
    assert is_finite(torch.full((8,), 3e38)) and is_finite(torch.arange(5)) and is_finite(torch.empty(0))
    both = torch.tensor([float("inf"), float("-inf"), 1.0])  # inf - inf is NaN: still caught
    assert not is_finite(both)


def test_a_converted_model_with_a_nan_weight_is_refused_by_upscale(tmp_path, tiny_model_dir):
    import shutil

    folder = tmp_path / "model"
    shutil.copytree(tiny_model_dir, folder)
    tensors, meta = read_safetensors(folder / "vae.safetensors")
    name = sorted(k for k in tensors if k.endswith("weight"))[0]
    tensors = {k: v.clone() for k, v in tensors.items()}
    tensors[name].view(-1)[0] = float("nan")
    save_file(tensors, str(folder / "vae.safetensors"), metadata=meta)
    photo = tmp_path / "photo.png"
    from PIL import Image

    Image.new("RGB", (24, 20), (120, 60, 200)).save(photo)
    result = invoke(["upscale", str(photo), "--model", str(folder), "--steps", "2", "--tile-size", "64"])
    assert result.exit_code != 0
    lines = [line for line in result.stderr.splitlines() if line.startswith("stablesr: ")]
    assert any("vae.safetensors" in line and name in line for line in lines), result.stderr
    assert not (tmp_path / "photo_x2.png").exists()


def test_real_checkpoints_still_read(official_tiny):
    from tiny_checkpoints import SR_CKPT

    assert read_state_dict(official_tiny / SR_CKPT).keys() == tiny_sr_state_dict().keys()
