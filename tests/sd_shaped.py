"""A tiny diffusion checkpoint whose hidden hyperparameters are SD 2.x's own.

Two numbers cannot be read from any tensor shape: the UNet's attention head width (64 in SD 2.x)
and the text tower's head count (width // 64). The golden-weight tiny checkpoint uses other values,
so it needs them recorded at conversion; this one does not, so it goes through the whole
first-use path (download, convert, upscale) exactly as an official file does.
"""

from __future__ import annotations

from pathlib import Path

import torch

from stablesr_cli.checkpoints.keymap import COMPONENT_PREFIXES, resblocks_to_upstream
from stablesr_cli.models.text_encoder import TextEncoder, TextEncoderConfig
from stablesr_cli.models.unet import UNet, UNetConfig
from tiny_checkpoints import golden_weights, schedule_buffers, write_lightning_ckpt

WIDTH = 64  # UNet model channels, context width and text width: one 64-wide head at level 0


def _random(module: torch.nn.Module, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name, p in module.state_dict().items():
        if p.ndim >= 2:
            out[name] = torch.randn(p.shape, generator=g) / p[0].numel() ** 0.5
        else:
            out[name] = (1.0 if name.endswith("weight") else 0.0) + 0.1 * torch.randn(p.shape, generator=g)
    return out


def sd_shaped_sr_state_dict() -> dict[str, torch.Tensor]:
    unet_cfg = UNetConfig(model_channels=WIDTH, channel_mult=(1, 2), num_res_blocks=1, attention_resolutions=(1,),
                          context_dim=WIDTH, sft_in_channels=32)
    text_cfg = TextEncoderConfig(width=WIDTH, layers=2, heads=WIDTH // 64, embed_dim=WIDTH)
    sd = {COMPONENT_PREFIXES["unet"] + k: v for k, v in resblocks_to_upstream(_random(UNet(unet_cfg), 1)).items()}
    sd.update({COMPONENT_PREFIXES["text_encoder"] + k: v for k, v in _random(TextEncoder(text_cfg), 2).items()})
    sd.update(golden_weights("02_structcond.safetensors"))  # time-aware encoder: 32-wide features, 4 heads
    vae = golden_weights("04_cfw.safetensors")
    sd.update({f"first_stage_model.{k}": v for k, v in vae.items() if not k.startswith("decoder.fusion_layer_")})
    sd.update(schedule_buffers())
    return sd


def write_sd_shaped_sr_ckpt(path: str | Path) -> Path:
    return write_lightning_ckpt(path, sd_shaped_sr_state_dict(), epoch=117)
