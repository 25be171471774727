"""Converted component files -> ready networks and the facts that describe them.

This is the load boundary: every value read from a file (tensors, metadata) is checked here, with
one-line errors naming the file, before any network is built from it.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from ..errors import CheckpointError, WeightsNotFoundError
from ..model_facts import ModelFacts, facts_from_metadata
from ..pipeline.schedule import Prediction
from ..pipeline.upscale import StableSRModels
from .assemble import build_autoencoder, build_time_encoder, build_unet
from .io import read_safetensors
from .layout import COMPONENT_FILES, REQUIRED_COMPONENTS

def load_models(
    components: Mapping[str, Path],
    *,
    device: torch.device,
    dtype: torch.dtype,
    base: ModelFacts | None = None,
    manifest_facts: Mapping[str, ModelFacts] | None = None,
) -> tuple[StableSRModels, ModelFacts]:
    """Build the networks of one model from its converted files, and tell its facts.

    The facts are what the files' metadata records, on top of `base` (the manifest's facts of a
    released model) or, without it, of the manifest's facts of the model the metadata names
    (`manifest_facts`, name -> facts); SD 2.x defaults fill in the rest.
    """
    missing = [name for name in REQUIRED_COMPONENTS if name not in components]
    if missing:
        where = Path(next(iter(components.values()))).parent if components else None
        files = ", ".join(COMPONENT_FILES[name] for name in missing)
        place = f"{where}: " if where else ""
        raise WeightsNotFoundError(
            f"{place}missing {files}; create the folder with `stablesr weights convert CKPT --cfw CFW_CKPT -o DIR`"
        )
    loaded = {name: read_safetensors(components[name]) for name in REQUIRED_COMPONENTS}
    unet_meta = loaded["unet"][1]
    facts = facts_from_metadata(
        str(components["unet"]), unet_meta, loaded["time_encoder"][1],
        time_encoder_source=str(components["time_encoder"]),
        base=base or (manifest_facts or {}).get(unet_meta.get("model", "")),
        fallback_name=Path(components["unet"]).parent.name,
    )  # fmt: skip
    place = {"device": device, "dtype": dtype}
    unet = _built(components["unet"], lambda: build_unet(loaded["unet"][0], num_head_channels=facts.unet_head_channels, **place))
    time_encoder = _built(
        components["time_encoder"],
        lambda: build_time_encoder(loaded["time_encoder"][0], num_heads=facts.time_encoder_heads, **place),
    )
    sd_vae = build_autoencoder(loaded["vae"][0], "VAE", **place)
    cfw_vae = build_autoencoder(loaded["cfw"][0], "CFW autoencoder", **place)
    if _same_encoder(sd_vae, cfw_vae):
        sd_vae = cfw_vae  # one encoder pass per image and one VAE less in memory; results identical
    context = _context(components["context_empty"], loaded["context_empty"][0], unet.config.context_dim)
    models = StableSRModels(
        unet=unet,
        time_encoder=time_encoder,
        sd_vae=sd_vae,
        cfw_vae=cfw_vae,
        context=context.to(device),
        prediction=Prediction(facts.prediction),
        native_tile=facts.native_tile,
    )
    return models, facts


def _built(path: Path, build):
    """Run a network builder, turning a configuration the metadata made impossible into a file error."""
    try:
        return build()
    except (CheckpointError, ValueError) as error:
        raise CheckpointError(f"{path}: {error}") from None


def _context(path: Path, tensors: Mapping[str, torch.Tensor], width: int) -> torch.Tensor:
    """The empty prompt's context: exactly one float tensor [1, 77, width] with finite values."""
    if len(tensors) != 1:
        raise CheckpointError(f"{path}: expected one tensor, found {len(tensors)}; reconvert the checkpoint")
    context = next(iter(tensors.values()))
    if context.ndim != 3 or context.shape[0] != 1 or context.shape[1] != 77 or context.shape[2] != width:
        raise CheckpointError(
            f"{path}: context of shape {tuple(context.shape)}, expected (1, 77, {width}) for this UNet; "
            "reconvert the checkpoint"
        )
    if not context.is_floating_point() or not bool(torch.isfinite(context).all()):
        raise CheckpointError(f"{path}: context holds non-finite or non-float values; reconvert the checkpoint")
    return context


def _same_encoder(a: nn.Module, b: nn.Module) -> bool:
    """Whether two autoencoders encode identically: same encoder and quant_conv tensors."""
    sa, sb = a.state_dict(), b.state_dict()
    keys = [k for k in sa if k.startswith(("encoder.", "quant_conv."))]
    return all(k in sb and sa[k].shape == sb[k].shape and torch.equal(sa[k], sb[k]) for k in keys)
