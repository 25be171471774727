"""The denoising loop: respaced DDPM steps over Gaussian-blended latent tiles (upstream `p_sample_loop_canvas`).

At every step each tile's low-resolution latent goes through the time-aware encoder at the step's
original timestep, the UNet predicts eps or v for the tile, the predictions are blended with
Gaussian weights into one full-size prediction, and ONE ancestral step is taken on the whole latent.
A latent no larger than a tile is simply a single tile: there is no separate untiled path.
With classifier-free guidance the UNet sees every tile twice (negative and positive context) and
the blended prediction is the guided one; the DDIM sampler (ddim.py) shares all of this.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from ..progress import ProgressEvent
from .noise import NoiseSource, to_device
from .schedule import Prediction, Schedule, ddpm_step
from .tiling import GaussianBlender, Tile, latent_tiles


@dataclass(frozen=True)
class LatentTiling:
    tile: int
    """Tile side in latent pixels (64 for the 512 models, 96 for 768v)."""
    overlap: int
    """Overlap of neighbouring tiles in latent pixels (upstream default 32)."""
    batch: int = 1
    """Tiles per UNet call; results do not depend on it (every op is per sample)."""
    pad_batch: bool = False
    """Fill a short last batch with copies of its last tile (outputs discarded), so that every call
    of one image has the same shape: compiled networks then never recompile between tiles."""


@dataclass(frozen=True)
class Guidance:
    """Classifier-free guidance: out = out_negative + scale * (out_positive - out_negative)."""

    negative_context: torch.Tensor
    """Cross-attention context [1, L, D] of the negative prompt (the empty prompt's by default)."""
    scale: float
    """Upstream's `--scale`, 7.0 by default; at 1.0 upstream skips guidance, and so do we."""


@dataclass(frozen=True)
class Denoiser:
    """The two networks of one sampling step and what they share."""

    unet: nn.Module
    time_encoder: nn.Module
    context: torch.Tensor
    """Cross-attention context [1, L, D], e.g. the empty prompt's."""
    prediction: Prediction
    guidance: Guidance | None = None

    def predict(self, z_t: torch.Tensor, z_lq: torch.Tensor, t: int) -> torch.Tensor:
        """eps or v for a batch of tiles, with structure features from the matching LR-latent tiles.

        Guided, the UNet runs on [tiles, tiles] with contexts [negative, positive], as upstream's
        `p_sample_ddim_sr_tcanvas`. Upstream also runs the time-aware encoder on the doubled batch;
        both halves are the same LR tiles at the same timestep, so its features are computed once
        and repeated (identical values, half the encoder work).
        """
        param = next(self.unet.parameters())
        batch = z_t.shape[0]
        timesteps = torch.full((batch,), t, dtype=torch.long, device=param.device)
        z_lq = z_lq.to(device=param.device, dtype=param.dtype)
        z_t = z_t.to(device=param.device, dtype=param.dtype)
        structure = self.time_encoder(z_lq, timesteps)
        context = self.context.to(device=param.device, dtype=param.dtype).expand(batch, -1, -1)
        if self.guidance is None or self.guidance.scale == 1.0:
            return self.unet(z_t, timesteps, context, structure).to(torch.float32)
        negative = self.guidance.negative_context.to(device=param.device, dtype=param.dtype).expand(batch, -1, -1)
        out = self.unet(
            torch.cat([z_t, z_t]),
            torch.cat([timesteps, timesteps]),
            torch.cat([negative, context]),
            [torch.cat([feature, feature]) for feature in structure],
        ).to(torch.float32)
        out_negative, out_positive = out.chunk(2)
        return out_negative + self.guidance.scale * (out_positive - out_negative)


def blended_prediction(
    denoiser: Denoiser, z_t: torch.Tensor, z_lq: torch.Tensor, t: int, tiling: LatentTiling | None,
    on_tile: Callable[[int, int], None] | None = None,
) -> torch.Tensor:
    """The network output for the whole latent, tile by tile, blended with upstream's Gaussian weights."""
    height, width = z_t.shape[-2:]
    if tiling is None:
        tiles = [Tile(0, 0, height, width)]
        batch = 1
    else:
        tiles = latent_tiles(height, width, tiling.tile, tiling.overlap)
        batch = tiling.batch
    blender = GaussianBlender(tuple(z_t.shape), dtype=torch.float32, device=z_t.device)
    padded = tiling is not None and tiling.pad_batch
    for start in range(0, len(tiles), batch):
        group = tiles[start:start + batch]
        # never pad past the image's tile count: a one-tile image runs a batch of one
        fill = [group[-1]] * (min(batch, len(tiles)) - len(group)) if padded else []
        out = denoiser.predict(
            torch.cat([z_t[tile.slices] for tile in group + fill]),
            torch.cat([z_lq[tile.slices] for tile in group + fill]),
            t,
        ).to(z_t.device)
        for k, tile in enumerate(group):
            blender.add(tile, out[k:k + 1])
        if on_tile is not None:
            on_tile(start + len(group), len(tiles))
    return blender.result().to(torch.float32)


def denoise_step(
    denoiser: Denoiser,
    z_t: torch.Tensor,
    z_lq: torch.Tensor,
    t: int,
    tiling: LatentTiling | None,
    progress: Callable[[ProgressEvent], None] | None,
    step: int,
    total: int,
) -> torch.Tensor:
    """The blended network output of sampling step `step` of `total`, reporting each tile batch."""

    def on_tile(done: int, count: int) -> None:
        if progress is not None:
            progress(ProgressEvent("sample", step=step, total_steps=total, tile=done, total_tiles=count))

    return blended_prediction(denoiser, z_t, z_lq, t, tiling, on_tile)


def sample(
    denoiser: Denoiser,
    z_start: torch.Tensor,
    z_lq: torch.Tensor,
    schedule: Schedule,
    noise: NoiseSource,
    tiling: LatentTiling | None = None,
    progress: Callable[[ProgressEvent], None] | None = None,
    on_step: Callable[[int, torch.Tensor], None] | None = None,
) -> torch.Tensor:
    """Run the respaced chain from z_start (x_T) down to the clean latent.

    z_start, z_lq: [1, 4, h, w] float32; the noise source is drawn once per step (also at the last
    step, whose draw upstream multiplies by 0) so that the stream stays upstream's.
    `on_step(k, z)` sees the latent after the k-th executed step (used by the parity tests).
    """
    z = z_start.to(torch.float32)
    total = schedule.num_steps
    timesteps = [int(t) for t in schedule.timesteps.tolist()]
    schedule = schedule.to(z.device)
    for k, i in enumerate(reversed(range(total))):
        out = denoise_step(denoiser, z, z_lq, timesteps[i], tiling, progress, k, total)
        step_noise = to_device(noise.draw(tuple(z.shape)), z.device)
        z = ddpm_step(out, z, i, schedule, denoiser.prediction, step_noise)
        if on_step is not None:
            on_step(k, z)
        if progress is not None:
            progress(ProgressEvent("sample", step=k + 1, total_steps=total))
    return z
