"""The accelerator paths, proven on a CPU: lean VAE tiling with storage on another device than the
compute, no host round trips in the sampling loop, MPS's missing float64, and the out-of-memory retry."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch.utils._pytree import tree_flatten, tree_map

import stablesr_cli.pipeline.upscale as upscale_module
from stablesr_cli.models.autoencoder import DiagonalGaussian
from stablesr_cli.options import UpscaleOptions, VaeTiling
from stablesr_cli.pipeline.noise import SeededNoise
from stablesr_cli.pipeline.schedule import respaced_schedule
from tiny_models import tiny_models, tiny_upscaler


class Elsewhere(torch.Tensor):
    """A CPU tensor standing in for one held on another device (CPU memory while computing on CUDA):
    an op that mixes it with an ordinary tensor fails, as it does between CUDA and CPU tensors;
    `.to(device)` brings it to the compute device (an ordinary tensor)."""

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.Tensor.to and _names_a_device(args[1:], kwargs):
            with torch._C.DisableTorchFunctionSubclass():
                return func(*args, **kwargs).as_subclass(torch.Tensor)
        tensors = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
        if any(isinstance(t, Elsewhere) for t in tensors) and any(
            not isinstance(t, Elsewhere) and t.ndim > 0 for t in tensors
        ):
            raise RuntimeError(f"{getattr(func, '__name__', func)} mixes tensors held on different devices")
        with torch._C.DisableTorchFunctionSubclass():
            out = func(*args, **kwargs)
        return tree_map(lambda t: t.as_subclass(Elsewhere) if type(t) is torch.Tensor else t, out)


def _names_a_device(args, kwargs) -> bool:
    return "device" in kwargs or any(isinstance(a, (torch.device, str)) for a in args)


def _elsewhere(value):
    def move(item):
        if isinstance(item, DiagonalGaussian):
            return DiagonalGaussian(move(item.mean), move(item.logvar))
        return item.as_subclass(Elsewhere) if isinstance(item, torch.Tensor) else item

    return tree_map(move, value, is_leaf=lambda item: isinstance(item, DiagonalGaussian))


LEAN = UpscaleOptions(
    scale=2, w=0.5, steps=2, tile_size=64, tile_overlap=0,
    vae_tiling=VaeTiling.LEAN, vae_tile_size=64, vae_tile_stride=64,
)  # fmt: skip


def test_elsewhere_catches_mixing():
    with pytest.raises(RuntimeError, match="different devices"):
        _ = torch.ones(2).as_subclass(Elsewhere) + torch.ones(2)
    assert type(torch.ones(2).as_subclass(Elsewhere).to("cpu") + torch.ones(2)) is torch.Tensor


def test_lean_tiling_with_storage_on_another_device(monkeypatch):
    """What the lean VAE leaves in storage (posterior, features, decoded image) is brought to the
    compute device before it meets compute tensors; the result equals the single-device run."""
    models = tiny_models()
    x = torch.rand(1, 3, 96, 128, generator=torch.Generator().manual_seed(3)) * 2 - 1
    schedule = respaced_schedule(2)
    with torch.no_grad():
        expected = upscale_module.restore(x, models, LEAN, schedule, SeededNoise(5))

    real_encode, real_decode = upscale_module._encode, upscale_module._decode
    monkeypatch.setattr(upscale_module, "_encode", lambda *a: _elsewhere(real_encode(*a)))
    monkeypatch.setattr(
        upscale_module, "_decode",
        lambda vae, z, features, opts, storage: _elsewhere(
            real_decode(vae, z, [f.as_subclass(torch.Tensor) for f in features], opts, storage)
        ),
    )  # fmt: skip
    with torch.no_grad():
        got = upscale_module.restore(x, models, LEAN, schedule, SeededNoise(5))
    assert type(got) is torch.Tensor
    assert torch.equal(got, expected)


def test_lean_storage_is_host_memory_on_accelerators_only():
    assert upscale_module.lean_storage_device(LEAN, torch.device("cuda", 0)) == torch.device("cpu")
    assert upscale_module.lean_storage_device(LEAN, torch.device("cpu")) is None
    whole = dataclasses.replace(LEAN, vae_tiling=VaeTiling.NONE)
    assert upscale_module.lean_storage_device(whole, torch.device("cuda", 0)) is None


def test_schedule_tables_move_once_and_timesteps_stay_on_the_host():
    schedule = respaced_schedule(4).to("meta")
    assert schedule.timesteps.device.type == "cpu"
    assert schedule.posterior_mean_coef1.device.type == "meta"


def test_sampling_reads_nothing_back_from_the_device(monkeypatch):
    """No `.item()`, `bool(tensor)` or `.tolist()` on a device tensor inside the loop: each one
    makes the host wait for the accelerator. Counted on CPU through the same calls."""
    from stablesr_cli.pipeline import sampler

    upscaler = tiny_upscaler()
    options = upscaler.resolve_options(UpscaleOptions(scale=2, tile_size=64, tile_overlap=0, steps=3))
    reads: list[str] = []
    real_sample = sampler.sample

    def counting_sample(*args, **kwargs):
        originals = {name: getattr(torch.Tensor, name) for name in ("item", "tolist", "__bool__")}

        def spy(name):
            def read(self, *a, **k):
                if self.device.type == "cpu" and self.numel() > 64:  # big host tensors are not device reads
                    return originals[name](self, *a, **k)
                reads.append(name)
                return originals[name](self, *a, **k)
            return read

        for name in originals:
            monkeypatch.setattr(torch.Tensor, name, spy(name))
        try:
            return real_sample(*args, **kwargs)
        finally:
            for name, original in originals.items():
                monkeypatch.setattr(torch.Tensor, name, original)

    monkeypatch.setattr(upscale_module, "sample", counting_sample)
    upscaler.upscale_tensor(torch.rand(1, 3, 16, 16), options)
    # the timesteps are read once, before the loop; nothing per step
    assert reads.count("tolist") <= 1 and "item" not in reads and "__bool__" not in reads, reads


def test_without_float64_the_blend_and_vae_statistics_use_float32(monkeypatch):
    """Apple's MPS has no float64: forced here on the CPU, every float64 use switches to float32 and
    the image moves by float32 rounding only."""
    from stablesr_cli.pipeline import tiling, vae_tiling

    upscaler = tiny_upscaler()
    options = upscaler.resolve_options(LEAN)
    x = torch.rand(1, 3, 40, 48, generator=torch.Generator().manual_seed(2))
    exact = upscaler.upscale_tensor(x, options)

    monkeypatch.setattr(tiling, "supports_float64", lambda device: False)
    monkeypatch.setattr(vae_tiling, "supports_float64", lambda device: False)
    tiling.device_weights.cache_clear()
    assert tiling.device_weights(8, 8, torch.device("cpu")).dtype == torch.float32
    real_to = torch.Tensor.to

    def refuse_float64(self, *args, **kwargs):
        if torch.float64 in args or kwargs.get("dtype") is torch.float64:
            raise AssertionError("float64 used on a device without it")
        return real_to(self, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "to", refuse_float64)
    without = upscaler.upscale_tensor(x, options)
    monkeypatch.undo()
    tiling.device_weights.cache_clear()
    assert (without - exact).abs().max() < 1e-4


def test_mps_is_a_known_device_word():
    from stablesr_cli.errors import OptionError
    from stablesr_cli.runtime import resolve_device

    if torch.backends.mps.is_available():
        assert resolve_device("mps").type == "mps"
    else:
        with pytest.raises(OptionError, match="MPS"):
            resolve_device("mps")


def test_out_of_memory_retries_with_cheaper_settings(monkeypatch):
    """An accelerator that runs out of memory retries the image with one tile per call first (the
    same result), then smaller tiles, then lean VAE tiling; each retry is reported."""
    from stablesr_cli.api import Upscaler

    base = tiny_upscaler()
    upscaler = Upscaler(base.models, base.facts)
    monkeypatch.setattr(Upscaler, "device", property(lambda self: torch.device("cuda", 0)))
    monkeypatch.setattr("stablesr_cli.pipeline.memory.release_cached_memory", lambda device: None)
    real = upscale_module.upscale_tensor
    seen: list[int | None] = []

    def fails_with_big_batches(img, models, opts, noise, progress=None):
        seen.append(opts.tile_batch)
        if opts.tile_batch != 1:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(img, models, opts, noise, progress)

    monkeypatch.setattr(upscale_module, "upscale_tensor", fails_with_big_batches)
    events = []
    x = torch.rand(1, 3, 24, 40, generator=torch.Generator().manual_seed(4))
    options = UpscaleOptions(scale=2, tile_size=64, tile_overlap=32, tile_batch=4)
    got = upscaler.upscale_tensor(x, options, progress=events.append)
    assert seen == [4, 1]
    assert [e.message for e in events if e.stage == "retry"] == ["out of memory; retrying with one diffusion tile per model call"]
    assert torch.equal(got, real(x, base.models, base.resolve_options(dataclasses.replace(options, tile_batch=1)), SeededNoise(42)))


def test_retry_settings_go_from_cheapest_to_lean_tiling_then_stop():
    from stablesr_cli.pipeline.memory import retry_settings

    steps = list(retry_settings(UpscaleOptions(tile_batch=None, w=0.5, steps=4), native_tile_px=512))
    assert [change for _, change in steps] == [
        "one diffusion tile per model call", "diffusion tiles of 384 px", "diffusion tiles of 256 px",
        "lean VAE tiling with 512 px tiles",
    ]
    assert steps[-1][0].vae_tiling is VaeTiling.LEAN and steps[-1][0].tile_size == 256


def test_other_errors_are_not_retried(monkeypatch):
    from stablesr_cli.api import Upscaler

    base = tiny_upscaler()
    monkeypatch.setattr(Upscaler, "device", property(lambda self: torch.device("cuda", 0)))

    def broken(*args, **kwargs):
        raise RuntimeError("a real bug")

    monkeypatch.setattr(upscale_module, "upscale_tensor", broken)
    with pytest.raises(RuntimeError, match="a real bug"):
        Upscaler(base.models, base.facts).upscale_tensor(torch.rand(1, 3, 8, 8))


def test_auto_tile_batch_is_one_on_a_cpu_and_gives_the_same_image():
    upscaler = tiny_upscaler()
    x = torch.rand(1, 3, 40, 56, generator=torch.Generator().manual_seed(6))
    fixed = upscaler.upscale_tensor(x, UpscaleOptions(scale=2, tile_size=64, tile_overlap=32, tile_batch=1))
    auto = upscaler.upscale_tensor(x, UpscaleOptions(scale=2, tile_size=64, tile_overlap=32, tile_batch=None))
    assert torch.equal(fixed, auto)


def test_tile_batch_auto_from_the_command_line(tiny_model_dir, tmp_path):
    from PIL import Image

    from cli_helpers import FAST, invoke

    model = tiny_model_dir
    Image.new("RGB", (20, 12), (10, 200, 90)).save(tmp_path / "a.png")
    outputs = {}
    for batch in ("1", "auto"):
        result = invoke(["upscale", str(tmp_path / "a.png"), "-o", str(tmp_path / f"{batch}.png"), "--model", str(model),
                         *FAST, "--tile-batch", batch])
        assert result.exit_code == 0, result.output
        outputs[batch] = (tmp_path / f"{batch}.png").read_bytes()
    assert outputs["1"] == outputs["auto"]
    bad = invoke(["upscale", str(tmp_path / "a.png"), "--model", str(model), "--tile-batch", "many"])
    assert bad.exit_code == 2 and "--tile-batch must be a whole number or auto" in bad.stderr
