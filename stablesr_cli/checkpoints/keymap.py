"""THE place where upstream spellings meet ours.

Our modules keep upstream's names wherever they are fine (VAE, CFW, transformer internals, text
tower) and differ only where upstream names encode `nn.Sequential` slot numbers (the UNet and
time-aware-encoder residual blocks). Everything about that difference lives here.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

StateDict = dict[str, torch.Tensor]

# prefix inside the official StableSR diffusion checkpoint (`state_dict` of the Lightning module)
COMPONENT_PREFIXES: dict[str, str] = {
    "unet": "model.diffusion_model.",
    "time_encoder": "structcond_stage_model.",
    "text_encoder": "cond_stage_model.model.",
    "vae": "first_stage_model.",
}

# Keys of the diffusion checkpoint that inference never reads: the 1000-step schedule buffers
# (every upstream script re-registers the schedule after loading, so the stored copies are unused)
# and the EMA copy of the UNet (absent in the released files, dropped if present).
SCHEDULE_BUFFERS = frozenset(
    {
        "betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod",
        "sqrt_one_minus_alphas_cumprod", "log_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod",
        "sqrt_recipm1_alphas_cumprod", "posterior_variance", "posterior_log_variance_clipped",
        "posterior_mean_coef1", "posterior_mean_coef2", "logvar",
    }
)
IGNORED_PREFIXES: tuple[str, ...] = (
    "model_ema.",  # EMA weights (use_ema is False in every StableSR config)
    "loss.",  # CFW checkpoint: LPIPS + discriminator, training only
)

# Residual blocks of the UNet and time-aware encoder: upstream stores them as nn.Sequential slots.
# upstream leaf -> ours (cf. ComfyUI's UNET_MAP_RESNET). Our names appear nowhere else in the
# networks, so the inverse mapping cannot touch a transformer's norm1 or an attention's norm.
RESBLOCK_LEAVES: dict[str, str] = {
    "in_layers.0.": "in_norm.",
    "in_layers.2.": "in_conv.",
    "emb_layers.1.": "time_proj.",
    "out_layers.0.": "out_norm.",
    "out_layers.3.": "out_conv.",
    "skip_connection.": "skip.",
    "spade.param_free_norm.": "sft.norm.",
    "spade.mlp_shared.0.": "sft.shared.",
    "spade.mlp_gamma.": "sft.gamma.",
    "spade.mlp_beta.": "sft.beta.",
}


def strip_prefix(sd: Mapping[str, torch.Tensor], prefix: str) -> StateDict:
    """Keys under `prefix` with it removed; a state dict without that prefix is returned as is."""
    if not prefix or not any(k.startswith(prefix) for k in sd):
        return dict(sd)
    return {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}


def split_components(sd: Mapping[str, torch.Tensor]) -> tuple[dict[str, StateDict], list[str]]:
    """Split a diffusion checkpoint's state dict into its components (prefixes stripped).

    Returns (components, leftover keys that are neither a component nor known-ignorable).
    """
    components: dict[str, StateDict] = {name: {} for name in COMPONENT_PREFIXES}
    leftover: list[str] = []
    for key, value in sd.items():
        for name, prefix in COMPONENT_PREFIXES.items():
            if key.startswith(prefix):
                components[name][key[len(prefix):]] = value
                break
        else:
            if key in SCHEDULE_BUFFERS or key.startswith(IGNORED_PREFIXES):
                continue
            leftover.append(key)
    return {k: v for k, v in components.items() if v}, leftover


def _rename_leaves(key: str, table: Mapping[str, str]) -> str:
    for old, new in table.items():
        # leaves sit right after a block path such as `input_blocks.1.0.`; match on a dot boundary
        marker = "." + old
        idx = key.find(marker)
        if idx >= 0:
            return key[: idx + 1] + new + key[idx + len(marker):]
    return key


def resblocks_to_ours(sd: Mapping[str, torch.Tensor]) -> StateDict:
    """UNet / time-aware encoder keys, upstream spelling -> ours."""
    return {_rename_leaves(k, RESBLOCK_LEAVES): v for k, v in sd.items()}


def resblocks_to_upstream(sd: Mapping[str, torch.Tensor]) -> StateDict:
    """Inverse of `resblocks_to_ours`."""
    inverse = {new: old for old, new in RESBLOCK_LEAVES.items()}
    return {_rename_leaves(k, inverse): v for k, v in sd.items()}
