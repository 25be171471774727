"""Primitives shared by the UNet and the time-aware encoder (upstream `ldm/modules/diffusionmodules/util.py`)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

GROUPS = 32


class GroupNorm32(nn.GroupNorm):
    """GroupNorm(32, C, eps=1e-5) computed in float32 and cast back (upstream `GroupNorm32`).

    Every norm of the UNet residual blocks, the output head, the SFT layers and the time-aware
    encoder is of this kind; the transformer input norm and the VAE use plain eps=1e-6 norms.
    """

    def __init__(self, channels: int) -> None:
        super().__init__(GROUPS, channels, eps=1e-5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.bfloat16:
            # the CPU and CUDA GroupNorm kernels accumulate bf16 statistics in float32 already, and
            # bf16 has float32's range: the upcast would only add two full-size copies per norm
            return F.group_norm(x, self.num_groups, self.weight, self.bias, self.eps)
        # float32: a no-op; float16: upstream's upcast (its range is too small for the statistics)
        weight = None if self.weight is None else self.weight.float()
        bias = None if self.bias is None else self.bias.float()
        return F.group_norm(x.float(), self.num_groups, weight, bias, self.eps).type(x.dtype)


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal features [B, dim], cos first; exponent divided by dim/2 (not dim/2 - 1), as upstream."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t[:, None].float() * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


class Downsample(nn.Module):
    """3x3 conv, stride 2, symmetric padding 1: output side = ceil(n / 2)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.op = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class Upsample(nn.Module):
    """Nearest-neighbour x2, then a 3x3 conv."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


def multi_head_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) v over [B, T, heads*d] tokens; heads are contiguous d-wide chunks.

    float16 inputs are attended in float32: SD 2.x logits overflow fp16 (ComfyUI's SD20
    `attn_precision`; upstream's `CrossAttention` in `ldm/modules/attention.py` computes them in fp16 without upcast). bfloat16 has float32's range
    and the fused kernels accumulate its softmax and products in float32, so it stays bfloat16.
    """
    b, tq, c = q.shape
    d = c // heads
    dtype = q.dtype
    if dtype == torch.float16:
        q, k, v = q.float(), k.float(), v.float()
    q = q.view(b, tq, heads, d).transpose(1, 2)
    k = k.view(b, k.shape[1], heads, d).transpose(1, 2)
    v = v.view(b, v.shape[1], heads, d).transpose(1, 2)
    out = F.scaled_dot_product_attention(q, k, v)
    return out.transpose(1, 2).reshape(b, tq, c).to(dtype)
