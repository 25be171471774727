"""Golden handlers for the UNet (01) and the time-aware encoder (02)."""

from __future__ import annotations

import torch

from golden_support import GoldenCase, handles
from stablesr_cli.checkpoints.assemble import build_time_encoder, build_unet


def _by_width_to_levels(maps: dict[str, torch.Tensor]) -> list[torch.Tensor]:
    """Upstream keys structure maps by width; ours is a list from the widest (level 0) down."""
    return [maps[k] for k in sorted(maps, key=int, reverse=True)]


@handles("ldm.modules.diffusionmodules.openaimodel.UNetModelDualcondV2.forward")
def unet_forward(case: GoldenCase) -> dict[str, torch.Tensor]:
    unet = build_unet(case.weights(), num_head_channels=case.config["num_head_channels"])
    with torch.no_grad():
        out = unet(
            case.input("x"),
            case.input("timesteps"),
            case.input("context"),
            _by_width_to_levels(case.inputs("struct_cond")),
        )
    return {"output.model_output": out}


@handles("ldm.modules.diffusionmodules.openaimodel.EncoderUNetModelWT.forward")
def time_encoder_forward(case: GoldenCase) -> dict[str, torch.Tensor]:
    cfg = case.config
    if cfg.get("num_head_channels", -1) != -1:
        raise AssertionError("only the num_heads form of the legacy attention is used by StableSR")
    encoder = build_time_encoder(case.weights(), num_heads=cfg["num_heads"])
    with torch.no_grad():
        maps = encoder(case.input("latent"), case.input("timesteps"))
    return {f"output.struct_cond.{m.shape[-1]}": m for m in maps}
