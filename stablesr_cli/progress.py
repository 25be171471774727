"""The progress payload the library reports through a callback; the CLI draws it, the library never prints."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class ProgressEvent:
    stage: str
    """'encode', 'sample', 'decode', 'colorfix', or 'retry' (after running out of memory; see `message`)."""
    step: int = 0
    """Sampling steps done so far (stage 'sample')."""
    total_steps: int = 0
    tile: int = 0
    """Latent tiles done within the current step."""
    total_tiles: int = 0
    patch: int = 0
    """Pixel patches done (vae_tiling=upstream); 0-based index of the current one."""
    total_patches: int = 1
    message: str = ""
    """What happened, for people (stage 'retry')."""


ProgressCallback = Callable[[ProgressEvent], None]
