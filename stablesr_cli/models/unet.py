"""The SD 2.x UNet whose residual blocks take structure features (upstream `openaimodel.UNetModelDualcondV2`)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import ResBlock, Stage
from .cpu_packing import PackedGatedGELU, packing_available
from .layers import Downsample, GroupNorm32, Upsample, multi_head_attention, timestep_embedding
from .layout import to_compute_layout


@dataclass(frozen=True)
class UNetConfig:
    in_channels: int = 4
    out_channels: int = 4
    model_channels: int = 320
    channel_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    attention_resolutions: tuple[int, ...] = (4, 2, 1)
    """Downsampling factors (1 = full latent resolution) whose blocks carry a transformer."""
    num_head_channels: int = 64
    """Width of one attention head (SD 2.x: 64); not recoverable from weight shapes."""
    context_dim: int = 1024
    transformer_depth: int = 1
    sft_in_channels: int = 256
    """Channels of the time-aware encoder features fed to every SFT layer (upstream `semb_channels`)."""
    sft_hidden: int = 128

    @property
    def time_embed_dim(self) -> int:
        return 4 * self.model_channels

    @property
    def downscale(self) -> int:
        """Latent sides must be multiples of this for the skip concatenations to line up."""
        return 2 ** (len(self.channel_mult) - 1)


class CrossAttention(nn.Module):
    def __init__(self, dim: int, context_dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_k = nn.Linear(context_dim, dim, bias=False)
        self.to_v = nn.Linear(context_dim, dim, bias=False)
        self.to_out = nn.ModuleList([nn.Linear(dim, dim)])  # upstream: Sequential(Linear, Dropout)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        ctx = x if context is None else context
        out = multi_head_attention(self.to_q(x), self.to_k(ctx), self.to_v(ctx), self.heads)
        return self.to_out[0](out)


class GEGLU(nn.Module):
    def __init__(self, dim: int, inner: int) -> None:
        super().__init__()
        self.proj = nn.Linear(dim, inner * 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if isinstance(self.proj, PackedGatedGELU):  # CPU bf16: GELU and product fused into the projection
            return self.proj(x)
        value, gate = self.proj(x).chunk(2, dim=-1)  # first half value, second half gate (upstream `GEGLU`)
        return value * F.gelu(gate)

    def pack_for_cpu(self) -> None:
        if isinstance(self.proj, nn.Linear) and packing_available(self.proj.weight.device, self.proj.weight.dtype):
            self.proj = PackedGatedGELU(self.proj)


class FeedForward(nn.Module):
    def __init__(self, dim: int, mult: int = 4) -> None:
        super().__init__()
        # upstream keys: net.0 = GEGLU, net.1 = Dropout (no weights), net.2 = Linear
        self.net = nn.ModuleList([GEGLU(dim, dim * mult), nn.Identity(), nn.Linear(dim * mult, dim)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net[2](self.net[0](x))


class TransformerBlock(nn.Module):
    def __init__(self, dim: int, context_dim: int, heads: int) -> None:
        super().__init__()
        self.attn1 = CrossAttention(dim, dim, heads)
        self.ff = FeedForward(dim)
        self.attn2 = CrossAttention(dim, context_dim, heads)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.norm3 = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        x = x + self.attn1(self.norm1(x))
        x = x + self.attn2(self.norm2(x), context)
        return x + self.ff(self.norm3(x))


class SpatialTransformer(nn.Module):
    """GN -> flatten -> linear proj_in -> transformer blocks -> linear proj_out -> unflatten + residual."""

    takes_context = True

    def __init__(self, channels: int, heads: int, context_dim: int, depth: int) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(32, channels, eps=1e-6)
        self.proj_in = nn.Linear(channels, channels)
        self.transformer_blocks = nn.ModuleList(
            TransformerBlock(channels, context_dim, heads) for _ in range(depth)
        )
        self.proj_out = nn.Linear(channels, channels)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        # [B, h*w, C], row-major; a view when x is channels_last, and the way back below is one too
        tokens = self.norm(x).permute(0, 2, 3, 1).reshape(b, h * w, c)
        tokens = self.proj_in(tokens)
        for block in self.transformer_blocks:
            tokens = block(tokens, context)
        tokens = self.proj_out(tokens)
        return tokens.reshape(b, h, w, c).permute(0, 3, 1, 2) + x


class UNet(nn.Module):
    def __init__(self, cfg: UNetConfig) -> None:
        super().__init__()
        self.config = cfg
        mc, emb_dim = cfg.model_channels, cfg.time_embed_dim
        self.time_embed = nn.Sequential(nn.Linear(mc, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))

        def res(cin: int, cout: int) -> ResBlock:
            return ResBlock(cin, cout, emb_dim, cfg.sft_in_channels, cfg.sft_hidden)

        def attn(ch: int) -> SpatialTransformer:
            return SpatialTransformer(ch, ch // cfg.num_head_channels, cfg.context_dim, cfg.transformer_depth)

        # Each stage remembers its level (number of downsamplings before it), which selects the
        # structure feature map its SFT layers use (upstream selects by the feature map's width).
        self.input_blocks = nn.ModuleList([Stage([nn.Conv2d(cfg.in_channels, mc, 3, padding=1)])])
        self.input_levels: list[int] = [0]
        skip_channels = [mc]
        ch, last = mc, len(cfg.channel_mult) - 1
        for level, mult in enumerate(cfg.channel_mult):
            for _ in range(cfg.num_res_blocks):
                layers: list[nn.Module] = [res(ch, mult * mc)]
                ch = mult * mc
                if 2**level in cfg.attention_resolutions:
                    layers.append(attn(ch))
                self.input_blocks.append(Stage(layers))
                self.input_levels.append(level)
                skip_channels.append(ch)
            if level != last:
                self.input_blocks.append(Stage([Downsample(ch)]))
                self.input_levels.append(level)
                skip_channels.append(ch)
        self.middle_block = Stage([res(ch, ch), attn(ch), res(ch, ch)])
        self.output_blocks = nn.ModuleList()
        self.output_levels: list[int] = []
        for level, mult in reversed(list(enumerate(cfg.channel_mult))):
            for i in range(cfg.num_res_blocks + 1):
                layers = [res(ch + skip_channels.pop(), mult * mc)]
                ch = mult * mc
                if 2**level in cfg.attention_resolutions:
                    layers.append(attn(ch))
                if level and i == cfg.num_res_blocks:
                    layers.append(Upsample(ch))
                self.output_blocks.append(Stage(layers))
                self.output_levels.append(level)
        self.out = nn.Sequential(GroupNorm32(ch), nn.SiLU(), nn.Conv2d(mc, cfg.out_channels, 3, padding=1))

    def forward(
        self, z_t: torch.Tensor, t: torch.Tensor, context: torch.Tensor, structure: list[torch.Tensor]
    ) -> torch.Tensor:
        """z_t [B,4,h,w], t [B] original timesteps, context [B,L,context_dim],
        structure: one [B,sft_in,·,·] map per level from the time-aware encoder -> eps or v [B,4,h,w]."""
        emb = self.time_embed(timestep_embedding(t, self.config.model_channels).to(z_t.dtype))
        h, skips = to_compute_layout(z_t), []
        for stage, level in zip(self.input_blocks, self.input_levels):
            h = stage(h, emb, context, structure[level])
            skips.append(h)
        h = self.middle_block(h, emb, context, structure[-1])
        for stage, level in zip(self.output_blocks, self.output_levels):
            h = stage(torch.cat([h, skips.pop()], dim=1), emb, context, structure[level])  # [current, skip]
        return self.out(h)
