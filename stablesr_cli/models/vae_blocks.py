"""The residual block and norm shared by the VAE and the CFW fusion layers."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .cpu_packing import PackedConv2d

GROUPNORM_GROUPS = 32
GROUPNORM_EPS = 1e-6  # the VAE/CFW norm (not the UNet's 1e-5)


def vae_group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(GROUPNORM_GROUPS, channels, eps=GROUPNORM_EPS, affine=True)


class ResnetBlock(nn.Module):
    """norm-swish-conv twice plus a skip (a 1x1 conv when widths differ); no time embedding, no dropout.

    Upstream names the skip conv `nin_shortcut` in the VAE and `conv_out` in the CFW fusion layers;
    `SHORTCUT` keeps each checkpoint's key.
    """

    SHORTCUT = "nin_shortcut"

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.norm1 = vae_group_norm(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = vae_group_norm(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        setattr(self, self.SHORTCUT, nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else None)

    @property
    def shortcut(self) -> nn.Conv2d | None:
        return getattr(self, self.SHORTCUT)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # in-place SiLU on the norms' fresh outputs: same numbers, one full-size allocation less each
        h = self.conv1(F.silu(self.norm1(x), inplace=True))
        h = F.silu(self.norm2(h), inplace=True)
        if isinstance(self.conv2, PackedConv2d):  # bf16 on the CPU: the skip is summed in conv2's epilogue
            return self.conv2.plus(h, self.skip_of(x))
        h = self.conv2(h)  # before the skip exists: one full-size map fewer at the block's peak
        return self.skip_of(x) + h

    def skip_of(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.shortcut is None else self.shortcut(x)
