"""oneDNN weight prepacking for bfloat16 inference on the CPU.

`F.conv2d` and `F.linear` hand oneDNN a plain weight, and oneDNN reorders it into the blocked
layout its AMX/AVX512-BF16 kernels read on every call. For the UNet's 1280-channel convolutions
at 8x8 and 16x16 latents that reorder costs more than the convolution itself (a 1280->1280 3x3
conv on an 8x8 bf16 input: 3.9 ms plain, 1.5 ms prepacked). Packing once at load time, as
inductor's freezing pass does (`torch/_inductor/fx_passes/mkldnn_fusion.py`), removes it.

Only bfloat16 is packed. The prepacked kernels return exactly what the plain bf16 kernels return
(same primitive, same summation order; the tests compare them with `torch.equal`). float32 is not
packed: its NCHW path is pinned bit for bit to the reference outputs, and the packed kernels pick
a channels_last fp32 algorithm whose sums round differently. The packed weight replaces the plain
one, so memory does not grow; `unpack_cpu_weights` gives plain modules back (for torch.compile).
"""

from __future__ import annotations

import functools

import torch
from torch import nn


def packing_available(device: torch.device, dtype: torch.dtype) -> bool:
    return device.type == "cpu" and dtype == torch.bfloat16 and _onednn_bf16()


@functools.cache
def _onednn_bf16() -> bool:
    """oneDNN is built in and runs bf16 on this CPU (AVX512-BW/VL/DQ at least; AMX or AVX512-BF16
    natively). Without it the plain modules stay, and torch falls back to its own bf16 kernels."""
    if not torch.backends.mkldnn.is_available():
        return False
    ops = torch.ops.mkldnn
    needed = ("_convolution_pointwise", "_linear_pointwise", "_reorder_linear_weight", "_is_mkldnn_bf16_supported")
    return all(hasattr(ops, name) for name in needed) and bool(ops._is_mkldnn_bf16_supported())


class PackedConv2d(nn.Module):
    """An `nn.Conv2d` (zero padding) whose weight lives in oneDNN's blocked layout."""

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        self.in_channels, self.out_channels = conv.in_channels, conv.out_channels
        self.kernel_size, self.stride = tuple(conv.kernel_size), list(conv.stride)
        self.padding, self.dilation, self.groups = list(conv.padding), list(conv.dilation), conv.groups
        self.bias = conv.bias
        weight = conv.weight.detach().contiguous()
        self.packed_weight = torch._C._nn.mkldnn_reorder_conv2d_weight(
            weight.to_mkldnn(), self.padding, self.stride, self.dilation, self.groups
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.convolve(x, padding=self.padding)

    def convolve(self, x: torch.Tensor, *, padding: list[int], stride: list[int] | None = None) -> torch.Tensor:
        stride = self.stride if stride is None else stride
        return torch.ops.mkldnn._convolution_pointwise(
            x, self.packed_weight, self.bias, padding, stride, self.dilation, self.groups, "none", [], ""
        )

    def plus(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        """`residual + self(x)`, the sum taken by oneDNN on the float32 accumulators: one pass over
        two full-size maps less (the VAE's residual blocks at 512x512 are memory-bound)."""
        residual = residual.contiguous(memory_format=torch.channels_last)
        return torch.ops.mkldnn._convolution_pointwise.binary(
            x, residual, self.packed_weight, self.bias, self.padding, self.stride, self.dilation, self.groups,
            "add", None, None, [], None,
        )  # fmt: skip

    def unpacked(self) -> nn.Conv2d:
        weight = self.packed_weight.to_dense()
        conv = nn.Conv2d(
            self.in_channels, self.out_channels, self.kernel_size, tuple(self.stride), tuple(self.padding),
            tuple(self.dilation), self.groups, bias=self.bias is not None, device=weight.device, dtype=weight.dtype,
        )  # fmt: skip
        conv.weight = nn.Parameter(weight.contiguous(memory_format=torch.channels_last), requires_grad=False)
        conv.bias = self.bias
        return conv

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"


class PackedLinear(nn.Module):
    """An `nn.Linear` whose weight lives in oneDNN's blocked layout."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.bias = linear.bias
        self.packed_weight = torch.ops.mkldnn._reorder_linear_weight(linear.weight.detach().contiguous())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(x, self.packed_weight, self.bias, "none", [], "")

    def unpacked(self) -> nn.Linear:
        weight = self.packed_weight.to_dense()
        linear = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None, device=weight.device, dtype=weight.dtype)
        linear.weight = nn.Parameter(weight.contiguous(), requires_grad=False)
        linear.bias = self.bias
        return linear

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


class PackedGatedGELU(nn.Module):
    """`value * gelu(gate)` from one projection to [value | gate] (a GEGLU), as two packed linears:
    the gate's with GELU fused into its output, the value's with the product fused into its output.
    The gate then never goes through memory unactivated and the product needs no third pass;
    GELU and the product are computed on the float32 accumulators before rounding to bf16.
    """

    def __init__(self, proj: nn.Linear) -> None:
        super().__init__()
        self.in_features, self.out_features = proj.in_features, proj.out_features
        half = proj.out_features // 2
        weight = proj.weight.detach()
        bias = proj.bias.detach() if proj.bias is not None else None
        self.value_weight = torch.ops.mkldnn._reorder_linear_weight(weight[:half].contiguous())
        self.gate_weight = torch.ops.mkldnn._reorder_linear_weight(weight[half:].contiguous())
        self.value_bias = None if bias is None else nn.Parameter(bias[:half].clone(), requires_grad=False)
        self.gate_bias = None if bias is None else nn.Parameter(bias[half:].clone(), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = torch.ops.mkldnn._linear_pointwise(x, self.gate_weight, self.gate_bias, "gelu", [], "none")
        return torch.ops.mkldnn._linear_pointwise(x, gate, self.value_weight, self.value_bias, "mul")

    def unpacked(self) -> nn.Linear:
        weight = torch.cat([self.value_weight.to_dense(), self.gate_weight.to_dense()])
        linear = nn.Linear(self.in_features, self.out_features, bias=self.value_bias is not None, device=weight.device, dtype=weight.dtype)
        linear.weight = nn.Parameter(weight, requires_grad=False)
        if self.value_bias is not None and self.gate_bias is not None:
            linear.bias = nn.Parameter(torch.cat([self.value_bias, self.gate_bias]), requires_grad=False)
        return linear

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features} (value | gate)"


def pack_cpu_weights(module: nn.Module) -> nn.Module:
    """Swap every bf16 `nn.Conv2d` and `nn.Linear` inside `module` for its prepacked twin, in place.

    A module with a `pack_for_cpu()` method packs itself (and may fuse what follows a projection);
    its remaining plain layers are packed after. A no-op off the CPU, for other dtypes, and where
    this PyTorch build has no oneDNN.
    """
    for child in module.modules():
        pack_self = getattr(child, "pack_for_cpu", None)
        if pack_self is not None:
            pack_self()
    # parents only: a list of every module would keep each replaced layer, and its dense weight,
    # alive to the end, holding the dense and the packed weights of the whole network at once
    parents = [m for m in module.modules() if next(m.children(), None) is not None]
    for parent in parents:
        for name, child in list(parent.named_children()):
            if not packing_available(_device(child), _dtype(child)):
                continue
            if isinstance(child, nn.Conv2d) and child.padding_mode == "zeros" and not isinstance(child.padding, str):
                setattr(parent, name, PackedConv2d(child))
            elif isinstance(child, nn.Linear):
                setattr(parent, name, PackedLinear(child))
    return module


def unpack_cpu_weights(module: nn.Module) -> nn.Module:
    """Undo `pack_cpu_weights` in place: plain `nn.Conv2d`/`nn.Linear` modules with dense weights."""
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, (PackedConv2d, PackedLinear, PackedGatedGELU)):
                setattr(parent, name, child.unpacked())
    return module


def _device(module: nn.Module) -> torch.device:
    weight = getattr(module, "weight", None)
    return weight.device if isinstance(weight, torch.Tensor) else torch.device("meta")


def _dtype(module: nn.Module) -> torch.dtype:
    weight = getattr(module, "weight", None)
    return weight.dtype if isinstance(weight, torch.Tensor) else torch.float32
