"""Build networks from their stored tensors: on the meta device, then filled one tensor at a time.

A network is built empty on the meta device (no memory, no random initialisation), its keys and
shapes are checked against the stored ones, and then each stored tensor is read, cast to the
network's dtype, put on its device and assigned in place, before the next one is read. Loading from
a file (`WeightSource` over `SafetensorsReader`) therefore holds the finished weights plus one source
tensor at most, never a whole component in the file's dtype next to its cast copy.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import CheckpointMismatchError
from ..models.layout import prepare_for_inference
from ..pipeline.tile_grid import release_freed_host_memory

_SHOW = 10
# Give freed host memory back to the system after about this many bytes read. Sources under glibc's
# mmap threshold (up to 32 MiB) are served from a heap whose freed pages stay resident: without this
# a bf16 load of the full-size UNet kept 650 MB of freed float32 sources and replaced layouts.
RELEASE_EVERY_BYTES = 256 << 20


@dataclass(frozen=True)
class WeightSource:
    """A network's stored tensors: every name with a tensor of its stored shape and dtype up front
    (`shapes`; on the meta device when the values stay in a file), the values one at a time (`read`)."""

    shapes: Mapping[str, torch.Tensor]
    read: Callable[[str], torch.Tensor]

    @classmethod
    def of(cls, sd: Mapping[str, torch.Tensor]) -> WeightSource:
        """A state dict already in memory."""
        return cls(sd, sd.__getitem__)


Weights = Mapping[str, torch.Tensor] | WeightSource


def _source(weights: Weights) -> WeightSource:
    return weights if isinstance(weights, WeightSource) else WeightSource.of(weights)


def stored_names(source: WeightSource) -> dict[str, str]:
    """name -> name for every stored tensor: passed through the key-map functions (which only rename
    and filter), it tells which stored tensor fills each of our keys without reading any."""
    return {name: name for name in source.shapes}


def _check_fit(own: Mapping[str, torch.Tensor], shapes: Mapping[str, torch.Tensor], what: str) -> None:
    """Fail loudly on any missing, unexpected or mis-shaped key, before any value is read."""
    missing = sorted(set(own) - set(shapes))
    unexpected = sorted(set(shapes) - set(own))
    misshaped = sorted(
        f"{k} {tuple(shapes[k].shape)} (expected {tuple(own[k].shape)})"
        for k in set(own) & set(shapes)
        if tuple(own[k].shape) != tuple(shapes[k].shape)
    )
    if missing or unexpected or misshaped:
        parts = []
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", misshaped)):
            if keys:
                more = f" ... and {len(keys) - _SHOW} more" if len(keys) > _SHOW else ""
                parts.append(f"{len(keys)} {label}: {', '.join(keys[:_SHOW])}{more}")
        raise CheckpointMismatchError(f"{what}: weights do not fit the network; " + "; ".join(parts))


def load_streamed(
    module: nn.Module, source: WeightSource, names: Mapping[str, str], what: str, *, device: torch.device | str | None = None
) -> nn.Module:
    """Fill `module` (typically built on the meta device) with the stored tensors, strictly: `names`
    maps each of the module's keys to the stored name that fills it, in the order to read them.

    Each tensor is read, cast to the dtype of the parameter it replaces (floating tensors only), moved
    to `device` (None: where it was read) and assigned, and only then is the next one read.
    """
    own = module.state_dict(keep_vars=True)
    _check_fit(own, {ours: source.shapes[stored] for ours, stored in names.items()}, what)
    since_release = 0
    for ours, stored in names.items():
        value = source.read(stored)
        target = own[ours]
        dtype = target.dtype if value.is_floating_point() and target.is_floating_point() else value.dtype
        _assign(module, ours, value.to(device=device, dtype=dtype), is_parameter=isinstance(target, nn.Parameter))
        since_release += value.numel() * value.element_size()
        del value  # the source of a cast goes before the next tensor is read
        if since_release >= RELEASE_EVERY_BYTES:
            release_freed_host_memory()
            since_release = 0
    release_freed_host_memory()
    return module


def _assign(module: nn.Module, key: str, value: torch.Tensor, *, is_parameter: bool) -> None:
    owner_name, _, leaf = key.rpartition(".")
    owner = module.get_submodule(owner_name)
    setattr(owner, leaf, nn.Parameter(value, requires_grad=False) if is_parameter else value)


def load_strict(module: nn.Module, sd: Mapping[str, torch.Tensor], what: str) -> nn.Module:
    """Load the in-memory state dict `sd` into `module`, failing loudly on any missing, unexpected or
    mis-shaped key. The module takes the tensors as they are (no copy, no random init cost on the
    meta device); floating tensors are cast to the module's parameter dtype first."""
    return load_streamed(module, WeightSource.of(sd), {k: k for k in sd}, what)


def _build(factory, source: WeightSource, names: Mapping[str, str], what: str, device, dtype) -> nn.Module:
    with torch.device("meta"):
        module = factory().to(dtype)  # so weights are cast once, straight to the target dtype
    load_streamed(module, source, names, what, device=device)
    module = prepare_for_inference(module.to(device=device, dtype=dtype).eval().requires_grad_(False))
    release_freed_host_memory()  # the weights' layout changes leave freed blocks behind
    return module


def build_unet(weights: Weights, *, num_head_channels: int = 64, device="cpu", dtype=torch.float32):
    """The UNet from its upstream state dict (with or without `model.diffusion_model.`)."""
    from ..models.unet import UNet
    from .detect import infer_unet_config
    from .keymap import COMPONENT_PREFIXES, resblocks_to_ours, strip_prefix

    source = _source(weights)
    cfg = infer_unet_config(source.shapes, num_head_channels=num_head_channels)
    names = resblocks_to_ours(strip_prefix(stored_names(source), COMPONENT_PREFIXES["unet"]))
    return _build(lambda: UNet(cfg), source, names, "UNet", device, dtype)


def build_time_encoder(weights: Weights, *, num_heads: int = 4, device="cpu", dtype=torch.float32):
    """The time-aware encoder from its upstream state dict (with or without `structcond_stage_model.`)."""
    from ..models.time_encoder import TimeAwareEncoder
    from .detect import infer_time_encoder_config
    from .keymap import COMPONENT_PREFIXES, resblocks_to_ours, strip_prefix

    source = _source(weights)
    cfg = infer_time_encoder_config(source.shapes, num_heads=num_heads)
    names = resblocks_to_ours(strip_prefix(stored_names(source), COMPONENT_PREFIXES["time_encoder"]))
    return _build(lambda: TimeAwareEncoder(cfg), source, names, "time-aware encoder", device, dtype)


def build_autoencoder(weights: Weights, what: str = "autoencoder", *, device="cpu", dtype=torch.float32):
    """The SD VAE or the CFW autoencoder (fusion layers detected from the keys), with or without
    `first_stage_model.`; a CFW checkpoint's training-only `loss.*` keys are dropped (never read)."""
    from ..models.autoencoder import Autoencoder
    from .detect_autoencoder import infer_autoencoder_config, split_autoencoder

    source = _source(weights)
    cfg = infer_autoencoder_config(source.shapes)
    return _build(lambda: Autoencoder(cfg), source, split_autoencoder(stored_names(source)), what, device, dtype)


def build_text_encoder(weights: Weights, *, heads: int | None = None, device="cpu", dtype=torch.float32):
    """The OpenCLIP text tower from its upstream state dict (with or without `cond_stage_model.model.`)."""
    from ..models.text_encoder import TextEncoder
    from .detect_text import infer_text_encoder_config
    from .keymap import COMPONENT_PREFIXES, strip_prefix

    source = _source(weights)
    cfg = infer_text_encoder_config(source.shapes, heads=heads)
    names = strip_prefix(stored_names(source), COMPONENT_PREFIXES["text_encoder"])
    return _build(lambda: TextEncoder(cfg), source, names, "text encoder", device, dtype)


def empty_prompt_context(text_sd: Mapping[str, torch.Tensor], *, heads: int | None = None) -> torch.Tensor:
    """The cross-attention context of the empty prompt [1, 77, width], which every upstream DDPM script
    uses; computed once at conversion so that upscaling needs no text tower."""
    from ..models.text_encoder import empty_prompt_tokens

    encoder = build_text_encoder(text_sd, heads=heads)
    with torch.no_grad():
        return encoder(empty_prompt_tokens(1)).contiguous()
