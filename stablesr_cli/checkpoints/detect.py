"""Network configs from key names and tensor shapes (the spandrel / ComfyUI model-detection idea).

Every function reads UPSTREAM key names (prefix optional) and returns a config dataclass; what shapes
cannot tell (attention head width or count, eps/v) comes in as an argument with the SD 2.x default.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch

from ..errors import CheckpointError
from ..models.time_encoder import TimeEncoderConfig
from ..models.unet import UNetConfig
from .keymap import COMPONENT_PREFIXES, strip_prefix


def count_numbered(keys: list[str] | set[str], prefix: str) -> int:
    """How many numbered children `prefix{N}.` exist, e.g. count_numbered(keys, "input_blocks.") -> 12."""
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    found = {int(m.group(1)) for k in keys if (m := pattern.match(k))}
    return max(found) + 1 if found else 0


def _shape(sd: Mapping[str, torch.Tensor], key: str, what: str) -> tuple[int, ...]:
    if key not in sd:
        raise CheckpointError(f"{what}: expected key {key!r} is missing; not a StableSR {what} state dict?")
    return tuple(sd[key].shape)


def _levels(sd: Mapping[str, torch.Tensor], what: str, has_attention: str) -> tuple[list[int], int, list[int]]:
    """Walk `input_blocks` and return (per-level output channels, res blocks per level, levels with attention).

    Block 0 is the input conv; a block with `0.op.weight` is a downsampler that closes a level.
    """
    keys = set(sd)
    n_blocks = count_numbered(keys, "input_blocks.")
    if n_blocks < 2:
        raise CheckpointError(f"{what}: no input_blocks found")
    channels: list[int] = []
    blocks_per_level: list[int] = [0]
    attention_levels: list[int] = []
    level_out = 0
    for n in range(1, n_blocks):
        if f"input_blocks.{n}.0.op.weight" in keys:
            channels.append(level_out)
            blocks_per_level.append(0)
            continue
        level_out = _shape(sd, f"input_blocks.{n}.0.out_layers.3.weight", what)[0]
        blocks_per_level[-1] += 1
        if f"input_blocks.{n}.1.{has_attention}" in keys and len(blocks_per_level) - 1 not in attention_levels:
            attention_levels.append(len(blocks_per_level) - 1)
    channels.append(level_out)
    if len(set(blocks_per_level)) != 1:
        raise CheckpointError(f"{what}: levels have different numbers of residual blocks {blocks_per_level}")
    return channels, blocks_per_level[0], attention_levels


def infer_unet_config(sd: Mapping[str, torch.Tensor], *, num_head_channels: int = 64) -> UNetConfig:
    """UNet config from `model.diffusion_model.*` keys (prefix optional).

    Example keys read: `input_blocks.0.0.weight` [320,4,3,3] -> model/in channels;
    `input_blocks.{n}.0.out_layers.3.weight` [C,...] -> channel_mult; `...attn2.to_k.weight` [C,1024]
    -> context_dim; `...spade.mlp_shared.0.weight` [128,256,3,3] -> SFT hidden/in channels.
    """
    what = "UNet"
    sd = strip_prefix(sd, COMPONENT_PREFIXES["unet"])
    mc, in_ch = _shape(sd, "input_blocks.0.0.weight", what)[:2]
    channels, num_res, attn_levels = _levels(sd, what, "proj_in.weight")
    if any(c % mc for c in channels):
        raise CheckpointError(f"{what}: level channels {channels} are not multiples of {mc}")
    odd = [c for c in channels if c % num_head_channels]
    if odd:
        raise CheckpointError(
            f"{what}: channels {odd} are not multiples of the attention head width {num_head_channels} "
            "(SD 2.x uses 64); a non-standard model needs its head width recorded at conversion "
            "(`stablesr weights convert --unet-head-channels N`)"
        )
    st = "middle_block.1."
    proj_in = _shape(sd, st + "proj_in.weight", what)
    if len(proj_in) != 2:
        raise CheckpointError(f"{what}: convolutional transformer projections are not supported (SD 1.x layout?)")
    shared = _shape(sd, "middle_block.0.spade.mlp_shared.0.weight", what)
    return UNetConfig(
        in_channels=in_ch,
        out_channels=_shape(sd, "out.2.weight", what)[0],
        model_channels=mc,
        channel_mult=tuple(c // mc for c in channels),
        num_res_blocks=num_res,
        attention_resolutions=tuple(sorted((2**level for level in attn_levels), reverse=True)),
        num_head_channels=num_head_channels,
        context_dim=_shape(sd, st + "transformer_blocks.0.attn2.to_k.weight", what)[1],
        transformer_depth=count_numbered(set(sd), st + "transformer_blocks."),
        sft_in_channels=shared[1],
        sft_hidden=shared[0],
    )


def infer_time_encoder_config(sd: Mapping[str, torch.Tensor], *, num_heads: int = 4) -> TimeEncoderConfig:
    """Time-aware encoder config from `structcond_stage_model.*` keys (prefix optional).

    Example keys read: `input_blocks.0.0.weight` [256,4,3,3]; `input_blocks.{n}.1.qkv.weight`
    (attention present at that level); `fea_tran.0.out_layers.3.weight` [256,...] -> out channels.
    """
    what = "time-aware encoder"
    sd = strip_prefix(sd, COMPONENT_PREFIXES["time_encoder"])
    mc, in_ch = _shape(sd, "input_blocks.0.0.weight", what)[:2]
    channels, num_res, attn_levels = _levels(sd, what, "qkv.weight")
    odd = sorted({channels[level] for level in attn_levels if channels[level] % num_heads})
    if odd:
        raise CheckpointError(f"{what}: attention channels {odd} do not split into {num_heads} heads (num_heads)")
    return TimeEncoderConfig(
        in_channels=in_ch,
        model_channels=mc,
        out_channels=_shape(sd, "fea_tran.0.out_layers.3.weight", what)[0],
        channel_mult=tuple(c // mc for c in channels),
        num_res_blocks=num_res,
        attention_resolutions=tuple(sorted((2**level for level in attn_levels), reverse=True)),
        num_heads=num_heads,
    )
