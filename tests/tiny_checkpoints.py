"""The one factory of tiny checkpoints in the official StableSR layout (no downloads).

The weights are the golden fixtures' (real upstream key names at tiny size, float8 -> float32), put
in the Lightning container the released `.ckpt` files use: a top-level `state_dict`, `callbacks`
keyed by the class `pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint`,
`optimizer_states`, `epoch`, `global_step`, `pytorch-lightning_version`.

Tests use them through the session fixtures in conftest.py (`official_tiny`, `official_tiny_wide`,
`official_sd_shaped`, `tiny_model_dir`), each written once per test session.
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

# The 'turbo' model's two files, under their official names.
SR_CKPT, CFW_CKPT = "stablesr_turbo.ckpt", "vqgan_cfw_00011.ckpt"
# The tiny text tower is 16 wide to match the golden tiny UNet's context_dim. open_clip's heads are
# 64 wide, so its head count (4) cannot be derived and has to be told to the converter.
TEXT_WIDTH, TEXT_HEADS = 16, 4
# 64 wide: exactly one open_clip head, so no head count is needed (for tests that cannot pass one).
WIDE_TEXT_WIDTH = 64
UNET_HEAD_CHANNELS = 16  # the golden tiny UNet's num_head_channels (tests/fixtures/golden/01_unet)

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


def tiny_sr_state_dict(*, text_width: int = TEXT_WIDTH) -> dict[str, torch.Tensor]:
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


def write_tiny_sr_ckpt(path: str | Path, *, text_width: int = TEXT_WIDTH) -> Path:
    """A tiny StableSR diffusion `.ckpt` in the official Lightning layout."""
    return write_lightning_ckpt(path, tiny_sr_state_dict(text_width=text_width), epoch=117)


def write_tiny_cfw_ckpt(path: str | Path) -> Path:
    """A tiny CFW autoencoder `.ckpt` in the official Lightning layout (keys without prefix, plus `loss.*`)."""
    return write_lightning_ckpt(path, tiny_cfw_state_dict(), epoch=11)


# ----------------------------------------------------------------- SD-shaped

# UNet model channels, context width and text width of the SD-shaped checkpoint: one 64-wide head.
SD_SHAPED_WIDTH = 64


def _random_state(module: torch.nn.Module, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name, p in module.state_dict().items():
        if p.ndim >= 2:
            out[name] = torch.randn(p.shape, generator=g) / p[0].numel() ** 0.5
        else:
            out[name] = (1.0 if name.endswith("weight") else 0.0) + 0.1 * torch.randn(p.shape, generator=g)
    return out


def sd_shaped_sr_state_dict() -> dict[str, torch.Tensor]:
    """A tiny diffusion state dict whose hidden hyperparameters are SD 2.x's own.

    Two numbers cannot be read from any tensor shape: the UNet's attention head width (64 in SD 2.x)
    and the text tower's head count (width // 64). The golden-weight tiny checkpoint uses other
    values, so it needs them recorded at conversion; this one does not, so it goes through the whole
    first-use path (download, convert, upscale) exactly as an official file does.
    """
    from stablesr_cli.checkpoints.keymap import COMPONENT_PREFIXES, resblocks_to_upstream
    from stablesr_cli.models.text_encoder import TextEncoder, TextEncoderConfig
    from stablesr_cli.models.unet import UNet, UNetConfig

    width = SD_SHAPED_WIDTH
    unet_cfg = UNetConfig(model_channels=width, channel_mult=(1, 2), num_res_blocks=1, attention_resolutions=(1,),
                          context_dim=width, sft_in_channels=32)
    text_cfg = TextEncoderConfig(width=width, layers=2, heads=width // 64, embed_dim=width)
    unet = resblocks_to_upstream(_random_state(UNet(unet_cfg), 1))
    sd = {COMPONENT_PREFIXES["unet"] + k: v for k, v in unet.items()}
    sd.update({COMPONENT_PREFIXES["text_encoder"] + k: v for k, v in _random_state(TextEncoder(text_cfg), 2).items()})
    sd.update(golden_weights("02_structcond.safetensors"))  # time-aware encoder: 32-wide features, 4 heads
    vae = golden_weights("04_cfw.safetensors")
    sd.update({f"first_stage_model.{k}": v for k, v in vae.items() if not k.startswith("decoder.fusion_layer_")})
    sd.update(schedule_buffers())
    return sd


def write_sd_shaped_sr_ckpt(path: str | Path) -> Path:
    return write_lightning_ckpt(path, sd_shaped_sr_state_dict(), epoch=117)


# ----------------------------------------------------------------- folders


def write_official_folder(folder: str | Path, sr: str = "tiny", *, text_width: int = TEXT_WIDTH) -> Path:
    """`folder` holding the 'turbo' model's two files under their official names.

    `sr` picks the diffusion checkpoint: "tiny" (golden weights, text tower `text_width` wide) or
    "sd_shaped" (SD 2.x head widths). The CFW checkpoint is always the tiny one.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if sr == "tiny":
        write_tiny_sr_ckpt(folder / SR_CKPT, text_width=text_width)
    elif sr == "sd_shaped":
        write_sd_shaped_sr_ckpt(folder / SR_CKPT)
    else:
        raise ValueError(f"unknown tiny diffusion checkpoint {sr!r}")
    write_tiny_cfw_ckpt(folder / CFW_CKPT)
    return folder
