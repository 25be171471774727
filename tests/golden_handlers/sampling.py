"""Golden handler for 06: full respaced DDPM sampling, whole-latent and canvas (tiled), eps and v."""

from __future__ import annotations

import torch

from golden_support import GoldenCase, handles
from stablesr_cli.checkpoints.assemble import build_time_encoder, build_unet
from stablesr_cli.pipeline.noise import ReplayNoise
from stablesr_cli.pipeline.sampler import Denoiser, LatentTiling, sample
from stablesr_cli.pipeline.schedule import Prediction, q_sample_start, respaced_schedule


def case_networks(case: GoldenCase) -> tuple[torch.nn.Module, torch.nn.Module]:
    """The UNet and time-aware encoder of a sampling case, from its weights and LDM config."""
    params = case.config["ldm"]["model"]["params"]
    weights = case.weights()
    unet = build_unet(weights, num_head_channels=params["unet_config"]["params"]["num_head_channels"])
    encoder = build_time_encoder(weights, num_heads=params["structcond_stage_config"]["params"]["num_heads"])
    return unet, encoder


@handles("LatentDiffusionSRTextWT.sample / sample_canvas (+ q_sample_respace)")
def ddpm_sampling(case: GoldenCase) -> dict[str, torch.Tensor]:
    run = case.config["sampling"]
    unet, encoder = case_networks(case)
    schedule = respaced_schedule(run["ddpm_steps"])
    if schedule.timesteps.tolist() != case.input("timesteps").tolist():
        raise AssertionError(f"respaced timesteps {schedule.timesteps.tolist()} differ from the case's")
    draws = [case.tensors[f"input.noise.{i}"] for i in range(len(case.inputs("noise")))]
    z_lq, context = case.input("lr_latent"), case.input("context")
    produced: dict[str, torch.Tensor] = {}
    for prediction in run["parameterizations"]:
        denoiser = Denoiser(unet, encoder, context, Prediction(prediction))
        for mode in ("sample", "canvas"):
            name = f"{prediction}_{mode}"
            noise = ReplayNoise(draws)
            if mode == "sample":  # sr_val_ddpm_text_T_vqganfin_old: x_T is pure noise, whole latent
                z_start = noise.draw(tuple(z_lq.shape))
                tiling = None
            else:  # _oldcanvas_tile: x_T = q_sample(z_lq, 999) on the base schedule, latent tiles
                z_start = q_sample_start(z_lq, noise.draw(tuple(z_lq.shape), channels_last=True))
                produced[f"output.{name}.x_T"] = z_start
                tiling = LatentTiling(run["tile_size"], run["tile_overlap"], run["batch_size_sample"])

            def record(k: int, z: torch.Tensor, _name: str = name) -> None:
                produced[f"output.{_name}.after_step.{k}"] = z.clone()

            with torch.no_grad():
                samples = sample(denoiser, z_start, z_lq, schedule, noise, tiling, on_step=record)
            produced[f"output.{name}.samples"] = samples
    # after_step.<last> is `samples` itself; the case records steps 0..N-2 only
    return {k: v for k, v in produced.items() if k in case.tensors}
