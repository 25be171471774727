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
from torch import nn

from .cpu_packing import pack_cpu_weights

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
