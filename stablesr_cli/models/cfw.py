"""Controllable Feature Wrapping (CFW): the fusion layers StableSR adds to the SD VAE decoder.

A fusion layer mixes an encoder feature of the low-resolution input into the decoder feature of the
same level and returns `dec + w * e`. Submodule names equal upstream's `Fuse_sft_block_RRDB`
(`encode_enc_1`, `encode_enc_2.<k>.rdb<n>.conv<m>`, `encode_enc_3`) so checkpoints load unchanged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .vae_blocks import ResnetBlock

RRDB_GROWTH_CHANNELS = 32  # upstream `num_grow_ch`
RRDB_RESIDUAL_SCALE = 0.2  # ESRGAN's residual scaling, applied per dense block and per RRDB
RRDB_LEAKY_SLOPE = 0.2

class FusionResBlock(ResnetBlock):
    """Upstream's `ResBlock` of the fusion layers: the VAE block with its skip conv named `conv_out`."""

    SHORTCUT = "conv_out"


class ResidualDenseBlock(nn.Module):
    """Five densely connected 3x3 convs; conv k sees the input plus every earlier growth output."""

    def __init__(self, channels: int, growth: int = RRDB_GROWTH_CHANNELS):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, growth, 3, padding=1)
        self.conv2 = nn.Conv2d(channels + growth, growth, 3, padding=1)
        self.conv3 = nn.Conv2d(channels + 2 * growth, growth, 3, padding=1)
        self.conv4 = nn.Conv2d(channels + 3 * growth, growth, 3, padding=1)
        self.conv5 = nn.Conv2d(channels + 4 * growth, channels, 3, padding=1)

    @property
    def convs(self) -> tuple[nn.Conv2d, ...]:
        return (self.conv1, self.conv2, self.conv3, self.conv4, self.conv5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = [x]
        for conv in self.convs[:-1]:
            features.append(F.leaky_relu(conv(torch.cat(features, dim=1)), RRDB_LEAKY_SLOPE))
        return x + RRDB_RESIDUAL_SCALE * self.conv5(torch.cat(features, dim=1))


class RRDB(nn.Module):
    """Residual-in-residual dense block (ESRGAN): three dense blocks, scaled residual around them."""

    def __init__(self, channels: int, growth: int = RRDB_GROWTH_CHANNELS):
        super().__init__()
        self.rdb1 = ResidualDenseBlock(channels, growth)
        self.rdb2 = ResidualDenseBlock(channels, growth)
        self.rdb3 = ResidualDenseBlock(channels, growth)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + RRDB_RESIDUAL_SCALE * self.rdb3(self.rdb2(self.rdb1(x)))


class FusionLayer(nn.Module):
    """Upstream `Fuse_sft_block_RRDB`: e = ResBlock(2C->C) -> RRDB x n -> ResBlock(C->C); returns dec + w*e."""

    def __init__(self, channels: int, num_blocks: int):
        super().__init__()
        self.encode_enc_1 = FusionResBlock(2 * channels, channels)
        self.encode_enc_2 = nn.Sequential(*(RRDB(channels) for _ in range(num_blocks)))
        self.encode_enc_3 = FusionResBlock(channels, channels)

    def residual(self, enc_feature: torch.Tensor, dec_feature: torch.Tensor) -> torch.Tensor:
        # encoder feature FIRST in the concatenation, as upstream (the weights depend on the order)
        e = self.encode_enc_1(torch.cat([enc_feature, dec_feature], dim=1))
        return self.encode_enc_3(self.encode_enc_2(e))

    def forward(self, enc_feature: torch.Tensor, dec_feature: torch.Tensor, w: float) -> torch.Tensor:
        return dec_feature + w * self.residual(enc_feature, dec_feature)
