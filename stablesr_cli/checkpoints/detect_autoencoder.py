"""Autoencoder hyperparameters from a state dict's key names and shapes (no config files).

Accepts the standalone CFW checkpoint (unprefixed keys, training-only `loss.*` keys) and the VAE inside
a diffusion checkpoint (`first_stage_model.*`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch

from ..errors import CheckpointError
from ..models.autoencoder import AutoencoderConfig
from .keymap import COMPONENT_PREFIXES, IGNORED_PREFIXES, StateDict, strip_prefix

_REQUIRED = (
    "encoder.conv_in.weight",
    "encoder.conv_out.weight",
    "quant_conv.weight",
    "post_quant_conv.weight",
    "decoder.conv_in.weight",
    "decoder.conv_out.weight",
)
# StableSR's VAE has attention only in the mid blocks (`attn_resolutions: []`)
_LEVEL_ATTENTION = re.compile(r"^(encoder\.down|decoder\.up)\.(\d+)\.attn\.")


def split_autoencoder(sd: Mapping[str, torch.Tensor]) -> StateDict:
    """The autoencoder's keys with any `first_stage_model.` prefix removed and training-only keys dropped."""
    own = strip_prefix(sd, COMPONENT_PREFIXES["vae"])
    return {k: v for k, v in own.items() if not k.startswith(IGNORED_PREFIXES)}


def _count_children(keys: set[str], head: str) -> int:
    """Number of consecutive numbered children `head{0}.`, `head{1}.`, ... present among `keys`."""
    n = 0
    while any(k.startswith(f"{head}{n}.") for k in keys):
        n += 1
    return n


def infer_autoencoder_config(sd: Mapping[str, torch.Tensor]) -> AutoencoderConfig:
    sd = split_autoencoder(sd)
    keys = set(sd)
    missing = [k for k in _REQUIRED if k not in keys]
    if missing:
        raise CheckpointError(f"not an SD/StableSR autoencoder state dict: missing {', '.join(missing)}")
    attention = sorted({f"{m.group(1)}.{m.group(2)}" for k in keys if (m := _LEVEL_ATTENTION.match(k))})
    if attention:
        raise CheckpointError(
            f"autoencoder has attention outside the mid block ({', '.join(attention)}); "
            "only StableSR's layout (attention in the mid block only) is supported"
        )

    conv_in = sd["encoder.conv_in.weight"]
    base_channels, in_channels = int(conv_in.shape[0]), int(conv_in.shape[1])
    num_levels = _count_children(keys, "encoder.down.")
    num_res_blocks = _count_children(keys, "encoder.down.0.block.")
    if num_levels == 0 or num_res_blocks == 0:
        raise CheckpointError("autoencoder state dict has no encoder.down.<i>.block.<j> keys")
    channel_mult = []
    for level in range(num_levels):
        key = f"encoder.down.{level}.block.{num_res_blocks - 1}.conv2.weight"
        if key not in sd:
            raise CheckpointError(f"autoencoder state dict lacks {key} (levels must have equal block counts)")
        width = int(sd[key].shape[0])
        if width % base_channels:
            raise CheckpointError(f"{key}: width {width} is not a multiple of the base width {base_channels}")
        channel_mult.append(width // base_channels)
    decoder_blocks = _count_children(keys, "decoder.up.0.block.")
    if decoder_blocks != num_res_blocks + 1:
        raise CheckpointError(
            f"decoder has {decoder_blocks} blocks per level, expected {num_res_blocks + 1} "
            f"(encoder has {num_res_blocks})"
        )

    z_channels = int(sd["decoder.conv_in.weight"].shape[1])
    if int(sd["encoder.conv_out.weight"].shape[0]) != 2 * z_channels:
        raise CheckpointError("encoder.conv_out must output mean and log-variance (2 x z_channels)")
    embed_dim = int(sd["post_quant_conv.weight"].shape[1])
    num_fuse_blocks = _count_children(keys, "decoder.fusion_layer_1.encode_enc_2.")
    if num_fuse_blocks == 0 and any(k.startswith("decoder.fusion_layer_") for k in keys):
        raise CheckpointError("CFW fusion layers present but decoder.fusion_layer_1.encode_enc_2.* is missing")
    try:
        return AutoencoderConfig(
            in_channels=in_channels,
            out_channels=int(sd["decoder.conv_out.weight"].shape[0]),
            base_channels=base_channels,
            channel_mult=tuple(channel_mult),
            num_res_blocks=num_res_blocks,
            z_channels=z_channels,
            embed_dim=embed_dim,
            num_fuse_blocks=num_fuse_blocks,
        )
    except ValueError as exc:
        raise CheckpointError(f"unsupported autoencoder layout: {exc}") from exc
