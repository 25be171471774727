"""DDIM sampling as the official negative-prompt script does it (`sr_val_ddim_text_T_negativeprompt_canvas_tile.py`).

Plain functions in the manner of k-diffusion: `ddim_schedule` builds the tables, `ddim_step` takes one
step, `sample_ddim` runs the chain over blended latent tiles (sampler.py), guided or not.

Upstream's quirks are kept, because they decide the result:
* the model keeps the plain 1000-step schedule (no respacing);
* the UNet and the time-aware encoder see the timesteps of `space_timesteps(1000, [S])` (0 ... 999),
  while the DDIM coefficients come from another grid, `range(0, 1000, 1000 // S)` (0 ... 996 for
  S = 6; no "+1" shift, and alpha_bar_prev of the first entry is alpha_bar[0], not 1);
* a v prediction is turned into eps with the coefficient grid's alpha_bar, after guidance and
  tile blending;
* x_T is pure noise: the script first draws q_sample noise for the LR latent and throws it away,
  so `ddim_start` draws and discards it too, keeping a seed's stream the official one;
* one noise draw per step, also where sigma is 0 (eta = 0, and always at the last step).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from ..progress import ProgressEvent
from .noise import NoiseSource
from .sampler import Denoiser, LatentTiling, denoise_step
from .schedule import NUM_TRAIN_TIMESTEPS, Prediction, base_schedule, coefficient, space_timesteps


@dataclass(frozen=True)
class DdimSchedule:
    """The tables of upstream's `DDIMSampler.make_schedule`, cut to the steps that are taken.

    Index `index` (0 = least noisy) of every table belongs to the loop position whose network
    timestep is `timesteps[index]`.
    """

    timesteps: Tensor
    """int64 [S], ascending: what the UNet and the time-aware encoder receive."""
    coefficient_timesteps: Tensor
    """int64 [S]: the uniform grid the coefficients are read at (upstream's `ddim_timesteps`)."""
    alphas: Tensor
    """float32 [S]: alpha_bar at the coefficient grid."""
    alphas_prev: Tensor
    """float32 [S]: alpha_bar one grid entry earlier; alpha_bar[0] for the first."""
    sigmas: Tensor
    """float32 [S]: computed in float64 as upstream, rounded to float32 where its step reads them."""
    sqrt_one_minus_alphas: Tensor
    """float32 [S]: sqrt(1 - alpha_bar), computed in float32 as upstream."""

    @property
    def num_steps(self) -> int:
        return int(self.timesteps.shape[0])


def ddim_schedule(num_steps: int, eta: float = 0.0) -> DdimSchedule:
    """The DDIM tables for `num_steps` steps and noise level `eta` (0: deterministic, 1: DDPM-like)."""
    timesteps = space_timesteps(num_steps)
    # make_ddim_timesteps("uniform"): with 1000 % S != 0 the grid is longer than S; its tail is never read
    grid = list(range(0, NUM_TRAIN_TIMESTEPS, NUM_TRAIN_TIMESTEPS // num_steps))[: len(timesteps)]
    alphas_cumprod = base_schedule().alphas_cumprod  # float32, as the model's buffer
    alphas = alphas_cumprod[grid]
    alphas_prev = torch.cat([alphas_cumprod[:1], alphas[:-1]])
    # make_ddim_sampling_parameters mixes float64 numpy with float32 torch: 1 - alpha_bar is rounded
    # to float32, everything else is float64 on the float32 values
    prev64, alphas64 = alphas_prev.double(), alphas.double()
    one_minus = (1 - alphas).double()
    sigmas = eta * torch.sqrt((1 - prev64) / one_minus * (1 - alphas64 / prev64))
    return DdimSchedule(
        timesteps=torch.tensor(timesteps, dtype=torch.int64),
        coefficient_timesteps=torch.tensor(grid, dtype=torch.int64),
        alphas=alphas,
        alphas_prev=alphas_prev,
        sigmas=sigmas.to(torch.float32),
        sqrt_one_minus_alphas=torch.sqrt(1.0 - alphas),
    )


def ddim_step(
    model_out: Tensor, z_t: Tensor, index: int, schedule: DdimSchedule, prediction: Prediction, noise: Tensor
) -> tuple[Tensor, Tensor]:
    """One DDIM step at table index `index` -> (z_prev, z0_hat), in float32 as upstream.

    eps = model_out (eps models) or sqrt(a) * v + sqrt(1 - a) * z_t (v models);
    z0_hat = (z_t - sqrt(1 - a) * eps) / sqrt(a), never clamped;
    z_prev = sqrt(a_prev) * z0_hat + sqrt(1 - a_prev - sigma^2) * eps + sigma * noise.
    """
    if not 0 <= index < schedule.num_steps:
        raise ValueError(f"DDIM index must be between 0 and {schedule.num_steps - 1}, got {index}")
    a_t = coefficient(schedule.alphas, index, z_t)
    a_prev = coefficient(schedule.alphas_prev, index, z_t)
    sigma = coefficient(schedule.sigmas, index, z_t)
    sqrt_one_minus_a = coefficient(schedule.sqrt_one_minus_alphas, index, z_t)
    eps = model_out
    if Prediction(prediction) is Prediction.V:
        eps = a_t.sqrt() * model_out + sqrt_one_minus_a * z_t
    z0 = (z_t - sqrt_one_minus_a * eps) / a_t.sqrt()
    direction = (1.0 - a_prev - sigma**2).sqrt() * eps
    return a_prev.sqrt() * z0 + direction + sigma * noise, z0


def ddim_start(z_lq: Tensor, noise: NoiseSource) -> Tensor:
    """x_T for the DDIM script: pure noise, after drawing (and discarding) the LR latent's q_sample noise.

    The discarded draw follows the latent's channels_last layout like upstream's `randn_like`; the
    kept one is a plain `randn(shape)`.
    """
    shape = tuple(z_lq.shape)
    noise.draw(shape, channels_last=True)
    return noise.draw(shape).to(z_lq.device)


def sample_ddim(
    denoiser: Denoiser,
    z_start: Tensor,
    z_lq: Tensor,
    schedule: DdimSchedule,
    noise: NoiseSource,
    tiling: LatentTiling | None = None,
    progress: Callable[[ProgressEvent], None] | None = None,
    on_step: Callable[[int, Tensor, Tensor], None] | None = None,
) -> Tensor:
    """Run the DDIM chain from z_start (x_T) to the clean latent.

    `on_step(k, z, z0_hat)` sees the latent after the k-th executed step and that step's predicted
    clean latent (the parity tests compare both).
    """
    z = z_start.to(torch.float32)
    total = schedule.num_steps
    for k, index in enumerate(reversed(range(total))):
        out = denoise_step(denoiser, z, z_lq, int(schedule.timesteps[index]), tiling, progress, k, total)
        step_noise = noise.draw(tuple(z.shape)).to(z.device)
        z, z0 = ddim_step(out, z, index, schedule, denoiser.prediction, step_noise)
        if on_step is not None:
            on_step(k, z, z0)
        if progress is not None:
            progress(ProgressEvent("sample", step=k + 1, total_steps=total))
    return z
