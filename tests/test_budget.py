"""The size and memory budget of one image (stablesr_cli/budget.py), checked against the pipeline."""

from __future__ import annotations

import dataclasses
import types
import weakref

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from stablesr_cli import budget
from stablesr_cli.budget import ImageTooLargeError, MemoryEstimate, NetworkShapes, check_fits, work_sizes
from stablesr_cli.errors import OptionError
from stablesr_cli.models.unet import UNetConfig
from stablesr_cli.options import UpscaleOptions, VaeTiling
from stablesr_cli.pipeline import preprocess
from stablesr_cli.pipeline.tiling import patch_starts, pixel_patches
from stablesr_cli.pipeline.upscale import latent_tiling
from tiny_models import tiny_models, tiny_upscaler

GB = 1000**3


@settings(max_examples=60, deadline=None)
@given(
    height=st.integers(1, 300),
    width=st.integers(1, 300),
    scale=st.sampled_from([0.5, 1, 2, 2.5, 4, 7.3]),
    tiling=st.sampled_from(list(VaeTiling)),
)
def test_work_sizes_are_the_pipelines_own(height, width, scale, tiling):
    """The torch-free arithmetic gives the very shapes the pipeline's tensors get."""
    opts = UpscaleOptions(scale=scale, vae_tiling=tiling, vae_tile_size=128, vae_tile_stride=96)
    tile = 64
    sizes = work_sizes(height, width, opts, tile)
    x = torch.zeros(1, 3, height, width)
    enlarged, _ = preprocess.prepare_input(x, scale, tile)
    canvas, _, _ = preprocess.pad_reflect_32(enlarged)
    assert sizes.enlarged_hw == tuple(enlarged.shape[-2:])
    assert sizes.canvas_hw == tuple(canvas.shape[-2:])
    assert sizes.output_hw == (int(height * scale), int(width * scale))
    if tiling is VaeTiling.UPSTREAM and max(sizes.canvas_hw) > 128:
        patches = pixel_patches(*sizes.canvas_hw, 128, 96)
        assert sizes.pieces == len(patches)
        assert sizes.piece_hw == (patches[0].h, patches[0].w)
    else:
        assert (sizes.pieces, sizes.piece_hw) == (1, sizes.canvas_hw)


@settings(max_examples=200, deadline=None)
@given(length=st.integers(1, 5000), patch=st.integers(1, 700), data=st.data())
def test_patch_count_without_listing_matches_patch_starts(length, patch, data):
    stride = data.draw(st.integers(1, patch))
    assert budget._patch_count(length, patch, stride) == len(patch_starts(length, patch, stride))


def test_the_reported_cases_are_refused_by_pixels_before_any_allocation():
    """A 1x20000 strip, --scale 1000, --tile-size 1000000000: sizes computed on integers, no overflow."""
    strip = work_sizes(20000, 1, UpscaleOptions(), 512)
    assert strip.enlarged_hw == (10_240_000, 512) and strip.work_pixels == 5_242_880_000
    huge_scale = work_sizes(32, 40, UpscaleOptions(scale=1000), 512)
    assert huge_scale.output_hw == (32_000, 40_000)
    huge_tile = work_sizes(32, 40, UpscaleOptions(tile_size=10**9, vae_tiling=VaeTiling.LEAN), 10**9)
    assert huge_tile.enlarged_hw == (10**9, 1_250_000_000)
    for sizes, opts in ((strip, UpscaleOptions()), (huge_scale, UpscaleOptions(scale=1000)), (huge_tile, UpscaleOptions())):
        with pytest.raises(ImageTooLargeError, match="--max-output-pixels"):
            check_fits(sizes, MemoryEstimate(0, 0), opts, host_limit=None, device_limit=None)


def test_the_message_names_input_output_and_canvas_sizes():
    sizes = work_sizes(20000, 1, UpscaleOptions(), 512)
    with pytest.raises(ImageTooLargeError) as caught:
        check_fits(sizes, MemoryEstimate(0, 0), UpscaleOptions(), host_limit=None, device_limit=None)
    message = str(caught.value)
    assert "a 1x20000 image at --scale 4 becomes 4x80000" in message
    assert "512x10240000" in message and "--tile-size" in message and "\n" not in message


def test_no_pixel_limit_still_checks_memory_and_device_memory_separately():
    opts = UpscaleOptions(max_output_pixels=None)
    sizes = work_sizes(20000, 1, opts, 512)
    estimate = budget.estimate_memory(sizes, NetworkShapes(), opts, dtype_bytes=4, accelerator=False)
    assert estimate.host + estimate.device > 63 * GB  # the canvas alone is 63 GB in float32
    with pytest.raises(ImageTooLargeError, match="of memory; this machine has 16.0 GB"):
        check_fits(sizes, estimate, opts, host_limit=16 * GB, device_limit=None)
    small = work_sizes(512, 512, opts, 512)
    gpu = budget.estimate_memory(small, NetworkShapes(), opts, dtype_bytes=2, accelerator=True)
    check_fits(small, gpu, opts, host_limit=16 * GB, device_limit=24 * GB)  # a 4x upscale of 512x512 fits a 24 GB GPU
    with pytest.raises(ImageTooLargeError, match="of device memory; the device has 1.0 GB"):
        check_fits(small, gpu, opts, host_limit=16 * GB, device_limit=1 * GB)


def test_estimate_grows_with_the_piece_and_lean_tiling_moves_it_off_the_accelerator():
    shapes = NetworkShapes()
    whole = UpscaleOptions(vae_tiling=VaeTiling.NONE)
    lean = UpscaleOptions(vae_tiling=VaeTiling.LEAN, vae_tile_size=256, vae_tile_stride=256)
    sizes = work_sizes(1024, 1024, whole, 512)
    gpu_whole = budget.estimate_memory(sizes, shapes, whole, dtype_bytes=2, accelerator=True)
    gpu_lean = budget.estimate_memory(work_sizes(1024, 1024, lean, 512), shapes, lean, dtype_bytes=2, accelerator=True)
    assert gpu_lean.device < gpu_whole.device / 10 and gpu_lean.host > gpu_whole.host
    small = budget.estimate_memory(work_sizes(256, 256, whole, 512), shapes, whole, dtype_bytes=2, accelerator=True)
    assert small.device < gpu_whole.device
    cpu_lean = budget.estimate_memory(work_sizes(1024, 1024, lean, 512), shapes, lean, dtype_bytes=4, accelerator=False)
    assert cpu_lean.device > 2 * gpu_lean.device  # on the CPU nothing is parked elsewhere


class LiveTensorBytes(torch.overrides.TorchFunctionMode):
    """Peak bytes of the tensors that torch functions return while they are alive (storages
    counted once). What runs inside a kernel is not seen, so this is itself below the true peak."""

    def __init__(self) -> None:
        super().__init__()
        self.live: dict[int, int] = {}
        self.peak = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(tensor, torch.Tensor) and not isinstance(tensor, torch.nn.Parameter):
                self._track(tensor)
        return out

    def _track(self, tensor: torch.Tensor) -> None:
        storage = tensor.untyped_storage()
        key = storage.data_ptr()
        if key in self.live or storage.nbytes() == 0:
            return
        self.live[key] = storage.nbytes()
        self.peak = max(self.peak, sum(self.live.values()))
        weakref.finalize(tensor, self.live.pop, key, None)


@pytest.mark.parametrize("tiling", [VaeTiling.NONE, VaeTiling.UPSTREAM, VaeTiling.LEAN])
def test_the_estimate_stays_below_what_the_pipeline_really_holds(tiling):
    """A lower bound (it refuses only the impossible), yet of the right size: within 4x of the
    measured peak of the tiny model's float32 upscale."""
    models = tiny_models()
    opts = UpscaleOptions(scale=2, steps=1, vae_tiling=tiling, vae_tile_size=128, vae_tile_stride=96)
    tiling_ = latent_tiling(models, opts)
    sizes = work_sizes(70, 90, opts, tiling_.tile * models.vae_downscale)
    vae, unet = models.cfw_vae.config, models.unet.config
    shapes = NetworkShapes(vae.level_channels, vae.feature_levels,
                           tuple(unet.model_channels * m for m in unet.channel_mult), unet.num_res_blocks, unet.in_channels)  # fmt: skip
    estimate = budget.estimate_memory(sizes, shapes, opts, dtype_bytes=4, accelerator=False)
    image = torch.rand(1, 3, 70, 90)
    tiny_upscaler().upscale_tensor(image, opts)  # once before: convolution weights settle in their layout
    with LiveTensorBytes() as measured:
        tiny_upscaler().upscale_tensor(image, opts)
    needed = estimate.host + estimate.device
    assert measured.peak / 4 < needed < measured.peak, (needed, measured.peak)


def test_out_of_memory_is_recognised_by_type():
    assert budget.is_out_of_memory(MemoryError())
    assert budget.is_out_of_memory(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB"))
    try:
        torch.empty(2**45, dtype=torch.uint8)  # 35 TB: the CPU allocator's own failure, a plain RuntimeError
    except RuntimeError as error:
        assert budget.is_out_of_memory(error)
    else:  # pragma: no cover - a machine with 35 TB
        pytest.skip("this machine can allocate 35 TB")
    assert not budget.is_out_of_memory(RuntimeError("Sizes of tensors must match: out of memory of ideas"))
    assert not budget.is_out_of_memory(ValueError("out of memory"))


def test_machine_memory_is_known_on_this_platform():
    total = budget.machine_memory()
    assert total is None or total > 100 * 1000**2


# ------------------------------------------------------------- tilings the model cannot run


def four_level_models():
    """The tiny models with an SD 2.x-deep UNet config: only the config matters to the check."""
    return dataclasses.replace(tiny_models(), unet=types.SimpleNamespace(config=UNetConfig()), native_tile=64)


@pytest.mark.parametrize(
    ("opts", "message"),
    [
        (UpscaleOptions(tile_size=520), "tile_size 520 does not suit this model: its UNet halves a tile 3 times, so tiles must be multiples of 32 pixels"),
        (UpscaleOptions(tile_overlap=256), "tile_overlap (256) must be smaller than the model's tile size (256)"),
        (UpscaleOptions(vae_tile_size=128, vae_tile_stride=96), "vae_tile_size (128) must be at least the model's tile size (256)"),
    ],
)
def test_tilings_are_checked_against_the_models_own_depth(opts, message):
    with pytest.raises(OptionError) as caught:
        latent_tiling(four_level_models(), opts)
    assert message in str(caught.value)


def test_the_tile_rule_follows_the_unets_depth_not_a_constant():
    opts = UpscaleOptions(tile_size=520, vae_tiling=VaeTiling.NONE)
    assert latent_tiling(tiny_models(), opts).tile == 130  # a 2-level UNet halves once: any even latent side
    assert latent_tiling(four_level_models(), dataclasses.replace(opts, tile_size=512)).tile == 128
    with pytest.raises(OptionError, match="try 512 or 544"):
        latent_tiling(four_level_models(), opts)


def test_the_api_refuses_a_tiling_before_any_work():
    with pytest.raises(OptionError, match="tile_overlap"):
        tiny_upscaler().resolve_options(UpscaleOptions(tile_overlap=256))
