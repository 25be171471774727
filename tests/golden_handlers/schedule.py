"""05_schedule: the 1000-step linear schedule and its respacings, built by pipeline.schedule."""

from __future__ import annotations

import torch

from golden_support import GoldenCase, handles
from stablesr_cli.pipeline import schedule as sched

# The twelve buffers of upstream's register_schedule, by their upstream names.
BUFFERS = (
    "betas",
    "alphas_cumprod",
    "alphas_cumprod_prev",
    "sqrt_alphas_cumprod",
    "sqrt_one_minus_alphas_cumprod",
    "log_one_minus_alphas_cumprod",
    "sqrt_recip_alphas_cumprod",
    "sqrt_recipm1_alphas_cumprod",
    "posterior_variance",
    "posterior_log_variance_clipped",
    "posterior_mean_coef1",
    "posterior_mean_coef2",
)


def _check_config(config: dict) -> None:
    # The case names the schedule it was made with; ours is fixed, so a different one must fail loudly.
    expected = {
        "beta_schedule": "linear",
        "timesteps": sched.NUM_TRAIN_TIMESTEPS,
        "linear_start": sched.LINEAR_START,
        "linear_end": sched.LINEAR_END,
    }
    for key, value in expected.items():
        if config.get(key) != value:
            raise AssertionError(f"05_schedule config {key}={config.get(key)!r}, pipeline.schedule implements {value!r}")


@handles("ldm.modules.diffusionmodules.util.make_beta_schedule; DDPM.register_schedule; space_timesteps")
def schedule_case(case: GoldenCase) -> dict[str, torch.Tensor]:
    config = case.config
    _check_config(config)
    # The case's float32 "linear1000" buffers are those of a LatentDiffusionSRTextWT right after
    # construction: its __init__ respaces to `time_replace` (default: all 1000 steps) through the
    # float32 walk, so they equal respaced_schedule(1000), which is also what the DDPM scripts
    # sample with at --ddpm_steps 1000. They differ from the float64-derived base_schedule() (the
    # scripts' re-registered tables, used for x_T) by float32 rounding in betas and the sqrt
    # tables only; alphas_cumprod and every value at t=999 are identical (tests/test_schedule.py).
    base = sched.respaced_schedule(int(config["timesteps"]))
    base_name = f"output.{config['beta_schedule']}{config['timesteps']}"
    produced: dict[str, torch.Tensor] = {
        f"{base_name}.betas_float64": torch.from_numpy(sched.linear_betas()),
        f"{base_name}.alphas_cumprod_float64": torch.from_numpy(sched.linear_alphas_cumprod()),
    }
    for buffer in BUFFERS:
        produced[f"{base_name}.{buffer}"] = getattr(base, buffer)
    for steps in config["ddpm_steps"]:
        respaced = sched.respaced_schedule(int(steps))
        name = f"output.respace{steps}"
        produced[f"{name}.timesteps"] = respaced.timesteps
        produced[f"{name}.given_betas"] = respaced.given_betas
        for buffer in BUFFERS:
            produced[f"{name}.{buffer}"] = getattr(respaced, buffer)
    return produced
