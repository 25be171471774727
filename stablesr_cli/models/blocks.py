"""The residual block and the block container shared by the UNet and the time-aware encoder."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .cpu_packing import PackedConv2d
from .layers import Downsample, GroupNorm32, Upsample
from .sft import SFTLayer


class ResBlock(nn.Module):
    """GN-SiLU-conv, + time embedding, GN-SiLU-conv, optional SFT, + skip (upstream ResBlock / ResBlockDual).

    With `sft_channels` the block is upstream's `ResBlockDual`: the SFT modulates the residual branch
    AFTER its second conv and before the skip add (upstream `ResBlockDual._forward` in `openaimodel.py`).
    """

    def __init__(self, in_ch: int, out_ch: int, emb_dim: int, sft_channels: int = 0, sft_hidden: int = 128) -> None:
        super().__init__()
        self.in_norm = GroupNorm32(in_ch)
        self.in_conv = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.time_proj = nn.Linear(emb_dim, out_ch)
        self.out_norm = GroupNorm32(out_ch)
        self.out_conv = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()
        self.sft = SFTLayer(out_ch, sft_channels, sft_hidden) if sft_channels else None

    def forward(self, x: torch.Tensor, emb: torch.Tensor, structure: torch.Tensor | None = None) -> torch.Tensor:
        # in place on fresh outputs (the norms', the conv's): same numbers, no full-size allocations
        h = self.in_conv(F.silu(self.in_norm(x), inplace=True))
        h += self.time_proj(F.silu(emb)).type(h.dtype)[:, :, None, None]
        h = self.out_conv(F.silu(self.out_norm(h), inplace=True))
        if self.sft is not None:
            if structure is None:
                raise ValueError("this residual block needs structure features from the time-aware encoder")
            h = self.sft(h, structure)
        return self.skip(x) + h


class Stage(nn.ModuleList):
    """One numbered block of `input_blocks` / `middle_block` / `output_blocks`: layers run in order,
    each given what it takes (upstream's TimestepEmbedSequential)."""

    def forward(  # type: ignore[override]
        self,
        h: torch.Tensor,
        emb: torch.Tensor,
        context: torch.Tensor | None = None,
        structure: torch.Tensor | None = None,
    ) -> torch.Tensor:
        for layer in self:
            if isinstance(layer, ResBlock):
                h = layer(h, emb, structure)
            elif isinstance(layer, (Downsample, Upsample, nn.Conv2d, PackedConv2d)):
                h = layer(h)
            else:  # attention: cross-attention transformer (UNet) or self-attention (encoder)
                h = layer(h, context) if getattr(layer, "takes_context", False) else layer(h)
        return h
