"""oneDNN prepacked weights on the CPU bf16 path: the same numbers as the plain kernels, no extra copies."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from stablesr_cli.models.cpu_packing import (
    PackedConv2d,
    PackedGatedGELU,
    PackedLinear,
    pack_cpu_weights,
    packing_available,
    unpack_cpu_weights,
)
from stablesr_cli.models.layout import prepare_for_inference
from stablesr_cli.pipeline.compiled import _compile
from stablesr_cli.pipeline.vae_tiling import tiled_decode
from tiny_models import tiny_models

pytestmark = pytest.mark.skipif(
    not packing_available(torch.device("cpu"), torch.bfloat16), reason="no oneDNN bf16 in this PyTorch build or on this CPU"
)
BF16 = torch.bfloat16


def plain_bf16(module: nn.Module) -> nn.Module:
    """bf16 copy in channels_last, not packed: what the bf16 path ran before packing."""
    return copy.deepcopy(module).to(BF16).to(memory_format=torch.channels_last)


def kinds(module: nn.Module) -> set[type]:
    return {type(m) for m in module.modules()}


@pytest.mark.parametrize(
    "cin, cout, kernel, stride, padding, hw",
    [(8, 16, 3, 1, 1, (9, 13)), (32, 32, 3, 2, 1, (16, 16)), (16, 8, 1, 1, 0, (5, 7)), (4, 32, 3, 2, 0, (11, 10))],
)
def test_packed_convolution_is_exactly_the_plain_bf16_one(cin, cout, kernel, stride, padding, hw):
    conv = nn.Conv2d(cin, cout, kernel, stride, padding).to(BF16).to(memory_format=torch.channels_last)
    x = torch.randn(2, cin, *hw).to(BF16).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        assert torch.equal(PackedConv2d(conv)(x), conv(x))


@pytest.mark.parametrize("shape, bias", [((3, 7, 40), True), ((1, 64, 40), False), ((5, 40), True)])
def test_packed_linear_is_exactly_the_plain_bf16_one(shape, bias):
    linear = nn.Linear(40, 24, bias=bias).to(BF16)
    x = torch.randn(*shape).to(BF16)
    with torch.no_grad():
        assert torch.equal(PackedLinear(linear)(x), linear(x))


def test_packed_networks_follow_the_plain_bf16_ones():
    m = tiny_models()
    g = torch.Generator().manual_seed(11)
    z32, t = torch.randn(2, 4, 16, 16, generator=g), torch.tensor([999, 321])
    z, ctx = z32.to(BF16), m.context.expand(2, -1, -1).to(BF16)
    unet, encoder = plain_bf16(m.unet), plain_bf16(m.time_encoder)
    packed_unet, packed_encoder = pack_cpu_weights(plain_bf16(m.unet)), pack_cpu_weights(plain_bf16(m.time_encoder))
    assert {nn.Conv2d, nn.Linear}.isdisjoint(kinds(packed_unet) | kinds(packed_encoder))
    assert PackedGatedGELU in kinds(packed_unet)
    with torch.no_grad():
        reference = m.unet(z32, t, m.context.expand(2, -1, -1), m.time_encoder(z32, t))
        features = encoder(z, t)
        packed_features = packed_encoder(z, t)
        # the time-aware encoder has only convolutions and linears: bit for bit
        assert all(torch.equal(a, b) for a, b in zip(features, packed_features, strict=True))
        plain_out, packed_out = unet(z, t, ctx, features), packed_unet(z, t, ctx, packed_features)
    # the fused GEGLU rounds once instead of three times: not bitwise, at least as close to float32
    plain_error = (plain_out.float() - reference).norm() / reference.norm()
    packed_error = (packed_out.float() - reference).norm() / reference.norm()
    assert packed_error < 0.02 and packed_error <= plain_error * 1.1


def test_packed_gated_gelu_is_value_times_gelu_of_gate():
    proj = nn.Linear(32, 2 * 48).to(BF16)
    x = torch.randn(2, 10, 32).to(BF16)
    with torch.no_grad():
        value, gate = proj(x).float().chunk(2, dim=-1)
        expected = value * torch.nn.functional.gelu(gate)
        got = PackedGatedGELU(proj)(x).float()
        assert torch.equal(PackedGatedGELU(proj).unpacked().weight, proj.weight)
    assert (got - expected).abs().max() <= 0.02 * expected.abs().max()


def relative_error(got: torch.Tensor, reference: torch.Tensor) -> float:
    return float((got.float() - reference).norm() / reference.norm())


def test_packed_autoencoder_follows_plain_bf16_whole_and_matches_it_lean_tiled():
    vae = tiny_models().cfw_vae
    plain, packed = plain_bf16(vae), pack_cpu_weights(plain_bf16(vae))
    x32 = torch.rand(1, 3, 48, 40, generator=torch.Generator().manual_seed(2)).mul(2).sub(1)
    x = x32.to(BF16)
    with torch.no_grad():
        reference, ref_feats = vae.encode_with_features(x32)
        posterior, feats = plain.encode_with_features(x)
        packed_posterior, packed_feats = packed.encode_with_features(x)
        z = posterior.mean
        ref_image = vae.decode(z.float(), ref_feats, 0.5)
        image, packed_image = plain.decode(z, feats, 0.5), packed.decode(z, packed_feats, 0.5)
        # the lean tiling runs the layers itself: convolutions through the packed weights, its own sums
        lean_plain = tiled_decode(plain, z, 24, feats, w=0.5)
        lean_packed = tiled_decode(packed, z, 24, feats, w=0.5)
    assert torch.equal(lean_plain, lean_packed)
    # whole-image residual blocks add the skip inside the packed conv: one rounding less, not bitwise
    for got, plain_got, ref in ((packed_posterior.mean, z, reference.mean), (packed_image, image, ref_image)):
        assert relative_error(got, ref) < 0.02
        assert relative_error(got, ref) <= 1.1 * relative_error(plain_got, ref) + 1e-3


def test_packed_plus_is_the_residual_sum():
    conv = nn.Conv2d(16, 16, 3, padding=1).to(BF16).to(memory_format=torch.channels_last)
    x = torch.randn(2, 16, 12, 10).to(BF16).contiguous(memory_format=torch.channels_last)
    residual = torch.randn(2, 16, 12, 10).to(BF16)  # NCHW: plus converts it
    with torch.no_grad():
        plain = residual.float() + conv(x).float()
        fused = PackedConv2d(conv).plus(x, residual)
    assert (fused.float() - plain).abs().max() <= 0.02 * plain.abs().max()


def test_only_bf16_on_the_cpu_is_packed():
    m = tiny_models()
    fp32 = prepare_for_inference(copy.deepcopy(m.unet))
    assert nn.Conv2d in kinds(fp32) and PackedConv2d not in kinds(fp32)  # float32 keeps its exact kernels
    fp16 = prepare_for_inference(copy.deepcopy(m.unet).half())
    assert PackedConv2d not in kinds(fp16)
    bf16 = prepare_for_inference(copy.deepcopy(m.unet).to(BF16))
    assert {PackedConv2d, PackedLinear} <= kinds(bf16)
    assert not packing_available(torch.device("meta"), BF16)


def test_packing_replaces_the_weights_instead_of_copying_them():
    linear = nn.Linear(64, 32).to(BF16)
    bias = linear.bias
    packed = PackedLinear(linear)
    assert packed.bias is bias and [p for p in packed.parameters()] == [bias]  # no dense weight kept
    assert torch.equal(packed.unpacked().weight, linear.weight)


def test_unpacking_restores_plain_modules_with_the_same_weights():
    unet = plain_bf16(tiny_models().unet)
    weights = {k: v.clone() for k, v in unet.state_dict().items()}
    restored = unpack_cpu_weights(pack_cpu_weights(unet))
    assert {PackedConv2d, PackedLinear, PackedGatedGELU}.isdisjoint(kinds(restored))
    state = restored.state_dict()
    assert state.keys() == weights.keys() and all(torch.equal(state[k], v) for k, v in weights.items())


def test_compile_unpacks_before_tracing(monkeypatch):
    unet = pack_cpu_weights(plain_bf16(tiny_models().unet))
    monkeypatch.setattr(nn.Module, "compile", lambda self, **_kw: None)  # the compile itself is test_compile's
    _compile(unet)
    assert PackedConv2d not in kinds(unet) and nn.Conv2d in kinds(unet)
    assert all(not conv._forward_pre_hooks for conv in unet.modules())  # nor the eager layout hooks


def test_a_cpu_without_onednn_bf16_keeps_the_plain_modules(monkeypatch):
    from stablesr_cli.models import cpu_packing

    monkeypatch.setattr(cpu_packing, "_onednn_bf16", lambda: False)
    unet = prepare_for_inference(copy.deepcopy(tiny_models().unet).to(BF16))
    assert nn.Conv2d in kinds(unet) and not {PackedConv2d, PackedLinear, PackedGatedGELU} & kinds(unet)
