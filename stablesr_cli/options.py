"""User-facing choices and the options of one upscale, validated with human messages.

Standard library only: the CLI imports this before (and without) torch.
"""

from __future__ import annotations

import math
import os
import string
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


SEED_RANGE = range(0, 2**64)
"""What torch.Generator.manual_seed accepts without wrapping or overflowing."""

DEFAULT_MAX_OUTPUT_PIXELS = 16384 * 16384
"""268 megapixels: a 4x upscale of a 16-megapixel photo fits; a 1x20000 strip enlarged to a
512-pixel short side (5 gigapixels, hundreds of GB of activations) does not."""


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
    vae_tile_stride: int | None = None
    """Pixel patch stride for vae_tiling=upstream (ignored otherwise); None: `patch_stride`'s default,
    which follows vae_tile_size."""
    max_output_pixels: int | None = DEFAULT_MAX_OUTPUT_PIXELS
    """Refuse an image whose output, or the enlarged canvas it is worked on, would have more pixels
    than this (None: no limit). The memory the work needs is checked against the machine as well."""

    def __post_init__(self) -> None:
        if not (math.isfinite(self.scale) and self.scale > 0):
            raise OptionError(f"scale must be a positive number, got {self.scale}", options=("scale",))
        if self.w is not None and not (0.0 <= self.w <= 1.0):
            raise OptionError(f"w must be between 0 and 1, got {self.w}", options=("w",))
        if self.steps is not None and not (1 <= self.steps <= 1000):
            raise OptionError(f"steps must be between 1 and 1000, got {self.steps}", options=("steps",))
        if self.tile_size is not None and (self.tile_size < 64 or self.tile_size % 8):
            raise OptionError(f"tile_size must be a multiple of 8 and at least 64, got {self.tile_size}", options=("tile_size",))
        if self.tile_overlap is not None and (self.tile_overlap < 0 or self.tile_overlap % 8):
            raise OptionError(f"tile_overlap must be a non-negative multiple of 8, got {self.tile_overlap}", options=("tile_overlap",))
        if self.tile_size is not None and self.tile_overlap is not None and self.tile_overlap >= self.tile_size:
            raise OptionError(
                f"tile_overlap ({self.tile_overlap}) must be smaller than tile_size ({self.tile_size})",
                options=("tile_overlap", "tile_size"),
            )
        if self.seed not in SEED_RANGE:
            raise OptionError(f"seed must be between 0 and {SEED_RANGE.stop - 1}, got {self.seed}", options=("seed",))
        if self.max_output_pixels is not None and self.max_output_pixels < 1:
            raise OptionError(
                f"max_output_pixels must be positive (None: no limit), got {self.max_output_pixels}",
                options=("max_output_pixels",),
            )
        if self.tile_batch is not None and self.tile_batch < 1:
            raise OptionError(f"tile_batch must be at least 1, got {self.tile_batch}", options=("tile_batch",))
        if self.vae_tile_size < 64 or self.vae_tile_size % 32:
            raise OptionError(f"vae_tile_size must be a multiple of 32 and at least 64, got {self.vae_tile_size}", options=("vae_tile_size",))
        if self.vae_tiling is VaeTiling.UPSTREAM and not (0 < self.patch_stride <= self.vae_tile_size):
            raise OptionError(
                f"vae_tile_stride must be between 1 and vae_tile_size ({self.vae_tile_size}), got {self.vae_tile_stride}",
                options=("vae_tile_stride", "vae_tile_size"),
            )
        if self.vae_tiling is VaeTiling.UPSTREAM and self.tile_size is not None and self.vae_tile_size < self.tile_size:
            raise OptionError(
                f"vae_tile_size ({self.vae_tile_size}) must be at least tile_size ({self.tile_size}) "
                "with vae_tiling upstream: each pixel patch holds whole diffusion tiles",
                options=("vae_tile_size", "tile_size", "vae_tiling"),
            )

    @property
    def patch_stride(self) -> int:
        """The stride between pixel patches: as given, or upstream's 1000 per 1280 pixels of patch
        (25/32), so that a smaller vae_tile_size keeps upstream's overlap without a second setting."""
        if self.vae_tile_stride is not None:
            return self.vae_tile_stride
        return self.vae_tile_size * 25 // 32


def check_suffix(template: str) -> None:
    """An output-name suffix may hold literal text and `{scale}`, nothing that leaves the folder.

    Anything else in braces is refused rather than formatted: a format spec such as
    `{scale:>2000000000}` would build a gigabyte-long name before any file system could refuse it.
    """
    separators = {"/", "\\", os.sep, os.altsep or "/", "\0"}
    if any(character in template for character in separators):
        raise OptionError(f"--suffix {template!r} may not contain a path separator (or NUL); it is added to file names")
    try:
        fields = [(name, spec, conversion) for _, name, spec, conversion in string.Formatter().parse(template) if name is not None]
    except ValueError as error:
        raise OptionError(f"--suffix {template!r} is not a valid name template ({error})") from None
    if any((name, spec, conversion) != ("scale", "", None) for name, spec, conversion in fields):
        raise OptionError(f"--suffix {template!r}: only {{scale}} may appear in braces (use {{{{ and }}}} for literal braces)")
