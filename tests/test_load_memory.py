"""Loading converted files tensor by tensor: what is alive at once, what is read, and the reader's checks.

The full-size numbers (peak RSS of convert-then-load) are measured by bench/convert_bench.py; these
tests pin the property behind them on tiny files: a load never holds more than one or two source
tensors besides the finished weights, reads each stored tensor straight into the target dtype, keeps
no memory map of the files, and refuses a damaged file before any network is filled.
"""

from __future__ import annotations

import json
import shutil
import struct
import weakref
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from stablesr_cli.checkpoints.assemble import build_unet
from stablesr_cli.checkpoints.io import read_safetensors
from stablesr_cli.checkpoints.load import file_weights, load_models
from stablesr_cli.checkpoints.safetensors_reader import SafetensorsReader
from stablesr_cli.errors import CheckpointError
from tiny_checkpoints import CFW_CKPT, SR_CKPT, TEXT_HEADS, UNET_HEAD_CHANNELS

NETWORK_FILES = ("unet.safetensors", "time_encoder.safetensors", "vae.safetensors", "cfw.safetensors")


class SourceTracker:
    """Wraps `SafetensorsReader.read`: counts the tensors read that are still alive (the peak of that
    count is what a load holds besides its finished weights) and records every read."""

    def __init__(self, monkeypatch) -> None:
        self.alive = self.peak = 0
        self.reads: list[tuple[str, str, torch.dtype, int]] = []
        self.mapped: list[str] = []
        read = SafetensorsReader.read

        def tracked(reader: SafetensorsReader, name: str) -> torch.Tensor:
            tensor = read(reader, name)
            self.alive += 1
            self.peak = max(self.peak, self.alive)
            weakref.finalize(tensor, self._gone)
            self.reads.append((reader.path.name, name, tensor.dtype, tensor.data_ptr()))
            maps = Path("/proc/self/maps")
            if maps.exists() and str(reader.path) in maps.read_text():
                self.mapped.append(reader.path.name)
            return tensor

        monkeypatch.setattr(SafetensorsReader, "read", tracked)

    def _gone(self) -> None:
        self.alive -= 1


def _components(folder: Path) -> dict[str, Path]:
    names = ("unet", "time_encoder", "vae", "cfw", "context_empty")
    return {name: folder / f"{name}.safetensors" for name in names}


def _load(folder: Path, dtype: torch.dtype):
    return load_models(_components(folder), device=torch.device("cpu"), dtype=dtype)[0]


@pytest.fixture(scope="module")
def fp16_model_dir(official_tiny, tmp_path_factory) -> Path:
    from stablesr_cli.cli import app

    folder = tmp_path_factory.mktemp("fp16_model") / "converted"
    result = CliRunner().invoke(app, [
        "weights", "convert", str(official_tiny / SR_CKPT), "--cfw", str(official_tiny / CFW_CKPT), "-o", str(folder),
        "--model", "turbo", "--unet-head-channels", str(UNET_HEAD_CHANNELS), "--text-heads", str(TEXT_HEADS), "--fp16",
    ])  # fmt: skip
    assert result.exit_code == 0, result.output
    return folder


# ----------------------------------------------------------------- what a load holds


def test_a_cast_load_holds_one_source_tensor_at_a_time(tiny_model_dir, monkeypatch):
    """float32 files into bfloat16 networks: each source dies with its cast, before the next read."""
    tracker = SourceTracker(monkeypatch)
    with SafetensorsReader(tiny_model_dir / "unet.safetensors") as reader:
        unet = build_unet(file_weights(reader), num_head_channels=UNET_HEAD_CHANNELS, dtype=torch.bfloat16)
    assert len(tracker.reads) == len(reader.tensors) > 100
    assert tracker.peak == 1 and tracker.alive == 0
    assert all(p.dtype == torch.bfloat16 for p in unet.parameters())


def test_the_whole_load_holds_one_source_tensor_at_a_time(tiny_model_dir, monkeypatch):
    """All four networks' files into bfloat16, the SD VAE's encoder compared with the CFW's included."""
    tracker = SourceTracker(monkeypatch)
    models = _load(tiny_model_dir, torch.bfloat16)
    assert tracker.peak == 1 and tracker.alive == 0
    assert {file for file, *_ in tracker.reads} == set(NETWORK_FILES)
    assert models.sd_vae is models.cfw_vae  # the tiny VAE is the CFW autoencoder without its fusion layers
    assert tracker.mapped == []  # plain reads: no page of a weight file stays mapped, hence resident


def test_a_same_dtype_load_keeps_the_read_tensors_themselves(tiny_model_dir, monkeypatch):
    """float32 files into float32 networks: the tensors read become the parameters, no second copy."""
    tracker = SourceTracker(monkeypatch)
    models = _load(tiny_model_dir, torch.float32)
    read = {ptr for file, _, _, ptr in tracker.reads if file in ("unet.safetensors", "time_encoder.safetensors")}
    held = [t for net in (models.unet, models.time_encoder) for t in (*net.parameters(), *net.buffers())]
    assert held and all(t.data_ptr() in read for t in held if t.numel())


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_fp16_files_load_straight_into_the_target_dtype(fp16_model_dir, monkeypatch, dtype):
    """Each stored half-precision tensor is cast once, to the target dtype; no float32 copy is made."""
    tracker = SourceTracker(monkeypatch)
    models = _load(fp16_model_dir, dtype)
    assert tracker.reads and {d for *_, d, _ in tracker.reads} == {torch.float16}
    assert tracker.peak <= 2  # in float16 a compared pair of encoder tensors is alive together
    stored = load_file(str(fp16_model_dir / "time_encoder.safetensors"))
    loaded = models.time_encoder.state_dict()
    for name in ("input_blocks.0.0.bias", "time_embed.0.bias"):  # weights may be prepacked (not in state_dict)
        assert loaded[name].dtype == dtype and torch.equal(loaded[name], stored[name].to(dtype))


def test_loading_matches_whole_state_dicts(tiny_model_dir):
    """Tensor by tensor loads exactly what building from the whole files does."""
    from stablesr_cli.checkpoints.assemble import build_autoencoder, build_time_encoder

    models = _load(tiny_model_dir, torch.float32)
    whole = {name: read_safetensors(tiny_model_dir / f"{name}.safetensors")[0] for name in ("unet", "time_encoder", "cfw")}
    expected = {
        "unet": build_unet(whole["unet"], num_head_channels=UNET_HEAD_CHANNELS),
        "time_encoder": build_time_encoder(whole["time_encoder"], num_heads=4),
        "cfw_vae": build_autoencoder(whole["cfw"]),
    }
    for name, network in expected.items():
        got = getattr(models, name).state_dict()
        assert got.keys() == network.state_dict().keys()
        assert all(torch.equal(got[k], v) for k, v in network.state_dict().items()), name


def test_prepacking_frees_each_dense_layer_before_packing_the_next(monkeypatch):
    """bf16 on the CPU: the dense weights and the packed ones of a whole network are never held at once."""
    from torch import nn

    from stablesr_cli.models.cpu_packing import PackedLinear, pack_cpu_weights, packing_available

    if not packing_available(torch.device("cpu"), torch.bfloat16):
        pytest.skip("this PyTorch build has no oneDNN packing")
    layers = [nn.Linear(8, 8, dtype=torch.bfloat16) for _ in range(6)]
    alive = [weakref.ref(layer) for layer in layers]
    network = nn.Sequential(*(nn.Sequential(layer) for layer in layers))
    del layers
    counts = []
    pack = PackedLinear.__init__

    def counting(self, linear):
        counts.append(sum(ref() is not None for ref in alive))
        pack(self, linear)

    monkeypatch.setattr(PackedLinear, "__init__", counting)
    pack_cpu_weights(network)
    assert counts == [6, 5, 4, 3, 2, 1]


# ----------------------------------------------------------------- the shared encoder


def test_a_vae_whose_encoder_differs_only_in_a_conv_weight_is_loaded_separately(tiny_model_dir, tmp_path):
    """In bf16 on the CPU the convolution weights are prepacked and leave the networks' state dicts,
    so the encoders are compared from the files, not from the loaded networks."""
    folder = tmp_path / "model"
    shutil.copytree(tiny_model_dir, folder)
    tensors, meta = read_safetensors(folder / "vae.safetensors")
    tensors = {k: v.clone() for k, v in tensors.items()}
    tensors["encoder.conv_in.weight"].view(-1)[0] += 0.5
    save_file(tensors, str(folder / "vae.safetensors"), metadata=meta)
    for dtype in (torch.float32, torch.bfloat16):
        models = _load(folder, dtype)
        assert models.sd_vae is not models.cfw_vae, dtype


def test_a_shared_vae_file_is_still_checked_whole(tiny_model_dir, tmp_path, monkeypatch):
    """When only the CFW autoencoder is loaded, every tensor of vae.safetensors is still read once."""
    tracker = SourceTracker(monkeypatch)
    _load(tiny_model_dir, torch.float32)
    with SafetensorsReader(tiny_model_dir / "vae.safetensors") as reader:
        stored = set(reader.tensors)
    assert {name for file, name, *_ in tracker.reads if file == "vae.safetensors"} == stored


# ----------------------------------------------------------------- damaged files


def test_a_damaged_file_fails_before_any_tensor_is_read(tiny_model_dir, tmp_path, monkeypatch):
    folder = tmp_path / "model"
    shutil.copytree(tiny_model_dir, folder)
    cfw = folder / "cfw.safetensors"
    cfw.write_bytes(cfw.read_bytes()[:-1])
    tracker = SourceTracker(monkeypatch)
    with pytest.raises(CheckpointError) as caught:
        _load(folder, torch.float32)
    message = str(caught.value)
    assert message.startswith(f"{cfw}: ") and "truncated" in message and "\n" not in message
    assert tracker.reads == []


def test_a_non_finite_tensor_is_named_once_with_its_file(tiny_model_dir, tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(tiny_model_dir, folder)
    tensors, meta = read_safetensors(folder / "unet.safetensors")
    tensors = {k: v.clone() for k, v in tensors.items()}
    tensors["out.2.weight"].view(-1)[3] = float("inf")
    save_file(tensors, str(folder / "unet.safetensors"), metadata=meta)
    with pytest.raises(CheckpointError) as caught:
        _load(folder, torch.bfloat16)
    message = str(caught.value)
    assert message.count(str(folder / "unet.safetensors")) == 1 and "'out.2.weight'" in message and "NaN or infinite" in message


def _raw_file(path: Path, header: dict, data: bytes) -> Path:
    encoded = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(encoded)) + encoded + data)
    return path


GOOD_ENTRY = {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]}


@pytest.mark.parametrize(
    ("header", "data", "problem"),
    [
        ({"a": GOOD_ENTRY}, bytes(15), "the file at byte"),
        ({"a": GOOD_ENTRY}, bytes(17), "the file at byte"),
        ({"a": {**GOOD_ENTRY, "data_offsets": [0, 12]}}, bytes(12), "needs 16"),
        ({"a": GOOD_ENTRY, "b": GOOD_ENTRY}, bytes(16), "does not start where"),
        ({"a": GOOD_ENTRY, "b": {**GOOD_ENTRY, "data_offsets": [20, 36]}}, bytes(36), "does not start where"),
        ({"a": {**GOOD_ENTRY, "dtype": "F8_E4M3"}}, bytes(16), "unsupported dtype"),
        ({"a": {**GOOD_ENTRY, "shape": [2, -2]}}, bytes(16), "invalid shape"),
        ({"a": {**GOOD_ENTRY, "data_offsets": [16, 0]}}, bytes(16), "invalid data offsets"),
        ({"a": "F32"}, bytes(16), "not an object"),
        ({"__metadata__": {"model": 3}, "a": GOOD_ENTRY}, bytes(16), "map of strings"),
        ([1, 2], b"", "not a JSON object"),
    ],
)
def test_the_reader_refuses_inconsistent_headers(tmp_path, header, data, problem):
    path = _raw_file(tmp_path / "unet.safetensors", header, data)
    with pytest.raises(CheckpointError) as caught:
        SafetensorsReader(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: unreadable .safetensors file") and problem in message and "\n" not in message


def test_the_reader_refuses_duplicate_names_and_bad_lengths(tmp_path):
    path = tmp_path / "dup.safetensors"
    encoded = b'{"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}, "a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}'
    path.write_bytes(struct.pack("<Q", len(encoded)) + encoded + bytes(4))
    with pytest.raises(CheckpointError, match="duplicate name 'a'"):
        SafetensorsReader(path)
    path.write_bytes(struct.pack("<Q", 1 << 40) + b"{}")
    with pytest.raises(CheckpointError, match="exceeds the file"):
        SafetensorsReader(path)
    path.write_bytes(b"\x01")
    with pytest.raises(CheckpointError, match="8-byte header length"):
        SafetensorsReader(path)
    with pytest.raises(CheckpointError, match="no such file"):
        SafetensorsReader(tmp_path / "absent.safetensors")


def test_the_reader_reads_what_safetensors_writes(tmp_path):
    tensors = {
        "f32": torch.randn(3, 5), "f16": torch.randn(7).half(), "bf16": torch.randn(2, 3).bfloat16(),
        "f64": torch.randn(2, dtype=torch.float64), "i64": torch.arange(5), "i32": torch.arange(3, dtype=torch.int32),
        "u8": torch.arange(9, dtype=torch.uint8), "bool": torch.tensor([True, False, True]),
        "scalar": torch.tensor(2.5), "empty": torch.empty(0, 4),
    }  # fmt: skip
    path = tmp_path / "all.safetensors"
    save_file(tensors, str(path), metadata={"model": "turbo"})
    with SafetensorsReader(path) as reader:
        assert reader.metadata == {"model": "turbo"} and set(reader.tensors) == set(tensors)
        starts = [stored.start for stored in reader.tensors.values()]
        assert starts == sorted(starts)  # file order: a load reads front to back
        for name, expected in tensors.items():
            got = reader.read(name)
            assert got.dtype == expected.dtype and got.shape == expected.shape and torch.equal(got, expected), name
            assert reader.tensors[name].stand_in().device.type == "meta"


# ----------------------------------------------------------------- the bench's reference size


def test_the_convert_bench_compares_with_what_the_full_size_networks_hold():
    """bench/convert_bench.py prints the first use's weights for comparison with its peak: the
    parameters of the full-size UNet, time-aware encoder and CFW autoencoder (built on the meta device)."""
    import importlib.util

    from stablesr_cli.checkpoints.detect import infer_time_encoder_config, infer_unet_config
    from stablesr_cli.checkpoints.detect_autoencoder import infer_autoencoder_config
    from stablesr_cli.checkpoints.keymap import COMPONENT_PREFIXES, strip_prefix
    from stablesr_cli.models.autoencoder import Autoencoder
    from stablesr_cli.models.time_encoder import TimeAwareEncoder
    from stablesr_cli.models.unet import UNet

    root = Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location("convert_bench", root / "bench" / "convert_bench.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    golden = Path(__file__).parent / "fixtures" / "golden"

    def manifest(name: str) -> dict[str, torch.Tensor]:
        keys = json.loads((golden / name).read_text())["keys"]
        return {k: torch.empty(shape, device="meta") for k, (shape, _) in keys.items()}

    sr, cfw = manifest(bench.SR_KEYS), manifest(bench.CFW_KEYS)
    with torch.device("meta"):
        networks = [
            UNet(infer_unet_config(strip_prefix(sr, COMPONENT_PREFIXES["unet"]))),
            TimeAwareEncoder(infer_time_encoder_config(strip_prefix(sr, COMPONENT_PREFIXES["time_encoder"]))),
            Autoencoder(infer_autoencoder_config(cfw)),
        ]
    values = sum(t.numel() for net in networks for t in net.state_dict().values())
    assert bench.loaded_weights_mb(golden, "fp32") == round(values * 4 / 2**20)
    assert bench.loaded_weights_mb(golden, "bf16") == round(values * 2 / 2**20)
