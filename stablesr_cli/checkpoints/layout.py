"""The layout of a converted folder: one safetensors file per component, by fixed names.

Standard library only, so the weights store and `stablesr weights list` can find and check
converted files without importing torch.
"""

from __future__ import annotations

from pathlib import Path

FORMAT = "stablesr/1"
"""`format` metadata value of every converted file; bump when the layout changes."""

COMPONENT_FILES: dict[str, str] = {
    "unet": "unet.safetensors",
    "time_encoder": "time_encoder.safetensors",
    "vae": "vae.safetensors",
    "text_encoder": "text_encoder.safetensors",
    "cfw": "cfw.safetensors",
    "context_empty": "context_empty.safetensors",
    "unet_ema": "unet_ema.safetensors",
}
SR_COMPONENTS = ("unet", "time_encoder", "vae", "text_encoder")
REQUIRED_COMPONENTS = ("unet", "time_encoder", "vae", "context_empty", "cfw")
"""What an upscale needs; the text encoder is converted too but the default path never loads it."""
CONTEXT_TENSOR = "context"
"""Name of the [1, 77, width] tensor inside context_empty.safetensors."""


def find_converted(folder: str | Path) -> dict[str, Path]:
    """Component -> path of the converted files present in `folder` (by their standard names)."""
    folder = Path(folder)
    return {name: folder / file for name, file in COMPONENT_FILES.items() if (folder / file).is_file()}
