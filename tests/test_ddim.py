"""The DDIM sampler, classifier-free guidance and the sampler options, on tiny random-weight models.

Parity with the official sampler is golden case 09 (tests/test_golden.py); these tests pin the rest:
tables, the seed stream, the guided batch, the defaults, the options' validation.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from stablesr_cli.checkpoints.assemble import build_text_encoder
from stablesr_cli.errors import OptionError
from stablesr_cli.model_facts import ModelFacts, resolve_options
from stablesr_cli.options import Sampler, UpscaleOptions, VaeTiling
from stablesr_cli.pipeline.ddim import ddim_schedule, ddim_start, ddim_step
from stablesr_cli.pipeline.noise import SeededNoise
from stablesr_cli.pipeline.prompts import PromptEncoder
from stablesr_cli.pipeline.sampler import Denoiser, Guidance
from stablesr_cli.pipeline.schedule import Prediction, base_schedule, space_timesteps
from stablesr_cli.pipeline.tiling import pixel_patches
from stablesr_cli.pipeline.upscale import denoiser_for
from tiny_checkpoints import tiny_text_tower
from tiny_models import TILE_PX, tiny_models, tiny_upscaler

DDIM = UpscaleOptions(
    scale=2, steps=3, sampler=Sampler.DDIM, tile_size=TILE_PX, tile_overlap=32, vae_tile_size=64, vae_tile_stride=48
)


def image(h: int, w: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(1, 3, max(2, h // 6), max(2, w // 6), generator=g)
    return torch.nn.functional.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False)


# ------------------------------------------------------------------ tables and steps


def test_two_grids_network_timesteps_and_uniform_coefficients():
    schedule = ddim_schedule(20)
    assert schedule.timesteps.tolist() == space_timesteps(20)  # 0, 53, ..., 946, 999
    assert schedule.coefficient_timesteps.tolist() == list(range(0, 1000, 50))  # no +1 shift
    alphas_cumprod = base_schedule().alphas_cumprod
    assert torch.equal(schedule.alphas, alphas_cumprod[schedule.coefficient_timesteps])
    assert schedule.alphas_prev[0] == alphas_cumprod[0]  # not 1
    assert torch.equal(schedule.alphas_prev[1:], schedule.alphas[:-1])


def test_an_uneven_step_count_reads_only_the_head_of_the_longer_grid():
    # 1000 // 6 = 166 gives 7 grid entries (0 ... 996); 6 are read
    assert ddim_schedule(6).coefficient_timesteps.tolist() == [0, 166, 332, 498, 664, 830]


def test_eta_sets_the_noise_and_the_last_step_keeps_the_latent():
    assert not ddim_schedule(10, 0.0).sigmas.any()
    noisy = ddim_schedule(10, 1.0)
    assert noisy.sigmas[0] == 0 and bool((noisy.sigmas[1:] > 0).all())
    z = torch.randn(1, 4, 8, 8)
    eps = torch.randn(1, 4, 8, 8)
    z_prev, _ = ddim_step(eps, z, 0, noisy, Prediction.EPS, torch.randn(1, 4, 8, 8))
    torch.testing.assert_close(z_prev, z, atol=1e-5, rtol=0)  # a_prev = a and sigma = 0 at index 0


def test_x_t_is_pure_noise_after_a_discarded_channels_last_draw():
    z_lq = torch.zeros(1, 4, 6, 10)
    got = ddim_start(z_lq, SeededNoise(5))
    g = torch.Generator().manual_seed(5)
    torch.empty(z_lq.shape, memory_format=torch.channels_last).normal_(generator=g)  # upstream's q_sample noise
    assert torch.equal(got, torch.randn(z_lq.shape, generator=g))


@pytest.mark.parametrize(
    ("steps", "sampler", "model_default", "expected"),
    [
        (None, Sampler.DDPM, 200, 200),
        (None, Sampler.DDIM, 200, 50),
        (None, Sampler.DDIM, 4, 4),  # turbo keeps its 4
        (None, Sampler.DDPM, 4, 4),
        (20, Sampler.DDIM, 200, 20),
        (7, Sampler.DDPM, 4, 7),
    ],
)
def test_default_steps_per_sampler(steps, sampler, model_default, expected):
    facts = ModelFacts("m", default_steps=model_default)
    assert resolve_options(UpscaleOptions(steps=steps, sampler=sampler), facts).steps == expected


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"eta": 0.5}, "eta applies to sampler ddim only"),
        ({"sampler": "ddim", "eta": 1.5}, "eta must be between 0 and 1"),
        ({"sampler": "ddim", "eta": float("nan")}, "eta must be between 0 and 1"),
        ({"cfg": -1.0}, "cfg must be a number >= 0"),
        ({"cfg": float("inf")}, "cfg must be a number >= 0"),
        ({"sampler": "euler"}, "sampler must be ddpm or ddim"),
    ],
)
def test_bad_sampler_options(fields, message):
    with pytest.raises(OptionError, match=message):
        UpscaleOptions(**fields)


def test_guidance_is_on_with_a_negative_prompt_or_a_scale():
    assert UpscaleOptions().guidance_scale is None
    assert UpscaleOptions(negative_prompt="blurry").guidance_scale == 7.0
    assert UpscaleOptions(negative_prompt="").guidance_scale == 7.0
    assert UpscaleOptions(cfg=3.0).guidance_scale == 3.0
    assert UpscaleOptions(sampler="ddim").sampler is Sampler.DDIM


# ------------------------------------------------------------------ guidance


def test_default_options_keep_todays_ddpm_denoiser():
    models = tiny_models()
    denoiser = denoiser_for(models, UpscaleOptions())
    assert denoiser.guidance is None and denoiser.context is models.context


def test_guidance_doubles_the_unet_batch_but_runs_the_time_encoder_once():
    models = tiny_models()
    seen: dict[str, list[int]] = {"unet": [], "encoder": []}
    hooks = [
        models.unet.register_forward_hook(lambda m, args, out: seen["unet"].append(args[0].shape[0])),
        models.time_encoder.register_forward_hook(lambda m, args, out: seen["encoder"].append(args[0].shape[0])),
    ]
    negative = torch.randn(1, 77, 16, generator=torch.Generator().manual_seed(3))
    guided = Denoiser(models.unet, models.time_encoder, models.context, Prediction.EPS, Guidance(negative, 7.0))
    z_t, z_lq = torch.randn(3, 4, 16, 16), torch.randn(3, 4, 16, 16)
    try:
        with torch.no_grad():
            out = guided.predict(z_t, z_lq, 500)
    finally:
        for hook in hooks:
            hook.remove()
    assert seen == {"unet": [6], "encoder": [3]}
    # the same as two separate passes combined by hand
    plain = Denoiser(models.unet, models.time_encoder, models.context, Prediction.EPS)
    against = Denoiser(models.unet, models.time_encoder, negative, Prediction.EPS)
    with torch.no_grad():
        positive, negative_out = plain.predict(z_t, z_lq, 500), against.predict(z_t, z_lq, 500)
    torch.testing.assert_close(out, negative_out + 7.0 * (positive - negative_out), atol=1e-4, rtol=1e-5)


def test_scale_one_is_no_guidance_as_upstream():
    up = tiny_upscaler()
    plain = up.upscale_tensor(image(20, 24), DDIM)
    assert torch.equal(up.upscale_tensor(image(20, 24), dataclasses.replace(DDIM, cfg=1.0)), plain)


# ------------------------------------------------------------------ the DDIM path end to end


def test_ddim_with_pixel_patches_is_seeded_and_each_setting_matters():
    up = tiny_upscaler()
    x = image(30, 50)
    padded = (64, 128)  # 60x100 after 2x, reflect-padded to 32 (+32 on the aligned side)
    assert len(pixel_patches(*padded, DDIM.vae_tile_size, DDIM.vae_tile_stride)) > 1
    events = []
    first = up.upscale_tensor(x, DDIM, progress=events.append)
    assert first.shape == (1, 3, 60, 100) and bool(torch.isfinite(first).all())
    assert {e.total_steps for e in events if e.stage == "sample"} == {3}
    assert torch.equal(up.upscale_tensor(x, DDIM), first)  # every patch restarts from the seed
    variants = {
        "ddpm": dataclasses.replace(DDIM, sampler=Sampler.DDPM),
        "eta": dataclasses.replace(DDIM, eta=1.0),
        "seed": dataclasses.replace(DDIM, seed=7),
        "whole": dataclasses.replace(DDIM, vae_tiling=VaeTiling.NONE),
    }
    for name, opts in variants.items():
        assert not torch.equal(up.upscale_tensor(x, opts), first), name


def test_prompts_and_negative_prompts_steer_the_result():
    models = tiny_models()
    sd = tiny_text_tower(16)
    loads, encodes = [], []

    def load():
        loads.append(1)
        encoder = build_text_encoder(sd, heads=4)
        encoder.register_forward_hook(lambda module, args, out: encodes.append(args[0].shape[0]))
        return encoder

    with_text = dataclasses.replace(models, prompts=PromptEncoder(models.context, load))
    up = type(tiny_upscaler())(with_text, tiny_upscaler().facts)
    x = image(20, 24)
    plain = up.upscale_tensor(x, DDIM)
    assert not loads  # the empty prompt never loads the text tower
    prompted = up.upscale_tensor(x, dataclasses.replace(DDIM, prompt="a photo of a cat"))
    guided = up.upscale_tensor(x, dataclasses.replace(DDIM, prompt="a photo of a cat", negative_prompt="blurry"))
    again = up.upscale_tensor(x, dataclasses.replace(DDIM, prompt="a photo of a cat", negative_prompt="blurry"))
    assert loads == [1] and encodes == [1, 1]  # loaded once; the two prompts encoded once each
    assert not torch.equal(prompted, plain) and not torch.equal(guided, prompted)
    assert torch.equal(guided, again)


def test_a_prompt_that_cleans_to_nothing_is_the_empty_prompt_without_the_text_tower():
    context = torch.randn(1, 77, 16)
    encoder = PromptEncoder(context, None)  # no text tower at all: loading it would fail
    assert encoder.encode("") is context
    assert encoder.encode("  \t ") is context
    with pytest.raises(OptionError, match="no text encoder"):
        encoder.encode("a cat")
