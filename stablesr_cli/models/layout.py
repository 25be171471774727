"""Memory layout of the networks' low-precision fast path.

In bf16/fp16 every convolution runs on channels_last (NHWC) activations with channels_last
weights: oneDNN's AMX/AVX512-BF16 kernels and cuDNN's tensor-core kernels work in that layout, and
NCHW tensors would be reordered to it and back around every convolution (on the CPU profile of a
bf16 sampling step those copies took as long as the convolutions). Elementwise ops, GroupNorm,
nearest upsampling and channel concatenation keep the layout, and the attention blocks read their
tokens from NHWC as views, so once an input is converted nothing converts it back.

float32 keeps NCHW: a different layout selects different convolution kernels whose sums round
differently in the last bits, and the float32 path is pinned bit for bit to the reference outputs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch._prims_common import suggest_memory_format  # torch's own rule, in Python

from .cpu_packing import PackedConv2d, pack_cpu_weights, unpack_cpu_weights

LOW_PRECISION = (torch.bfloat16, torch.float16)


def uses_channels_last(dtype: torch.dtype) -> bool:
    return dtype in LOW_PRECISION


def to_compute_layout(x: torch.Tensor) -> torch.Tensor:
    """A 4-D activation in the layout its dtype computes in (a no-op when it already is)."""
    if x.ndim == 4 and uses_channels_last(x.dtype):
        return x.contiguous(memory_format=torch.channels_last)
    return x


def prepare_for_inference(module: nn.Module) -> nn.Module:
    """Put a network's weights in the layout its kernels read, once, in place: channels_last
    convolution weights in low precision, and on the CPU in bf16 oneDNN's prepacked layout
    (`cpu_packing`).

    Call after the final `.to(device, dtype)`; without it a low-precision network still works but
    every convolution reorders its weight on every call.
    """
    param = next(module.parameters(), None)
    if param is not None and uses_channels_last(param.dtype):
        module.to(memory_format=torch.channels_last)
        return pack_cpu_weights(module)
    # float32 keeps NCHW, yet some of its activations are channels_last views: only there can a
    # weight's format differ from its input's (low precision is channels_last throughout)
    for conv in module.modules():
        if isinstance(conv, nn.Conv2d) and getattr(conv, _HOOK, None) is None:
            setattr(conv, _HOOK, conv.register_forward_pre_hook(_weight_follows_input))
    return module


def prepare_for_compile(module: nn.Module) -> nn.Module:
    """Undo the eager-only parts of `prepare_for_inference`, in place: inductor traces plain
    convolutions and linears, chooses their layouts and packs their weights itself."""
    unpack_cpu_weights(module)
    for conv in module.modules():
        handle = getattr(conv, _HOOK, None)
        if handle is not None:
            handle.remove()
            setattr(conv, _HOOK, None)
    return module


_HOOK = "_weight_follows_input_hook"


def convolve(conv: nn.Module, x: torch.Tensor, *, padding: int = 0, stride: int | None = None) -> torch.Tensor:
    """`conv` applied with its own weights but the given padding (and stride): for callers that
    cut windows with their own halo, such as the lean VAE tiling.

    A plain conv's weight is first put in the window's memory format, as its own forward does: a
    weight left in channels_last by an earlier whole-image call would otherwise switch float32
    NCHW windows to the channels_last kernels, and the result would depend on what ran before.
    """
    if isinstance(conv, PackedConv2d):
        return conv.convolve(x, padding=[padding, padding], stride=None if stride is None else [stride, stride])
    assert isinstance(conv, nn.Conv2d)
    _weight_follows_input(conv, (x,))
    return F.conv2d(x, conv.weight, conv.bias, stride=conv.stride if stride is None else stride, padding=padding)


def _weight_follows_input(conv: nn.Conv2d, args: tuple[torch.Tensor, ...]) -> None:
    """Store a convolution's weight in the memory format of its input, once.

    `torch._convolution` computes in channels_last when the input is channels_last and makes the
    weight match with `weight.contiguous(channels_last)`: a full copy of the weight on every call.
    In float32 some UNet activations are channels_last (the transformer's way back from tokens is
    an NHWC view), so those convolutions copied their weight at every step. Converting it once is
    the same computation without the copy: the weight ends in exactly the format `_convolution`
    would have given it, so the kernel and the result do not change.
    """
    wanted = suggest_memory_format(args[0])
    if suggest_memory_format(conv.weight) != wanted:
        with torch.inference_mode(False), torch.no_grad():
            conv.weight.data = conv.weight.data.contiguous(memory_format=wanted)
