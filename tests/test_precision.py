"""bf16 on the CPU: what `--dtype auto` picks, the channels_last fused fast path, and its accuracy cost."""

from __future__ import annotations

import copy
import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.profiler import profile

from stablesr_cli.checkpoints.assemble import build_unet
from stablesr_cli.models.autoencoder import AttnBlock
from stablesr_cli.models.cpu_packing import PackedConv2d
from stablesr_cli.models.layout import prepare_for_inference
from stablesr_cli.models.time_encoder import LegacyAttention
from stablesr_cli.options import UpscaleOptions
from stablesr_cli.pipeline.noise import SeededNoise
from stablesr_cli.pipeline.upscale import upscale_tensor
from stablesr_cli.runtime import auto_dtype, cpu_flags, resolve_dtype
from tiny_checkpoints import golden_weights
from tiny_models import UNET_HEAD_CHANNELS, tiny_models

PHOTOS = Path(__file__).parent / "fixtures" / "images"
FUSED = "aten::_scaled_dot_product_flash_attention_for_cpu"
MATH = "aten::_scaled_dot_product_attention_math"
CHANNELS_LAST = torch.channels_last


# --- --dtype auto ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("flags", "expected", "named"),
    [
        ({"avx512f", "amx_tile", "amx_bf16", "avx512_bf16"}, torch.bfloat16, "amx_bf16, avx512_bf16"),
        ({"avx2", "avx512f", "avx512_bf16"}, torch.bfloat16, "avx512_bf16"),
        ({"avx2", "avx512f", "avx512_vnni"}, torch.float32, "without"),
        (set(), torch.float32, "without"),
    ],
)
def test_auto_picks_bf16_only_with_native_bf16_matrix_instructions(flags, expected, named):
    dtype, reason = auto_dtype(torch.device("cpu"), flags)
    assert dtype == expected and named in reason


def test_auto_on_cuda_stays_fp16_and_resolve_dtype_follows_auto_dtype():
    assert auto_dtype(torch.device("cuda"), set())[0] == torch.float16
    assert resolve_dtype("auto", torch.device("cpu")) == auto_dtype(torch.device("cpu"))[0]
    assert resolve_dtype("fp32", torch.device("cpu")) == torch.float32


def test_cpu_flags_reads_the_flags_line():
    text = "processor\t: 0\nmodel name\t: Some CPU\nflags\t\t: fpu sse avx512f amx_bf16\n\nprocessor\t: 1\n"
    assert cpu_flags(text) == {"fpu", "sse", "avx512f", "amx_bf16"}
    assert cpu_flags("processor : 0\n") == set()


# --- the fast path ----------------------------------------------------------------------------------


def kernels(fn) -> set[str]:
    with torch.no_grad(), profile() as prof:
        fn()
    return {e.name for e in prof.events()}


def bf16_copy(module: torch.nn.Module) -> torch.nn.Module:
    return prepare_for_inference(copy.deepcopy(module).to(torch.bfloat16))


@pytest.mark.parametrize("make", [lambda: LegacyAttention(64, 4), lambda: AttnBlock(64)], ids=["encoder", "vae"])
def test_bf16_attention_takes_the_fused_kernel_in_channels_last_and_follows_fp32(make):
    torch.manual_seed(0)
    fp32 = make().eval()
    x = torch.randn(2, 64, 12, 10)
    with torch.no_grad():
        ref = fp32(x)
    half = bf16_copy(fp32)
    xb = x.to(torch.bfloat16).contiguous(memory_format=CHANNELS_LAST)
    with torch.no_grad():
        out = half(xb)
    assert out.dtype == torch.bfloat16 and out.is_contiguous(memory_format=CHANNELS_LAST)
    assert (out.float() - ref).norm() / ref.norm() < 0.01
    used = kernels(lambda: half(xb))
    assert FUSED in used and MATH not in used


def test_bf16_sampling_step_attends_fused_and_never_upcasts():
    """One tiny step (time-aware encoder + UNet) in bf16: every attention call on the fused kernel, no
    float32 copies of activations, output in channels_last bf16, close to the float32 step."""
    m = tiny_models()
    unet, encoder = bf16_copy(m.unet), bf16_copy(m.time_encoder)
    g = torch.Generator().manual_seed(3)
    z, t = torch.randn(2, 4, 16, 16, generator=g), torch.tensor([999, 400])
    ctx = m.context.expand(2, -1, -1)
    with torch.no_grad():
        ref = m.unet(z, t, ctx, m.time_encoder(z, t))
    zb, cb = z.to(torch.bfloat16), ctx.to(torch.bfloat16)

    def step():
        return unet(zb, t, cb, encoder(zb, t))

    with torch.no_grad(), profile(record_shapes=True) as prof:
        out = step()
    names = {e.name for e in prof.events()}
    assert FUSED in names and MATH not in names
    assert out.dtype == torch.bfloat16 and out.is_contiguous(memory_format=CHANNELS_LAST)
    assert (out.float() - ref).norm() / ref.norm() < 0.05
    # the only float32 tensors are the timestep features and the sinusoid, never an activation map
    upcasts = [e for e in prof.events() if e.name == "aten::_to_copy" and any(len(s) == 4 for s in e.input_shapes if s)]
    assert not upcasts


def test_converted_fp16_weights_load_straight_into_bf16_channels_last():
    sd = {k: v.to(torch.float16) for k, v in golden_weights("01_unet.safetensors").items()}
    unet = build_unet(sd, num_head_channels=UNET_HEAD_CHANNELS, dtype=torch.bfloat16)
    assert all(p.dtype == torch.bfloat16 for p in unet.parameters())
    conv = unet.input_blocks[0][0]  # on the CPU a bf16 conv holds its weight prepacked for oneDNN
    assert isinstance(conv, PackedConv2d)
    dense = conv.unpacked().weight
    assert dense.is_contiguous(memory_format=CHANNELS_LAST)
    assert torch.equal(dense, sd["model.diffusion_model.input_blocks.0.0.weight"].to(torch.bfloat16))
    fp32 = build_unet(sd, num_head_channels=UNET_HEAD_CHANNELS)
    assert fp32.input_blocks[0][0].weight.is_contiguous()  # float32 keeps NCHW (and its exact numbers)


# --- accuracy of final images -----------------------------------------------------------------------


def photo(name: str, side: int) -> torch.Tensor:
    rgb = Image.open(PHOTOS / name).convert("RGB")
    left, top = (rgb.width - side) // 2, (rgb.height - side) // 2
    arr = np.asarray(rgb.crop((left, top, left + side, top + side)), dtype=np.float32) / 255.0
    return torch.from_numpy(arr).permute(2, 0, 1)[None]


@pytest.mark.parametrize("name", ["children-alpha.png", "0014.jpg"])
def test_bf16_final_8bit_image_stays_within_measured_bounds_of_fp32(name):
    """Measured with bench/accuracy.py on every test photo (48 px crops, x4, 4 steps): PSNR 42-47 dB,
    mean |diff| 0.8-1.2 levels, max |diff| 6-28 levels. The bounds leave room, not a free pass."""
    m = tiny_models()
    half = dataclasses.replace(m, unet=bf16_copy(m.unet), time_encoder=bf16_copy(m.time_encoder),
                               sd_vae=bf16_copy(m.cfw_vae))  # fmt: skip
    half = dataclasses.replace(half, cfw_vae=half.sd_vae)
    opts = UpscaleOptions(scale=4, steps=4, w=0.5)
    x = photo(name, 32)
    out = {k: (upscale_tensor(x, mm, opts, SeededNoise(42)).clamp(0, 1) * 255).round() for k, mm in
           (("fp32", m), ("bf16", half))}  # fmt: skip
    diff = (out["fp32"] - out["bf16"]).abs()
    psnr = 10 * math.log10(255**2 / float(diff.square().mean()))
    assert psnr > 38 and float(diff.mean()) < 2.0 and float(diff.max()) <= 48, (psnr, diff.mean(), diff.max())
    assert float(diff.mean()) > 0  # bf16 really ran (the comparison can fail)


def test_info_shows_what_auto_picks_and_why():
    from stablesr_cli.cli.info import _device_report

    report = _device_report()
    dtype, reason = auto_dtype(torch.device(report.default_device))
    assert report.default_dtype == {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}[dtype]
    assert report.default_dtype_reason == reason
