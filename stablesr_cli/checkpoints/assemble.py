"""Build networks from state dicts: on the meta device, then a strict load with assign=True."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from ..errors import CheckpointMismatchError
from ..models.layout import prepare_for_inference

_SHOW = 10


def load_strict(module: nn.Module, sd: Mapping[str, torch.Tensor], what: str, *, assign: bool = True) -> nn.Module:
    """Load `sd` into `module`, failing loudly on any missing, unexpected or mis-shaped key.

    With assign=True (the default) a module built on the meta device takes the tensors as they are
    (no copy, no random init cost); floating tensors are cast to the module's parameter dtype first.
    """
    own = module.state_dict(keep_vars=True)
    missing = sorted(set(own) - set(sd))
    unexpected = sorted(set(sd) - set(own))
    misshaped = sorted(
        f"{k} {tuple(sd[k].shape)} (expected {tuple(own[k].shape)})"
        for k in set(own) & set(sd)
        if tuple(own[k].shape) != tuple(sd[k].shape)
    )
    if missing or unexpected or misshaped:
        parts = []
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", misshaped)):
            if keys:
                more = f" ... and {len(keys) - _SHOW} more" if len(keys) > _SHOW else ""
                parts.append(f"{len(keys)} {label}: {', '.join(keys[:_SHOW])}{more}")
        raise CheckpointMismatchError(f"{what}: weights do not fit the network; " + "; ".join(parts))
    cast = {}
    for k, v in sd.items():
        target = own[k]
        if v.is_floating_point() and target.is_floating_point() and v.dtype != target.dtype:
            v = v.to(target.dtype)
        cast[k] = v
    module.load_state_dict(cast, strict=True, assign=assign)
    return module


def _build(factory, sd: Mapping[str, torch.Tensor], what: str, device, dtype) -> nn.Module:
    with torch.device("meta"):
        module = factory().to(dtype)  # so weights are cast once, straight to the target dtype
    load_strict(module, sd, what)
    return prepare_for_inference(module.to(device=device, dtype=dtype).eval().requires_grad_(False))


def build_unet(sd: Mapping[str, torch.Tensor], *, num_head_channels: int = 64, device="cpu", dtype=torch.float32):
    """The UNet from its upstream state dict (with or without `model.diffusion_model.`)."""
    from ..models.unet import UNet
    from .detect import infer_unet_config
    from .keymap import COMPONENT_PREFIXES, resblocks_to_ours, strip_prefix

    cfg = infer_unet_config(sd, num_head_channels=num_head_channels)
    ours = resblocks_to_ours(strip_prefix(sd, COMPONENT_PREFIXES["unet"]))
    return _build(lambda: UNet(cfg), ours, "UNet", device, dtype)


def build_time_encoder(sd: Mapping[str, torch.Tensor], *, num_heads: int = 4, device="cpu", dtype=torch.float32):
    """The time-aware encoder from its upstream state dict (with or without `structcond_stage_model.`)."""
    from ..models.time_encoder import TimeAwareEncoder
    from .detect import infer_time_encoder_config
    from .keymap import COMPONENT_PREFIXES, resblocks_to_ours, strip_prefix

    cfg = infer_time_encoder_config(sd, num_heads=num_heads)
    ours = resblocks_to_ours(strip_prefix(sd, COMPONENT_PREFIXES["time_encoder"]))
    return _build(lambda: TimeAwareEncoder(cfg), ours, "time-aware encoder", device, dtype)


def build_autoencoder(sd: Mapping[str, torch.Tensor], what: str = "autoencoder", *, device="cpu", dtype=torch.float32):
    """The SD VAE or the CFW autoencoder (fusion layers detected from the keys), with or without
    `first_stage_model.`; a CFW checkpoint's training-only `loss.*` keys are dropped."""
    from ..models.autoencoder import Autoencoder
    from .detect_autoencoder import infer_autoencoder_config, split_autoencoder

    own = split_autoencoder(sd)
    cfg = infer_autoencoder_config(own)
    return _build(lambda: Autoencoder(cfg), own, what, device, dtype)


def build_text_encoder(sd: Mapping[str, torch.Tensor], *, heads: int | None = None, device="cpu", dtype=torch.float32):
    """The OpenCLIP text tower from its upstream state dict (with or without `cond_stage_model.model.`)."""
    from ..models.text_encoder import TextEncoder
    from .detect_text import infer_text_encoder_config
    from .keymap import COMPONENT_PREFIXES, strip_prefix

    cfg = infer_text_encoder_config(sd, heads=heads)
    ours = strip_prefix(sd, COMPONENT_PREFIXES["text_encoder"])
    return _build(lambda: TextEncoder(cfg), ours, "text encoder", device, dtype)


def empty_prompt_context(text_sd: Mapping[str, torch.Tensor], *, heads: int | None = None) -> torch.Tensor:
    """The cross-attention context of the empty prompt [1, 77, width], which every upstream DDPM script
    uses; computed once at conversion so that upscaling needs no text tower."""
    from ..models.text_encoder import empty_prompt_tokens

    encoder = build_text_encoder(text_sd, heads=heads)
    with torch.no_grad():
        return encoder(empty_prompt_tokens(1)).contiguous()
