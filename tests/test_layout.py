"""float32 convolutions keep their weight in the memory format of their input: no per-call copies, same bits."""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.profiler import profile

from stablesr_cli.checkpoints.assemble import build_unet
from stablesr_cli.models.layout import convolve, prepare_for_inference
from tiny_checkpoints import golden_weights
from tiny_models import UNET_HEAD_CHANNELS, tiny_models


def weight_copies(fn) -> int:
    with profile() as prof:
        fn()
    return sum(1 for e in prof.events() if e.name == "aten::clone")


def test_float32_unet_stops_copying_weights_and_keeps_its_bits():
    unet = build_unet(golden_weights("01_unet.safetensors"), num_head_channels=UNET_HEAD_CHANNELS)  # fresh, unrun
    plain = copy.deepcopy(unet)
    for conv in plain.modules():
        if isinstance(conv, nn.Conv2d):
            conv._forward_pre_hooks.clear()
    g = torch.Generator().manual_seed(5)
    z, t = torch.randn(2, 4, 16, 16, generator=g), torch.tensor([999, 10])
    ctx = torch.randn(2, 77, 16, generator=g)
    encoder = tiny_models().time_encoder  # built (and cached) outside inference mode
    with torch.inference_mode():
        features = encoder(z, t)
    with torch.inference_mode():
        expected = plain(z, t, ctx, features)
        assert weight_copies(lambda: plain(z, t, ctx, features)) > 0  # channels_last inputs meet NCHW weights
        first = unet(z, t, ctx, features)  # converts the weights it needs to, once
        assert weight_copies(lambda: unet(z, t, ctx, features)) == 0
        again = unet(z, t, ctx, features)
    assert torch.equal(first, expected) and torch.equal(again, expected)
    layouts = {conv.weight.is_contiguous() for conv in unet.modules() if isinstance(conv, nn.Conv2d)}
    assert layouts == {True, False}  # only the convolutions fed channels_last changed format


def test_preparing_twice_adds_one_hook():
    conv = nn.Conv2d(4, 8, 3)
    prepare_for_inference(prepare_for_inference(conv))
    assert len(conv._forward_pre_hooks) == 1


def test_lean_convolve_puts_the_weight_back_in_the_window_format():
    conv = prepare_for_inference(nn.Conv2d(8, 16, 3, padding=1))
    nhwc = torch.randn(1, 8, 12, 12).contiguous(memory_format=torch.channels_last)
    window = torch.randn(1, 8, 14, 14)
    with torch.inference_mode():
        fresh = torch.nn.functional.conv2d(window, conv.weight.detach().clone(), conv.bias)
        conv(nhwc)  # a whole-image call leaves the weight channels_last
        assert not conv.weight.is_contiguous()
        assert torch.equal(convolve(conv, window), fresh)  # the NCHW kernel, as on a fresh network
    assert conv.weight.is_contiguous()


def test_low_precision_convolutions_get_no_per_call_hook():
    conv = prepare_for_inference(nn.Conv2d(4, 8, 3).half())  # channels_last throughout: nothing to follow
    assert not conv._forward_pre_hooks
