"""Tiny random-weight StableSR models in memory, built from the golden fixtures' weights.

The UNet (01), time-aware encoder (02) and CFW autoencoder (04) carry real upstream key names at
tiny size; the SD VAE is the CFW checkpoint minus its fusion layers (as upstream trains CFW with a
frozen VAE). The context is a fixed random [1, 77, 16] tensor standing in for the empty prompt.
"""

from __future__ import annotations

from functools import lru_cache

import torch

from stablesr_cli.api import Upscaler
from stablesr_cli.model_facts import ModelFacts
from stablesr_cli.checkpoints.assemble import build_autoencoder, build_time_encoder, build_unet
from stablesr_cli.pipeline.schedule import Prediction
from stablesr_cli.pipeline.upscale import StableSRModels
from tiny_checkpoints import golden_weights

UNET_HEAD_CHANNELS = 16  # the golden tiny UNet's head width (config num_head_channels)
TILE_PX = 64  # latent tile 16 at the tiny VAE's downscale 4: keeps attention cheap on a CPU


@lru_cache(maxsize=2)
def tiny_models(prediction: str = "eps") -> StableSRModels:
    cfw = golden_weights("04_cfw.safetensors")
    vae = {k: v for k, v in cfw.items() if not k.startswith("decoder.fusion_layer_")}
    place = {"device": "cpu", "dtype": torch.float32}
    return StableSRModels(
        unet=build_unet(golden_weights("01_unet.safetensors"), num_head_channels=UNET_HEAD_CHANNELS, **place),
        time_encoder=build_time_encoder(golden_weights("02_structcond.safetensors"), num_heads=4, **place),
        sd_vae=build_autoencoder(vae, "VAE", **place),
        cfw_vae=build_autoencoder(cfw, "CFW autoencoder", **place),
        context=torch.randn(1, 77, 16, generator=torch.Generator().manual_seed(7)),
        prediction=Prediction(prediction),
        native_tile=TILE_PX // 4,
    )


def tiny_upscaler(prediction: str = "eps") -> Upscaler:
    return Upscaler(tiny_models(prediction), ModelFacts(name="tiny", prediction=prediction, default_steps=2))
