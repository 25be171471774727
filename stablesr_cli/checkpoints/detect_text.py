"""Read an OpenCLIP text tower's shape from its state dict (key names and tensor shapes only)."""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch

from ..errors import CheckpointError
from ..models.text_encoder import TextEncoderConfig
from .keymap import COMPONENT_PREFIXES, strip_prefix

# open_clip's text towers use 64-wide heads (ViT-H/14: 1024 / 64 = 16); the head count is not
# visible in any shape because q, k, v of all heads are packed into one matrix.
OPEN_CLIP_HEAD_WIDTH = 64

_REQUIRED = (
    "token_embedding.weight",
    "positional_embedding",
    "text_projection",
    "transformer.resblocks.0.mlp.c_fc.weight",
)
_BLOCK = re.compile(r"^transformer\.resblocks\.(\d+)\.")


def infer_text_encoder_config(sd: Mapping[str, torch.Tensor], *, heads: int | None = None) -> TextEncoderConfig:
    """The config whose `TextEncoder` has exactly these tensors.

    `sd` may be the text tower alone or carry the checkpoint's `cond_stage_model.model.` prefix (then
    every other component is ignored). `heads` defaults to `width // 64`, open_clip's head width.
    """
    sd = strip_prefix(sd, COMPONENT_PREFIXES["text_encoder"])
    missing = [key for key in _REQUIRED if key not in sd]
    if missing:
        raise CheckpointError(f"not an OpenCLIP text tower: no {', '.join(missing)}")

    vocab_size, width = sd["token_embedding.weight"].shape
    context_length = sd["positional_embedding"].shape[0]
    embed_dim = sd["text_projection"].shape[1]
    mlp_width = sd["transformer.resblocks.0.mlp.c_fc.weight"].shape[0]

    block_indices = {int(m.group(1)) for key in sd if (m := _BLOCK.match(key))}
    layers = len(block_indices)
    if block_indices != set(range(layers)):
        gaps = sorted(set(range(max(block_indices) + 1)) - block_indices)
        raise CheckpointError(f"OpenCLIP text tower: transformer.resblocks {gaps} missing between 0 and {max(block_indices)}")

    if heads is None:
        if width % OPEN_CLIP_HEAD_WIDTH:
            raise CheckpointError(
                f"OpenCLIP text tower of width {width}: not a multiple of {OPEN_CLIP_HEAD_WIDTH}, "
                "so the head count cannot be assumed; pass heads explicitly"
            )
        heads = width // OPEN_CLIP_HEAD_WIDTH
    try:
        return TextEncoderConfig(
            vocab_size=vocab_size,
            context_length=context_length,
            width=width,
            layers=layers,
            heads=heads,
            mlp_ratio=mlp_width / width,
            embed_dim=embed_dim,
        )
    except ValueError as err:
        raise CheckpointError(f"OpenCLIP text tower: {err}") from err
