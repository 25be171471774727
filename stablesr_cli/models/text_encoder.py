"""OpenCLIP's text tower as StableSR uses it: the cross-attention context from layer "penultimate".

Upstream `FrozenOpenCLIPEmbedder`: `x = token_embedding(ids) + positional_embedding`, every block but the last
(pre-LN, causal self-attention, exact-GELU MLP), then `ln_final` on all positions. No pooling, no
projection. Parameter names are those of the official checkpoint under `cond_stage_model.model.`,
so `load_strict` takes that component's tensors as they are; `text_projection` and `logit_scale`
are kept only for that reason (StableSR never reads them).

The module holds no buffers (the causal mask is `is_causal=True`), so it can be built on the meta
device and filled by `load_strict(..., assign=True)` without ever allocating random weights.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .tokenizer import CONTEXT_LENGTH, END_OF_TEXT, PADDING, START_OF_TEXT, VOCAB_SIZE

# The token ids of the empty prompt "", the conditioning of every DDPM script.
EMPTY_PROMPT_TOKENS: tuple[int, ...] = (START_OF_TEXT, END_OF_TEXT) + (PADDING,) * (CONTEXT_LENGTH - 2)

# "penultimate": upstream stops `len(resblocks) - 1` blocks in; the last block is loaded, never run.
_BLOCKS_SKIPPED_AT_THE_END = 1
_LAYER_NORM_EPS = 1e-5


@dataclass(frozen=True)
class TextEncoderConfig:
    """Shape of an OpenCLIP text tower; the defaults are ViT-H/14's (StableSR, SD 2.x)."""

    vocab_size: int = VOCAB_SIZE
    context_length: int = CONTEXT_LENGTH
    width: int = 1024
    layers: int = 24
    heads: int = 16
    mlp_ratio: float = 4.0
    embed_dim: int = 1024
    """Output size of `text_projection` (unused by StableSR; needed so its checkpoint tensor fits)."""

    def __post_init__(self) -> None:
        for name in ("vocab_size", "context_length", "width", "layers", "heads", "embed_dim"):
            if getattr(self, name) < 1:
                raise ValueError(f"TextEncoderConfig.{name} must be positive, got {getattr(self, name)}")
        if self.width % self.heads:
            raise ValueError(f"width {self.width} is not divisible by {self.heads} heads")
        if self.mlp_width < 1:
            raise ValueError(f"mlp_ratio {self.mlp_ratio} gives no MLP units at width {self.width}")

    @property
    def mlp_width(self) -> int:
        # round, not int: a ratio read back from shapes (hidden / width) may land a hair below
        return round(self.width * self.mlp_ratio)


class LayerNorm(nn.LayerNorm):
    """LayerNorm whose result has the input's dtype (open_clip's, which matters under autocast)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps).to(x.dtype)


class CausalSelfAttention(nn.Module):
    """`nn.MultiheadAttention`'s parameters (packed q/k/v projection) with a causal mask built in."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        # rows [0:W] project to q, [W:2W] to k, [2W:3W] to v
        self.in_proj_weight = nn.Parameter(torch.empty(3 * width, width))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * width))
        self.out_proj = nn.Linear(width, width)
        nn.init.xavier_uniform_(self.in_proj_weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, width = x.shape
        qkv = F.linear(x, self.in_proj_weight, self.in_proj_bias)
        # [B, T, 3W] -> 3 x [B, heads, T, head_dim]
        q, k, v = qkv.view(batch, length, 3, self.heads, width // self.heads).permute(2, 0, 3, 1, 4)
        # scale 1/sqrt(head_dim), as upstream; is_causal = its additive -inf-above-diagonal mask
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.out_proj(y.transpose(1, 2).reshape(batch, length, width))


class Mlp(nn.Module):
    def __init__(self, width: int, hidden: int) -> None:
        super().__init__()
        self.c_fc = nn.Linear(width, hidden)
        self.c_proj = nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # exact (erf) GELU: ViT-H/14 does not use CLIP's QuickGELU
        return self.c_proj(F.gelu(self.c_fc(x)))


class ResidualAttentionBlock(nn.Module):
    """Pre-LN transformer block: `x + attn(ln_1(x))`, then `x + mlp(ln_2(x))`."""

    def __init__(self, config: TextEncoderConfig) -> None:
        super().__init__()
        self.ln_1 = LayerNorm(config.width, eps=_LAYER_NORM_EPS)
        self.attn = CausalSelfAttention(config.width, config.heads)
        self.ln_2 = LayerNorm(config.width, eps=_LAYER_NORM_EPS)
        self.mlp = Mlp(config.width, config.mlp_width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    """Holds the blocks under `resblocks` (the checkpoint's `transformer.resblocks.<i>.`)."""

    def __init__(self, config: TextEncoderConfig) -> None:
        super().__init__()
        self.resblocks = nn.ModuleList(ResidualAttentionBlock(config) for _ in range(config.layers))


class TextEncoder(nn.Module):
    """Token ids [B, T<=context_length] -> penultimate-layer context [B, T, width]."""

    def __init__(self, config: TextEncoderConfig = TextEncoderConfig()) -> None:
        super().__init__()
        self.config = config
        # Registration order reproduces the checkpoint's state_dict order: own parameters first
        # (positional_embedding, text_projection, logit_scale), then transformer, token_embedding, ln_final.
        self.positional_embedding = nn.Parameter(torch.empty(config.context_length, config.width))
        self.text_projection = nn.Parameter(torch.empty(config.width, config.embed_dim))
        self.logit_scale = nn.Parameter(torch.empty(()))
        self.transformer = Transformer(config)
        self.token_embedding = nn.Embedding(config.vocab_size, config.width)
        self.ln_final = LayerNorm(config.width, eps=_LAYER_NORM_EPS)
        # Random values for tests and tiny builds; on the meta device these are no-ops.
        nn.init.normal_(self.positional_embedding, std=0.01)
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.text_projection, std=config.width**-0.5)
        nn.init.constant_(self.logit_scale, 2.6592)  # ln(1/0.07), CLIP's starting temperature

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        if tokens.dim() != 2 or tokens.shape[1] > self.config.context_length:
            raise ValueError(
                f"tokens must be [batch, <= {self.config.context_length}] ids, got shape {tuple(tokens.shape)}"
            )
        x = self.token_embedding(tokens) + self.positional_embedding[: tokens.shape[1]]
        blocks = self.transformer.resblocks
        for block in blocks[: len(blocks) - _BLOCKS_SKIPPED_AT_THE_END]:
            x = block(x)
        return self.ln_final(x)


def empty_prompt_tokens(batch: int = 1, device: torch.device | str | None = None) -> torch.Tensor:
    """LongTensor [batch, 77] of the empty prompt's ids: [49406, 49407, 0 x 75] on every row."""
    row = torch.tensor(EMPTY_PROMPT_TOKENS, dtype=torch.long, device=device)
    return row.expand(batch, -1).clone()
