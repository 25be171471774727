"""Golden handler for 09: DDIM over canvas tiles, eps and v, unguided and with classifier-free guidance."""

from __future__ import annotations

import torch

from golden_handlers.sampling import case_networks
from golden_support import GoldenCase, handles
from stablesr_cli.pipeline.ddim import ddim_schedule, sample_ddim
from stablesr_cli.pipeline.noise import ReplayNoise
from stablesr_cli.pipeline.sampler import Denoiser, Guidance, LatentTiling
from stablesr_cli.pipeline.schedule import Prediction


def check_tables(case: GoldenCase, run: str, steps: int, eta: float) -> None:
    """Our DDIM tables against the ones upstream's sampler held (metadata `ddim_tables`)."""
    schedule = ddim_schedule(steps, eta)
    want = case.meta_json("ddim_tables")[run]
    ours = {
        "ddim_timesteps": schedule.coefficient_timesteps.tolist(),
        "ddim_alphas": schedule.alphas.tolist(),
        "ddim_alphas_prev": schedule.alphas_prev.tolist(),
        "ddim_sigmas": schedule.sigmas.tolist(),
    }
    for name, values in ours.items():
        expected = want[name][: len(values)]  # upstream's grid may be longer; its tail is never read
        if name == "ddim_sigmas":  # float64 upstream, read in float32 by its step: equal as float32
            expected = torch.tensor(expected, dtype=torch.float32).tolist()
        if values != expected:
            raise AssertionError(f"{run}: {name} {values} differ from upstream's {expected}")


@handles("DDIMSampler.make_schedule / ddim_sampling_sr_t_canvas / p_sample_ddim_sr_tcanvas")
def ddim_sampling(case: GoldenCase) -> dict[str, torch.Tensor]:
    run_cfg = case.config["ddim"]
    unet, encoder = case_networks(case)
    steps = run_cfg["ddim_steps"]
    draws = [case.tensors[f"input.noise.{i}"] for i in range(len(case.inputs("noise")))]
    z_lq, context = case.input("lr_latent"), case.input("context")
    tiling = LatentTiling(run_cfg["tile_size"], run_cfg["tile_overlap"], run_cfg["batch_size"])
    runs = [(p, "cond", 0.0) for p in run_cfg["parameterizations"]]
    runs += [(p, "cfg", eta) for p in run_cfg["parameterizations"] for eta in run_cfg["etas"]]
    produced: dict[str, torch.Tensor] = {}
    for prediction, mode, eta in runs:
        name = f"{prediction}_{mode}_eta{eta:g}".replace(".", "p")
        schedule = ddim_schedule(steps, eta)
        if schedule.timesteps.tolist() != case.input("timesteps").tolist():
            raise AssertionError(f"DDIM timesteps {schedule.timesteps.tolist()} differ from the case's")
        check_tables(case, name, steps, eta)
        guidance = Guidance(case.input("uncond_context"), run_cfg["guidance_scale"]) if mode == "cfg" else None
        denoiser = Denoiser(unet, encoder, context, Prediction(prediction), guidance)
        noise = ReplayNoise(draws)
        z_start = noise.draw(tuple(z_lq.shape))  # the sampler's own x_T = randn(shape)

        def record(k: int, z: torch.Tensor, z0: torch.Tensor, _name: str = name) -> None:
            produced[f"output.{_name}.after_step.{k}"] = z.clone()
            produced[f"output.{_name}.pred_x0.{k}"] = z0.clone()

        with torch.no_grad():
            produced[f"output.{name}.samples"] = sample_ddim(denoiser, z_start, z_lq, schedule, noise, tiling, on_step=record)
    # after_step.<last> is `samples` itself; the case records steps 0..S-2 only
    return {k: v for k, v in produced.items() if k in case.tensors}
