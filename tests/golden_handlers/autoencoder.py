"""Golden handlers for the SD VAE (`AutoencoderKL`) and the CFW autoencoder (`AutoencoderKLResi`)."""

from __future__ import annotations

import fnmatch
import json
import re

import torch

from golden_support import GoldenCase, handles
from stablesr_cli.checkpoints.assemble import build_autoencoder
from stablesr_cli.models.autoencoder import LATENT_SCALE


def _case_weights(case: GoldenCase) -> dict[str, torch.Tensor]:
    """The case's weights, minus what its `weights_source` says to leave out ("... without <pattern>")."""
    sd = case.weights()
    excluded = re.findall(r"without\s+([\w.*]+?)(?=[;,\s]|$)", case.metadata.get("weights_source", ""))
    return {k: v for k, v in sd.items() if not any(fnmatch.fnmatchcase(k, p) for p in excluded)}


def weight_tag(w: float) -> str:
    """Output-name suffix of a fidelity weight: 0.0 -> 'w0', 0.5 -> 'w0_5', 1.0 -> 'w1'."""
    return "w" + f"{w:g}".replace(".", "_").replace("-", "m")


@handles("ldm.models.autoencoder.AutoencoderKL.encode/decode")
def sd_vae(case: GoldenCase) -> dict[str, torch.Tensor]:
    vae = build_autoencoder(_case_weights(case), case.name)
    scale = float(case.metadata.get("scale_factor", LATENT_SCALE))
    assert scale == LATENT_SCALE, f"{case.name}: scale_factor {scale} != {LATENT_SCALE}"
    with torch.no_grad():
        posterior = vae.encode(case.input("image"))
        return {
            "output.posterior_mean": posterior.mean,
            "output.posterior_logvar": posterior.logvar,
            "output.posterior_std": posterior.std,
            "output.decoded_mean": vae.decode(posterior.mean),
            "output.first_stage_encoding": LATENT_SCALE * posterior.sample(case.input("sample_noise")),
        }


@handles("ldm.models.autoencoder.AutoencoderKLResi.encode/decode")
def cfw_vae(case: GoldenCase) -> dict[str, torch.Tensor]:
    vae = build_autoencoder(_case_weights(case), case.name)
    assert vae.config.is_cfw, f"{case.name}: weights have no fusion layers"
    out: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        posterior, features = vae.encode_with_features(case.input("image"))
        out["output.posterior_mean"] = posterior.mean
        out["output.posterior_logvar"] = posterior.logvar
        for i, feature in enumerate(features):
            out[f"output.enc_fea.{i}"] = feature
        for w in json.loads(case.metadata["fusion_ws"]):
            out[f"output.decoded.{weight_tag(float(w))}"] = vae.decode(case.input("z"), features, w=float(w))
    return out
