"""stablesr: StableSR diffusion super-resolution in plain PyTorch.

Importing this package is cheap (no torch); the heavy API is loaded on first use.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__", "Upscaler", "UpscaleOptions"]


def __getattr__(name: str):  # lazy re-exports keep `stablesr --help` fast
    if name == "Upscaler":
        from .api import Upscaler

        return Upscaler
    if name == "UpscaleOptions":
        from .options import UpscaleOptions

        return UpscaleOptions
    raise AttributeError(name)
