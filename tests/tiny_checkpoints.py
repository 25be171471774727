"""Tiny checkpoints in the official StableSR layout, written by the tests themselves (no downloads).

The weights are the golden fixtures' (real upstream key names at tiny size, float8 -> float32), put
in the Lightning container the released `.ckpt` files use: a top-level `state_dict`, `callbacks`
keyed by the class `pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint`,
`optimizer_states`, `epoch`, `global_step`, `pytorch-lightning_version`.
"""

from __future__ import annotations

import math
import sys
import types
from collections import OrderedDict
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path

import torch
from safetensors import safe_open

GOLDEN = Path(__file__).parent / "fixtures" / "golden"
LIGHTNING_CALLBACK = "pytorch_lightning.callbacks.model_checkpoint"

# Which golden text-tower dims scale with the width (20 -> w, 60 -> 3w, 80 -> 4w); vocab and
# positions keep their real sizes.
_GOLDEN_TEXT_WIDTH = 20


def golden_weights(name: str) -> dict[str, torch.Tensor]:
    """`weights.*` tensors of one golden case under their upstream keys, as float32."""
    out: dict[str, torch.Tensor] = {}
    with safe_open(str(GOLDEN / name), "pt") as fh:
        for key in fh.keys():
            if key.startswith("weights."):
                out[key[len("weights."):]] = fh.get_tensor(key).to(torch.float32)
    return out


def _scaled_dim(dim: int, width: int) -> int:
    if dim % _GOLDEN_TEXT_WIDTH == 0 and dim // _GOLDEN_TEXT_WIDTH in (1, 3, 4):
        return dim // _GOLDEN_TEXT_WIDTH * width
    return dim  # 49408 (vocab) and 77 (positions)


def tiny_text_tower(width: int, seed: int = 1234) -> dict[str, torch.Tensor]:
    """The golden text tower's key set, re-drawn at `width` (seeded): `cond_stage_model.model.*`."""
    gen = torch.Generator().manual_seed(seed)
    out: dict[str, torch.Tensor] = {}
    for key, ref in sorted(golden_weights("08_text_encoder.safetensors").items()):
        shape = tuple(_scaled_dim(d, width) for d in ref.shape)
        if key.endswith("logit_scale"):
            value = torch.tensor(math.log(1 / 0.07))
        elif ".ln_" in key or "ln_final" in key:
            base = 1.0 if key.endswith("weight") else 0.0
            value = base + 0.1 * torch.randn(shape, generator=gen)
        elif key.endswith("bias"):
            value = 0.05 * torch.randn(shape, generator=gen)
        elif key.endswith(("token_embedding.weight", "positional_embedding")):
            value = 0.02 * torch.randn(shape, generator=gen)
        else:  # projections: N(0, 1/fan_in)
            value = torch.randn(shape, generator=gen) / math.sqrt(shape[-1])
        out[key] = value.to(torch.float32)
    return out


def schedule_buffers(timesteps: int = 1000) -> dict[str, torch.Tensor]:
    """The 12 diffusion-schedule buffers a LatentDiffusion state dict carries (SD's scaled-linear betas)."""
    betas = torch.linspace(0.00085 ** 0.5, 0.0120 ** 0.5, timesteps, dtype=torch.float64) ** 2
    alphas = 1.0 - betas
    cum = torch.cumprod(alphas, 0)
    cum_prev = torch.cat([torch.ones(1, dtype=torch.float64), cum[:-1]])
    post_var = betas * (1.0 - cum_prev) / (1.0 - cum)
    buffers = {
        "betas": betas,
        "alphas_cumprod": cum,
        "alphas_cumprod_prev": cum_prev,
        "sqrt_alphas_cumprod": cum.sqrt(),
        "sqrt_one_minus_alphas_cumprod": (1.0 - cum).sqrt(),
        "log_one_minus_alphas_cumprod": (1.0 - cum).log(),
        "sqrt_recip_alphas_cumprod": (1.0 / cum).sqrt(),
        "sqrt_recipm1_alphas_cumprod": (1.0 / cum - 1).sqrt(),
        "posterior_variance": post_var,
        "posterior_log_variance_clipped": torch.log(torch.clamp(post_var, min=1e-20)),
        "posterior_mean_coef1": betas * cum_prev.sqrt() / (1.0 - cum),
        "posterior_mean_coef2": (1.0 - cum_prev) * alphas.sqrt() / (1.0 - cum),
    }
    return {k: v.to(torch.float32) for k, v in buffers.items()}


@contextmanager
def lightning_callback_class():
    """A throwaway `pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint` that exists only
    while saving, so the pickle references the class exactly as the released files do."""
    names = ["pytorch_lightning", "pytorch_lightning.callbacks", LIGHTNING_CALLBACK]
    saved = {n: sys.modules.get(n) for n in names}
    modules = {n: types.ModuleType(n) for n in names}
    cls = type("ModelCheckpoint", (), {"__module__": LIGHTNING_CALLBACK})
    modules[LIGHTNING_CALLBACK].ModelCheckpoint = cls
    modules["pytorch_lightning"].callbacks = modules["pytorch_lightning.callbacks"]
    modules["pytorch_lightning.callbacks"].model_checkpoint = modules[LIGHTNING_CALLBACK]
    sys.modules.update(modules)
    try:
        yield cls
    finally:
        for n, old in saved.items():
            if old is None:
                sys.modules.pop(n, None)
            else:
                sys.modules[n] = old


def _lightning_container(state_dict: dict[str, torch.Tensor], callback_cls: type, epoch: int) -> dict:
    first = next(iter(state_dict.values()))
    return {
        "epoch": epoch,
        "global_step": epoch * 1000 + 17,
        "pytorch-lightning_version": "1.4.2",
        "state_dict": OrderedDict(state_dict),
        "callbacks": {
            callback_cls: {
                "monitor": None,
                "best_model_score": torch.tensor(0.25),
                "best_model_path": f"/logs/checkpoints/{epoch:06}.ckpt",
                "current_score": None,
                "dirpath": "/logs/checkpoints",
            }
        },
        "optimizer_states": [
            {
                "state": {0: {"step": 10, "exp_avg": torch.zeros_like(first), "exp_avg_sq": torch.ones_like(first)}},
                "param_groups": [{"lr": 5e-5, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.01, "params": [0]}],
            }
        ],
        "lr_schedulers": [],
    }


def tiny_sr_state_dict(*, text_width: int = 16) -> dict[str, torch.Tensor]:
    """The tiny diffusion checkpoint's state dict, upstream key names (a fresh dict; tensors are
    shared between calls, so do not modify them in place)."""
    return dict(_tiny_sr_state_dict(text_width))


@lru_cache(maxsize=4)
def _tiny_sr_state_dict(text_width: int) -> dict[str, torch.Tensor]:
    sd: dict[str, torch.Tensor] = {}
    sd.update(golden_weights("01_unet.safetensors"))
    sd.update(golden_weights("02_structcond.safetensors"))
    vae = golden_weights("04_cfw.safetensors")
    sd.update({f"first_stage_model.{k}": v for k, v in vae.items() if not k.startswith("decoder.fusion_layer_")})
    sd.update(tiny_text_tower(text_width))
    sd.update(schedule_buffers())
    return sd


def tiny_cfw_state_dict() -> dict[str, torch.Tensor]:
    """The tiny CFW checkpoint's state dict: the golden CFW autoencoder plus a few training-loss tensors
    (a fresh dict; tensors are shared between calls)."""
    return dict(_tiny_cfw_state_dict())


@lru_cache(maxsize=1)
def _tiny_cfw_state_dict() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(99)
    sd = golden_weights("04_cfw.safetensors")
    sd["loss.logvar"] = torch.zeros(())
    sd["loss.discriminator.main.0.weight"] = torch.randn(8, 3, 4, 4, generator=gen)
    sd["loss.perceptual_loss.net.slice1.0.weight"] = torch.randn(8, 3, 3, 3, generator=gen)
    return sd


def write_lightning_ckpt(path: str | Path, state_dict: dict[str, torch.Tensor], *, epoch: int) -> Path:
    """`state_dict` saved in the Lightning container the released `.ckpt` files use."""
    path = Path(path)
    with lightning_callback_class() as cls:
        torch.save(_lightning_container(state_dict, cls, epoch=epoch), path)
    return path


def write_tiny_sr_ckpt(path: str | Path, *, text_width: int = 16) -> Path:
    """A tiny StableSR diffusion `.ckpt` in the official Lightning layout."""
    return write_lightning_ckpt(path, tiny_sr_state_dict(text_width=text_width), epoch=117)


def write_tiny_cfw_ckpt(path: str | Path) -> Path:
    """A tiny CFW autoencoder `.ckpt` in the official Lightning layout (keys without prefix, plus `loss.*`)."""
    return write_lightning_ckpt(path, tiny_cfw_state_dict(), epoch=11)
