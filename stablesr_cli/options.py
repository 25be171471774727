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
    w: float | None = None
    """CFW fidelity weight: 0 = most generative, 1 = most faithful to the input; None: the model's
    default (0.5 for the general models, 0 for face)."""
    steps: int | None = None
    """Sampling steps (respaced from 1000); None: the model's default."""
    seed: int = 42
    color_fix: ColorFix = ColorFix.WAVELET
    tile_size: int | None = None
    """Latent tile side in pixels (multiple of 8); None: the model's native size (512 or 768)."""
    tile_overlap: int | None = None
    """Overlap of latent tiles in pixels (multiple of 8); None: half a tile, upstream's default
    (32 of 64 latent for the 512 models, 48 of 96 in the 768v README)."""
    tile_batch: int | None = 1
    """Latent tiles per UNet call; None: as many as fit in the device's free memory (1 on a CPU)."""
    vae_tiling: VaeTiling = VaeTiling.UPSTREAM
    vae_tile_size: int = 1280
    """Pixel patch side for vae_tiling=upstream, tile side for lean (multiple of 32)."""
    vae_tile_stride: int = 1000
    """Pixel patch stride for vae_tiling=upstream."""

    def __post_init__(self) -> None:
        if not (math.isfinite(self.scale) and self.scale > 0):
            raise OptionError(f"--scale must be a positive number, got {self.scale}")
        if self.w is not None and not (0.0 <= self.w <= 1.0):
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
        if self.tile_batch is not None and self.tile_batch < 1:
            raise OptionError(f"--tile-batch must be at least 1, got {self.tile_batch}")
        if self.vae_tile_size < 64 or self.vae_tile_size % 32:
            raise OptionError(f"--vae-tile-size must be a multiple of 32 and at least 64, got {self.vae_tile_size}")
        if not (0 < self.vae_tile_stride <= self.vae_tile_size):
            raise OptionError(
                f"--vae-tile-stride must be between 1 and --vae-tile-size ({self.vae_tile_size}), "
                f"got {self.vae_tile_stride}"
            )
