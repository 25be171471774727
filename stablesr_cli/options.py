"""User-facing choices and the options of one upscale, validated with human messages.

Standard library only: the CLI imports this before (and without) torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum

from .errors import OptionError


class ColorFix(str, Enum):
    """Colour correction of the decoded image against the upscaled input (upstream --colorfix_type)."""

    ADAIN = "adain"
    WAVELET = "wavelet"
    NONE = "none"


class VaeTiling(str, Enum):
    """How the pixel-space VAE work is split.

    none: whole image in one piece; upstream: upstream's overlapping pixel patches, each a full
    encode-sample-decode run blended with Gaussian weights; lean: one diffusion run, with the VAE
    encoder/decoder run tile by tile with GroupNorm statistics shared across tiles.
    """

    NONE = "none"
    UPSTREAM = "upstream"
    LEAN = "lean"


class OutputFormat(str, Enum):
    """The formats outputs are written in (Pillow reads more, e.g. GIF; those are written as PNG)."""

    PNG = "png"
    JPG = "jpg"
    WEBP = "webp"
    TIFF = "tiff"
    BMP = "bmp"


class Sampler(str, Enum):
    """ddpm: the respaced ancestral sampler of upstream's DDPM scripts (the default path);
    ddim: the DDIM sampler of its negative-prompt script (fewer steps, optional noise via eta)."""

    DDPM = "ddpm"
    DDIM = "ddim"


DDPM_DEFAULT_STEPS = 200
"""Steps of the general models with the DDPM sampler (upstream's README)."""
DDIM_DEFAULT_STEPS = 50
"""Steps of the general models with the DDIM sampler (the negative-prompt script's default)."""
DEFAULT_CFG = 7.0
"""Classifier-free guidance scale when guidance is on but no --cfg is given (upstream's --scale)."""


class Precision(str, Enum):
    AUTO = "auto"
    FP32 = "fp32"
    FP16 = "fp16"
    BF16 = "bf16"


@dataclass(frozen=True)
class UpscaleOptions:
    """Everything that decides one upscale. Sizes are in output pixels unless named `latent`."""

    scale: float = 4.0
    """Output size / input size; any value > 0 (non-integer allowed)."""
    w: float = 0.5
    """CFW fidelity weight: 0 = most generative, 1 = most faithful to the input."""
    steps: int | None = None
    """Sampling steps (of the 1000 the models were trained with); None: `resolved_steps`."""
    sampler: Sampler = Sampler.DDPM
    eta: float | None = None
    """DDIM noise level, 0 (deterministic) to 1; DDIM only; None: 0, upstream's default."""
    prompt: str = ""
    """What the image shows; "" is the empty prompt every upstream script uses."""
    negative_prompt: str | None = None
    """What to steer away from; giving one turns classifier-free guidance on (as upstream)."""
    cfg: float | None = None
    """Guidance scale; None: DEFAULT_CFG when a negative prompt is given, else no guidance.
    Given without a negative prompt, it guides against the empty prompt."""
    seed: int = 42
    color_fix: ColorFix = ColorFix.WAVELET
    tile_size: int | None = None
    """Latent tile side in pixels (multiple of 8); None: the model's native size (512 or 768)."""
    tile_overlap: int | None = None
    """Overlap of latent tiles in pixels (multiple of 8); None: half a tile, upstream's default
    (32 of 64 latent for the 512 models, 48 of 96 in the 768v README)."""
    tile_batch: int = 1
    """Latent tiles per UNet call."""
    vae_tiling: VaeTiling = VaeTiling.UPSTREAM
    vae_tile_size: int = 1280
    """Pixel patch side for vae_tiling=upstream, tile side for lean (multiple of 32)."""
    vae_tile_stride: int = 1000
    """Pixel patch stride for vae_tiling=upstream."""

    @property
    def guidance_scale(self) -> float | None:
        """The classifier-free guidance scale, or None when guidance is off."""
        if self.negative_prompt is None and self.cfg is None:
            return None
        return DEFAULT_CFG if self.cfg is None else self.cfg

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "sampler", Sampler(self.sampler))
        except ValueError:
            raise OptionError(f"--sampler must be ddpm or ddim, got {self.sampler!r}") from None
        if self.eta is not None:
            if self.sampler is not Sampler.DDIM:
                raise OptionError("--eta applies to --sampler ddim only; the DDPM sampler's noise is fixed")
            if not (0.0 <= self.eta <= 1.0):
                raise OptionError(f"--eta must be between 0 and 1, got {self.eta}")
        if self.cfg is not None and not (math.isfinite(self.cfg) and self.cfg >= 0):
            raise OptionError(f"--cfg must be a number >= 0, got {self.cfg}")
        if not (math.isfinite(self.scale) and self.scale > 0):
            raise OptionError(f"--scale must be a positive number, got {self.scale}")
        if not (0.0 <= self.w <= 1.0):
            raise OptionError(f"--w must be between 0 and 1, got {self.w}")
        if self.steps is not None and not (1 <= self.steps <= 1000):
            raise OptionError(f"--steps must be between 1 and 1000, got {self.steps}")
        if self.tile_size is not None and (self.tile_size < 64 or self.tile_size % 8):
            raise OptionError(f"--tile-size must be a multiple of 8 and at least 64, got {self.tile_size}")
        if self.tile_overlap is not None and (self.tile_overlap < 0 or self.tile_overlap % 8):
            raise OptionError(f"--tile-overlap must be a non-negative multiple of 8, got {self.tile_overlap}")
        if self.tile_size is not None and self.tile_overlap is not None and self.tile_overlap >= self.tile_size:
            raise OptionError(
                f"--tile-overlap ({self.tile_overlap}) must be smaller than --tile-size ({self.tile_size})"
            )
        if self.tile_batch < 1:
            raise OptionError(f"--tile-batch must be at least 1, got {self.tile_batch}")
        if self.vae_tile_size < 64 or self.vae_tile_size % 32:
            raise OptionError(f"--vae-tile-size must be a multiple of 32 and at least 64, got {self.vae_tile_size}")
        if not (0 < self.vae_tile_stride <= self.vae_tile_size):
            raise OptionError(
                f"--vae-tile-stride must be between 1 and --vae-tile-size ({self.vae_tile_size}), "
                f"got {self.vae_tile_stride}"
            )


def resolved_steps(options: UpscaleOptions, model_default: int) -> int:
    """The number of sampling steps: --steps if given, else the model's default, where a model
    whose DDPM default is 200 gets DDIM_DEFAULT_STEPS with the DDIM sampler (turbo keeps its 4).

    The one place this rule lives: the API's option resolution and the pipeline both ask here.
    """
    if options.steps is not None:
        return options.steps
    if options.sampler is Sampler.DDIM and model_default == DDPM_DEFAULT_STEPS:
        return DDIM_DEFAULT_STEPS
    return model_default
