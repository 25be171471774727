"""The DDPM noise schedule, its respacing to N steps, and one ancestral step (upstream `respace.py`, `ddpm.py`).

Everything here reproduces the official code's arithmetic, dtype by dtype, because the respaced
tables feed a 1/sqrt(alpha_bar) ~ 15x gain at t=999: a float64 derivation cast once differs from
upstream by a few float32 ulps, which the sampler then amplifies step after step.

* Base schedule: betas = linspace(sqrt(0.00085), sqrt(0.012), 1000, float64) ** 2, every derived
  table computed in float64 numpy and stored as float32.
* Respacing: keep `space_timesteps(N)` of the 1000 steps; new betas come from the FLOAT32
  alpha_bar table walked in float32, and the same formulas are then evaluated in float32 numpy
  (except alpha_bar_prev, which prepends a float64 1.0 and so promotes what it touches).
* Networks see the original timestep tau_i (`Schedule.timesteps[i]`); every coefficient uses the
  respaced index i; swapping the two still runs and silently gives a wrong image.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

import numpy as np
import torch
from torch import Tensor

NUM_TRAIN_TIMESTEPS = 1000
LINEAR_START = 0.00085
LINEAR_END = 0.0120

# posterior_log_variance_clipped floors the variance here; it is 0 at the first respaced step.
_LOG_VARIANCE_FLOOR = 1e-20


class Prediction(str, Enum):
    """What the UNet predicts: the noise (SD 2 512 / Turbo) or v (768v, face)."""

    EPS = "eps"
    V = "v"


@dataclass(frozen=True)
class Schedule:
    """The twelve float32 tables of upstream's `register_schedule`, plus the kept timesteps.

    Index i of every table is the respaced index (0 = least noisy); `timesteps[i]` is the original
    0..999 timestep that the UNet and the time-aware encoder receive at that index.
    """

    timesteps: Tensor
    """int64 [N], ascending: the original timesteps tau_i kept by the respacing."""
    betas: Tensor
    alphas_cumprod: Tensor
    alphas_cumprod_prev: Tensor
    sqrt_alphas_cumprod: Tensor
    sqrt_one_minus_alphas_cumprod: Tensor
    log_one_minus_alphas_cumprod: Tensor
    sqrt_recip_alphas_cumprod: Tensor
    sqrt_recipm1_alphas_cumprod: Tensor
    posterior_variance: Tensor
    posterior_log_variance_clipped: Tensor
    posterior_mean_coef1: Tensor
    posterior_mean_coef2: Tensor

    @property
    def num_steps(self) -> int:
        return int(self.betas.shape[0])

    @property
    def given_betas(self) -> Tensor:
        """The betas handed to `register_schedule`; stored unchanged as `betas` (float32 -> float32)."""
        return self.betas

    def to(self, device: torch.device | str) -> "Schedule":
        """The same schedule with every coefficient table on `device` (values unchanged), moved once
        so that no sampling step copies from the host. `timesteps` stays on the CPU: the sampler
        reads them as Python ints, which on an accelerator would wait for the device every step."""
        moved = {
            name: getattr(self, name) if name == "timesteps" else getattr(self, name).to(device)
            for name in self.__dataclass_fields__
        }
        return Schedule(**moved)


def space_timesteps(num_steps: int) -> list[int]:
    """The original timesteps kept when sampling with `num_steps` steps, ascending.

    guided-diffusion's rule with one section of 1000 steps: the k-th kept step is round(k * stride)
    with stride = 999 / (N - 1) ACCUMULATED as a float sum, and Python's round (half to even). The
    accumulation error is part of the result (e.g. N=50 keeps 489, not 490), so it is kept as is.
    """
    if not 1 <= num_steps <= NUM_TRAIN_TIMESTEPS:
        raise ValueError(f"number of DDPM steps must be between 1 and {NUM_TRAIN_TIMESTEPS}, got {num_steps}")
    stride = 1.0 if num_steps == 1 else (NUM_TRAIN_TIMESTEPS - 1) / (num_steps - 1)
    kept: set[int] = set()
    position = 0.0
    for _ in range(num_steps):
        kept.add(round(position))
        position += stride
    return sorted(kept)


def linear_betas() -> np.ndarray:
    """The 1000 base betas in float64, computed with torch's linspace exactly as upstream does."""
    roots = torch.linspace(LINEAR_START**0.5, LINEAR_END**0.5, NUM_TRAIN_TIMESTEPS, dtype=torch.float64)
    return (roots**2).numpy()


def linear_alphas_cumprod() -> np.ndarray:
    """alpha_bar of the base schedule in float64, before upstream's float32 storage."""
    return np.cumprod(1.0 - linear_betas(), axis=0)


def schedule_from_betas(betas: np.ndarray, timesteps: list[int]) -> Schedule:
    """Upstream's `register_schedule` for the given betas, in the betas' own numpy dtype.

    numpy's promotion rules are part of the result: with float32 betas everything stays float32
    except where alpha_bar_prev (float64 because of the prepended Python 1.0) enters.
    """
    if betas.ndim != 1 or betas.shape[0] != len(timesteps):
        raise ValueError(f"need one beta per kept timestep, got {betas.shape} betas for {len(timesteps)} timesteps")
    alphas = 1.0 - betas
    alphas_cumprod = np.cumprod(alphas, axis=0)
    alphas_cumprod_prev = np.append(1.0, alphas_cumprod[:-1])
    # v_posterior = 0 upstream: the posterior variance is the "small" fixed variance of the chain.
    posterior_variance = betas * (1.0 - alphas_cumprod_prev) / (1.0 - alphas_cumprod)

    def f32(values: np.ndarray) -> Tensor:
        return torch.tensor(values, dtype=torch.float32)

    return Schedule(
        timesteps=torch.tensor(timesteps, dtype=torch.int64),
        betas=f32(betas),
        alphas_cumprod=f32(alphas_cumprod),
        alphas_cumprod_prev=f32(alphas_cumprod_prev),
        sqrt_alphas_cumprod=f32(np.sqrt(alphas_cumprod)),
        sqrt_one_minus_alphas_cumprod=f32(np.sqrt(1.0 - alphas_cumprod)),
        log_one_minus_alphas_cumprod=f32(np.log(1.0 - alphas_cumprod)),
        sqrt_recip_alphas_cumprod=f32(np.sqrt(1.0 / alphas_cumprod)),
        sqrt_recipm1_alphas_cumprod=f32(np.sqrt(1.0 / alphas_cumprod - 1)),
        posterior_variance=f32(posterior_variance),
        posterior_log_variance_clipped=f32(np.log(np.maximum(posterior_variance, _LOG_VARIANCE_FLOOR))),
        posterior_mean_coef1=f32(betas * np.sqrt(alphas_cumprod_prev) / (1.0 - alphas_cumprod)),
        posterior_mean_coef2=f32((1.0 - alphas_cumprod_prev) * np.sqrt(alphas) / (1.0 - alphas_cumprod)),
    )


def base_schedule() -> Schedule:
    """The 1000-step linear schedule (float64 maths, float32 tables)."""
    return schedule_from_betas(linear_betas(), list(range(NUM_TRAIN_TIMESTEPS)))


def respaced_schedule(num_steps: int) -> Schedule:
    """The schedule the DDPM scripts sample with for `--ddpm_steps num_steps`.

    beta'_i = 1 - alpha_bar[tau_i] / alpha_bar[tau_{i-1}] (alpha_bar[tau_{-1}] = 1), evaluated in
    float32 on the float32 base table, then `register_schedule` on those float32 betas.
    """
    kept = space_timesteps(num_steps)
    alphas_cumprod = base_schedule().alphas_cumprod
    kept_index = torch.tensor(kept, dtype=torch.int64)
    current = alphas_cumprod[kept_index]
    previous = torch.cat([torch.ones(1, dtype=torch.float32), current[:-1]])
    new_betas = 1 - current / previous
    return schedule_from_betas(new_betas.numpy(), kept)


def _coefficient(table: Tensor, index: int, like: Tensor) -> Tensor:
    """table[index] as a float32 [1, 1, ...] tensor on like's device.

    Shaped with like's rank (as upstream's `extract_into_tensor`), not 0-d: a 0-d float32 tensor
    would lose type promotion against a float16 latent, a dimensioned one promotes it to float32.
    """
    return table[index].to(like.device).reshape((1,) * like.ndim)


def _check_index(index: int, schedule: Schedule) -> None:
    if not 0 <= index < schedule.num_steps:
        raise ValueError(f"respaced index must be between 0 and {schedule.num_steps - 1}, got {index}")


def _prediction(prediction: Prediction | str) -> Prediction:
    try:
        return Prediction(prediction)
    except ValueError:
        allowed = ", ".join(p.value for p in Prediction)
        raise ValueError(f"unknown prediction type {prediction!r}; allowed: {allowed}") from None


def q_sample_start(z_lq: Tensor, noise: Tensor, base: Schedule | None = None) -> Tensor:
    """x_T = sqrt(alpha_bar_999) * z_lq + sqrt(1 - alpha_bar_999) * noise, on the BASE tables.

    The canvas scripts start from the noised LR latent with the 1000-step tables they copied before
    respacing (`q_sample_respace`), whatever the number of sampling steps.
    """
    base = base_schedule() if base is None else base
    if base.num_steps != NUM_TRAIN_TIMESTEPS:
        raise ValueError(f"x_T needs the {NUM_TRAIN_TIMESTEPS}-step base schedule, got one with {base.num_steps} steps")
    last = NUM_TRAIN_TIMESTEPS - 1
    return (
        _coefficient(base.sqrt_alphas_cumprod, last, z_lq) * z_lq
        + _coefficient(base.sqrt_one_minus_alphas_cumprod, last, z_lq) * noise
    )


def predict_z0(
    model_out: Tensor, z_t: Tensor, i: int, schedule: Schedule, prediction: Prediction | str
) -> Tensor:
    """The clean latent implied by the network output at respaced index i (never clamped, as upstream's p_sample)."""
    kind = _prediction(prediction)
    _check_index(i, schedule)
    if kind is Prediction.EPS:
        return (
            _coefficient(schedule.sqrt_recip_alphas_cumprod, i, z_t) * z_t
            - _coefficient(schedule.sqrt_recipm1_alphas_cumprod, i, z_t) * model_out
        )
    return (
        _coefficient(schedule.sqrt_alphas_cumprod, i, z_t) * z_t
        - _coefficient(schedule.sqrt_one_minus_alphas_cumprod, i, z_t) * model_out
    )


def ddpm_step(
    model_out: Tensor,
    z_t: Tensor,
    i: int,
    schedule: Schedule,
    prediction: Prediction | str,
    noise: Tensor,
) -> Tensor:
    """One ancestral step from respaced index i to i - 1 (upstream `LatentDiffusionSRTextWT.p_sample`).

    mean = coef1_i * z0 + coef2_i * z_t; z_{i-1} = mean + [i > 0] * exp(0.5 * logvar_i) * noise.
    Upstream draws `noise` at every step, the last one included, and multiplies it by 0 at i = 0;
    the caller draws it so the RNG stream stays upstream's.
    """
    z0 = predict_z0(model_out, z_t, i, schedule, prediction)
    mean = _coefficient(schedule.posterior_mean_coef1, i, z_t) * z0 + _coefficient(
        schedule.posterior_mean_coef2, i, z_t
    ) * z_t
    nonzero = 1.0 if i > 0 else 0.0
    std = (0.5 * _coefficient(schedule.posterior_log_variance_clipped, i, z_t)).exp() * nonzero
    return mean + std * noise
