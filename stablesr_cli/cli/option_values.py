"""What a user typed, turned into option values: enum choices in any case, `--tile-batch N|auto`,
pixel limits, the --json-file sink, prompt lengths, and the spellings Real-ESRGAN users bring.

Each raises a one-line `OptionError` (a usage error, exit 2) for what cannot be taken.
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import TypeVar

from ..errors import OptionError
from ..options import Precision, UpscaleOptions, VaeTiling
from .console import JsonLines, printable
from .plan import parse_format

DEFAULTS = UpscaleOptions()


_E = TypeVar("_E", bound=Enum)


def choose(kind: type[_E], value: str, flag: str) -> _E:
    """An option value among an Enum's values, in any case, or a one-line usage error."""
    try:
        return kind(value.strip().lower())
    except ValueError:
        allowed = ", ".join(str(member.value) for member in kind)
        raise OptionError(f"{flag} {value}: choose one of {allowed}") from None


class RealEsrganAliases:
    """Real-ESRGAN's and realesrgan-ncnn-vulkan's spellings, mapped onto ours (hidden in --help).

    An alias that contradicts the option it stands for is a usage error, never a silent choice.
    """

    def __init__(self, outscale: float | None, ext: str | None, fp32: bool, gpu: int | None, tile: int | None) -> None:
        self.outscale: float | None = outscale
        self.ext: str | None = ext
        self.fp32: bool = fp32
        self.gpu: int | None = gpu
        self.tile: int | None = tile

    def scale(self, scale: float) -> float:
        if self.outscale is None:
            return scale
        if scale != DEFAULTS.scale and scale != self.outscale:
            raise OptionError(f"--outscale {self.outscale:g} and --scale {scale:g} disagree; pass one of them")
        return self.outscale

    def format(self, output_format: str | None) -> str | None:
        if self.ext is None:
            return output_format
        if output_format is not None and parse_format(output_format) != parse_format(self.ext):
            raise OptionError(f"--ext {self.ext} and --format {output_format} disagree; pass one of them")
        return self.ext

    def dtype(self, precision: Precision) -> Precision:
        if not self.fp32:
            return precision
        if precision not in (Precision.AUTO, Precision.FP32):
            raise OptionError(f"--fp32 and --dtype {precision.value} disagree; pass one of them")
        return Precision.FP32

    def device(self, device: str) -> str:
        if self.gpu is None:
            return device
        if self.gpu < 0:
            raise OptionError(f"-g {self.gpu}: a GPU number is 0 or more (-g 0 is --device cuda:0)")
        wanted = f"cuda:{self.gpu}"
        if device.strip().lower() not in ("auto", wanted):
            raise OptionError(f"-g {self.gpu} and --device {device} disagree; pass one of them")
        return wanted

    def vae_tiling(self, tiling: VaeTiling) -> VaeTiling:
        if self.tile is None:
            return tiling
        if self.tile != 0:
            raise OptionError(
                f"--tile {self.tile}: stablesr has two tile sizes, in output pixels: --tile-size for the diffusion "
                "and --vae-tile-size for the autoencoders (--tile 0, no tiling, is --vae-tiling none)"
            )
        if tiling not in (DEFAULTS.vae_tiling, VaeTiling.NONE):
            raise OptionError(f"--tile 0 (no tiling) and --vae-tiling {tiling.value} disagree; pass one of them")
        return VaeTiling.NONE


def prompts_over_limit(options: UpscaleOptions) -> list[tuple[str, int]]:
    """(option, token count) of the prompts the text encoder will cut; checks the `prompts` extra."""
    given = [("--prompt", options.prompt), ("--negative-prompt", options.negative_prompt or "")]
    if not any(text for _, text in given):
        return []
    from ..api import prompt_token_count  # the tokenizer; torch comes with it, only when prompts are used

    counts = [(option, prompt_token_count(text)) for option, text in given if text]
    return [(option, tokens) for option, tokens in counts if tokens > 77]


def open_json_file(path: Path) -> JsonLines:
    try:
        # Appended, so an interrupted run and its --skip-existing resume share one log.
        # backslashreplace: a name with undecodable bytes becomes a \udcXX escape, still valid JSON
        return JsonLines(path.open("a", encoding="utf-8", errors="backslashreplace"), owned=True, name=printable(str(path)))
    except OSError as error:
        raise OptionError(f"{path}: cannot open the --json-file ({error.strerror or error})") from error


def parse_tile_batch(value: str) -> int | None:
    """`--tile-batch`: a whole number, or auto (None: as many as fit)."""
    text = value.strip().lower()
    if text == "auto":
        return None
    try:
        return int(text)
    except ValueError:
        raise OptionError(f"--tile-batch must be a whole number or auto, got {value!r}") from None


def input_pixel_limit(value: int | None) -> int | None:
    from ..imaging.io import DEFAULT_MAX_PIXELS  # PIL and numpy only; still kept off the --help path

    if value is None:
        return DEFAULT_MAX_PIXELS
    return None if value == 0 else value
