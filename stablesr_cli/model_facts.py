"""What we know about a model that its tensors cannot tell, in one type, and the one place that
turns "the model's default" options into values.

A `ModelFacts` comes from the weights manifest (the released models) or from a converted folder's
safetensors metadata (anything `stablesr weights convert` wrote); both paths validate every value
with a one-line error naming where it came from. `resolve_options` is the only function that fills
in options left as None ("the model's default"); the CLI and the Python API both call it.

Standard library only: the CLI imports this before (and without) torch.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass

from .errors import CheckpointError
from .options import UpscaleOptions

PREDICTIONS = ("eps", "v")

DDIM_DEFAULT_STEPS = 50
"""The official DDIM script's default (`--ddim_steps`); a model whose own default is smaller
(turbo, 4) keeps its own."""

MAX_NATIVE_TILE = 256
"""Latent tile side limit (2048 pixels): SD 2.x models are trained at 64 or 96; far above that, one
UNet call no longer fits any machine (attention is quadratic in the tile area)."""


@dataclass(frozen=True)
class ModelFacts:
    """Everything about a model besides its weights."""

    name: str
    prediction: str = "eps"
    """'eps' or 'v': what the UNet predicts (from the upstream config; weights cannot tell)."""
    native_tile: int = 64
    """Native latent tile side: 64 for the 512-family models, 96 for 768v."""
    default_steps: int = 200
    """DDPM steps when the user gives none."""
    default_w: float = 0.5
    """CFW fidelity weight when the user gives none (0 for the face model)."""
    unet_head_channels: int = 64
    """Width of one UNet attention head (SD 2.x: 64); shapes give the channels, not the split."""
    time_encoder_heads: int = 4
    """Attention heads of the time-aware encoder (upstream config: 4)."""
    summary: str = ""
    """One line for people (`stablesr weights list`)."""
    _checked: dataclasses.InitVar[bool] = True

    def __post_init__(self, _checked: bool) -> None:
        problem = _first_problem(self) if _checked else None
        if problem:
            raise ValueError(problem[1])

    @property
    def native_size(self) -> int:
        """Native tile side in pixels (the VAE downsamples by 8)."""
        return self.native_tile * 8

    def default_steps_for(self, sampler: str) -> int:
        if sampler == "ddim":
            return min(self.default_steps, DDIM_DEFAULT_STEPS)
        return self.default_steps


def resolve_options(options: UpscaleOptions | None, facts: ModelFacts, **overrides) -> UpscaleOptions:
    """`options` with every "model's default" (None) filled in from `facts`; `overrides` first."""
    options = options or UpscaleOptions()
    if overrides:
        options = dataclasses.replace(options, **overrides)
    filled: dict[str, object] = {}
    if options.w is None:
        filled["w"] = facts.default_w
    if options.steps is None:
        filled["steps"] = facts.default_steps_for(getattr(options, "sampler", "ddpm"))
    return dataclasses.replace(options, **filled) if filled else options


def facts_from_metadata(
    source: str,
    unet_meta: Mapping[str, str],
    time_encoder_meta: Mapping[str, str] | None = None,
    *,
    time_encoder_source: str | None = None,
    base: ModelFacts | None = None,
    fallback_name: str = "",
) -> ModelFacts:
    """Facts for converted files: `base` (the manifest's, when the metadata names an official model)
    with what the metadata records on top. `source` (and `time_encoder_source`) name the files in errors."""
    base = base or ModelFacts(name=unet_meta.get("model") or fallback_name or "custom")
    time_source = time_encoder_source or source
    values: dict[str, object] = {}
    origin: dict[str, str] = {}
    readers = {
        "prediction": ("prediction", str),
        "native_tile": ("native_tile", int),
        "default_steps": ("default_steps", int),
        "default_w": ("default_w", float),
        "unet_head_channels": ("num_head_channels", int),
    }
    for field, (key, kind) in readers.items():
        if key in unet_meta:
            values[field], origin[field] = _parse(source, key, unet_meta[key], kind), source
    if time_encoder_meta and "num_heads" in time_encoder_meta:
        values["time_encoder_heads"] = _parse(time_source, "num_heads", time_encoder_meta["num_heads"], int)
        origin["time_encoder_heads"] = time_source
    candidate = dataclasses.replace(base, **values, _checked=False) if values else base
    problem = _first_problem(candidate)
    if problem:
        field, message = problem
        raise CheckpointError(f"{origin.get(field, source)}: {message}; reconvert the checkpoint")
    return candidate


def _parse(source: str, key: str, text: str, kind: type) -> object:
    try:
        return kind(text.strip()) if kind is not str else text.strip()
    except (TypeError, ValueError):
        expected = {int: "a whole number", float: "a number"}.get(kind, "a string")
        raise CheckpointError(f"{source}: metadata '{key}' is {text!r}, expected {expected}; reconvert the checkpoint") from None


def _first_problem(facts: ModelFacts) -> tuple[str, str] | None:
    """(field, why) when these facts cannot describe a working model, naming the metadata key."""
    if facts.prediction not in PREDICTIONS:
        return "prediction", f"metadata 'prediction' is {facts.prediction!r}, expected 'eps' or 'v'"
    if not (8 <= facts.native_tile <= MAX_NATIVE_TILE) or facts.native_tile % 8:
        return "native_tile", (
            f"metadata 'native_tile' is {facts.native_tile}, expected a multiple of 8 from 8 to {MAX_NATIVE_TILE}"
        )
    if not (1 <= facts.default_steps <= 1000):
        return "default_steps", f"metadata 'default_steps' is {facts.default_steps}, expected 1 to 1000"
    if not (0.0 <= facts.default_w <= 1.0):
        return "default_w", f"metadata 'default_w' is {facts.default_w}, expected 0 to 1"
    if facts.unet_head_channels < 1:
        return "unet_head_channels", (
            f"metadata 'num_head_channels' is {facts.unet_head_channels}, expected a positive whole number"
        )
    if facts.time_encoder_heads < 1:
        return "time_encoder_heads", f"metadata 'num_heads' is {facts.time_encoder_heads}, expected a positive whole number"
    return None
