"""The time-aware encoder of the low-resolution latent (upstream `EncoderUNetModelWT` in `openaimodel.py`).

It returns one feature map per UNet level (a list indexed by level, where upstream returns a dict
keyed by the map's width); the UNet's SFT layers consume them at every sampling step.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import ResBlock, Stage
from .layers import Downsample, GroupNorm32, timestep_embedding
from .layout import to_compute_layout, uses_channels_last


@dataclass(frozen=True)
class TimeEncoderConfig:
    in_channels: int = 4
    model_channels: int = 256
    out_channels: int = 256
    channel_mult: tuple[int, ...] = (1, 1, 2, 2)
    num_res_blocks: int = 2
    attention_resolutions: tuple[int, ...] = (4, 2, 1)
    num_heads: int = 4
    """Attention heads (upstream `num_heads`); not recoverable from weight shapes."""

    @property
    def time_embed_dim(self) -> int:
        return 4 * self.model_channels


class LegacyAttention(nn.Module):
    """Self-attention over h*w tokens with upstream's legacy qkv layout (`QKVAttentionLegacy` in `openaimodel.py`).

    The 3C channels of `qkv` (a 1x1 Conv1d) are grouped per head as [q_h, k_h, v_h] for h = 0..H-1,
    NOT as [Q; K; V] like torch's MultiheadAttention.
    """

    takes_context = False

    def __init__(self, channels: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm = GroupNorm32(channels)
        self.qkv = nn.Conv1d(channels, channels * 3, 1)
        self.proj_out = nn.Conv1d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if uses_channels_last(x.dtype) and x.ndim == 4:
            return self._forward_tokens_last(x)
        b, c, *spatial = x.shape
        tokens = x.reshape(b, c, -1)  # [B, C, T]
        qkv = self.qkv(self.norm(tokens))  # [B, 3C, T]
        d = c // self.heads
        q, k, v = qkv.reshape(b, self.heads, 3 * d, -1).split(d, dim=2)  # each [B, H, d, T]
        dtype = q.dtype
        if dtype == torch.float16:  # upstream softmaxes in float32
            q, k, v = q.float(), k.float(), v.float()
        # float32 keeps this path and its exact numbers: the transposed inputs have a strided last
        # dimension, so CPU SDPA runs its reference (math) kernel here
        out = F.scaled_dot_product_attention(q.transpose(-1, -2), k.transpose(-1, -2), v.transpose(-1, -2))
        out = out.transpose(-1, -2).reshape(b, c, -1).to(dtype)  # [B, C, T]
        return (tokens + self.proj_out(out)).reshape(b, c, *spatial)

    def _forward_tokens_last(self, x: torch.Tensor) -> torch.Tensor:
        """The same attention on channels_last [B, C, h, w] input, with tokens as [B, T, C] views.

        The 1x1 Conv1d projections become matmuls on the token rows, and q, k, v come out as
        [B, H, T, d] views with unit stride in d, which the fused SDPA kernel takes without a copy
        (it accumulates in float32; bf16 needs no upcast, float16 gets one as above).
        """
        b, c, height, width = x.shape
        d = c // self.heads
        tokens = self.norm(x).permute(0, 2, 3, 1).reshape(b, height * width, c)  # a view
        qkv = F.linear(tokens, self.qkv.weight.squeeze(-1), self.qkv.bias)  # [B, T, 3C], per head [q_h, k_h, v_h]
        q, k, v = qkv.view(b, -1, self.heads, 3 * d).transpose(1, 2).split(d, dim=-1)  # each [B, H, T, d]
        dtype = q.dtype
        if dtype == torch.float16:
            q, k, v = q.float(), k.float(), v.float()
        out = F.scaled_dot_product_attention(q, k, v).to(dtype)  # [B, H, T, d]
        out = F.linear(out.transpose(1, 2).reshape(b, -1, c), self.proj_out.weight.squeeze(-1), self.proj_out.bias)
        return x + out.view(b, height, width, c).permute(0, 3, 1, 2)  # channels_last, like x


class TimeAwareEncoder(nn.Module):
    def __init__(self, cfg: TimeEncoderConfig) -> None:
        super().__init__()
        self.config = cfg
        mc, emb_dim = cfg.model_channels, cfg.time_embed_dim
        self.time_embed = nn.Sequential(nn.Linear(mc, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.input_blocks = nn.ModuleList([Stage([nn.Conv2d(cfg.in_channels, mc, 3, padding=1)])])
        # indices of the blocks whose OUTPUT is kept: the last block of every level but the deepest
        # (the features just before each downsampler)
        self.tapped_blocks: list[int] = []
        level_channels: list[int] = []
        ch, last = mc, len(cfg.channel_mult) - 1
        for level, mult in enumerate(cfg.channel_mult):
            for _ in range(cfg.num_res_blocks):
                layers: list[nn.Module] = [ResBlock(ch, mult * mc, emb_dim)]
                ch = mult * mc
                if 2**level in cfg.attention_resolutions:
                    layers.append(LegacyAttention(ch, cfg.num_heads))
                self.input_blocks.append(Stage(layers))
            if level != last:
                self.tapped_blocks.append(len(self.input_blocks) - 1)
                level_channels.append(ch)
                self.input_blocks.append(Stage([Downsample(ch)]))
        self.middle_block = Stage(
            [ResBlock(ch, ch, emb_dim), LegacyAttention(ch, cfg.num_heads), ResBlock(ch, ch, emb_dim)]
        )
        level_channels.append(ch)
        self.fea_tran = nn.ModuleList(ResBlock(c, cfg.out_channels, emb_dim) for c in level_channels)

    def forward(self, z_lq: torch.Tensor, t: torch.Tensor) -> list[torch.Tensor]:
        """z_lq [B,4,h,w] scaled LR latent, t [B] the UNet's (original) timestep -> one map per level."""
        emb = self.time_embed(timestep_embedding(t, self.config.model_channels).to(z_lq.dtype))
        kept: list[torch.Tensor] = []
        h = to_compute_layout(z_lq)
        for index, stage in enumerate(self.input_blocks):
            h = stage(h, emb)
            if index in self.tapped_blocks:
                kept.append(h)
        kept.append(self.middle_block(h, emb))
        return [tran(feature, emb) for tran, feature in zip(self.fea_tran, kept)]
