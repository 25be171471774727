"""pipeline.schedule: timesteps kept by respacing, the schedule tables, x_T and the DDPM step."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file

from stablesr_cli.pipeline.schedule import (
    NUM_TRAIN_TIMESTEPS,
    Prediction,
    base_schedule,
    ddpm_step,
    linear_betas,
    predict_z0,
    q_sample_start,
    respaced_schedule,
    space_timesteps,
)

GOLDEN = Path(__file__).parent / "fixtures" / "golden"
PROPERTY = settings(max_examples=50, deadline=None, derandomize=True)


@PROPERTY
@given(st.integers(min_value=2, max_value=NUM_TRAIN_TIMESTEPS))
def test_space_timesteps_gives_n_distinct_sorted_steps_from_0_to_999(n):
    steps = space_timesteps(n)
    assert len(steps) == n == len(set(steps))
    assert steps == sorted(steps)
    assert steps[0] == 0 and steps[-1] == NUM_TRAIN_TIMESTEPS - 1


def test_space_timesteps_matches_upstream_examples():
    assert space_timesteps(1) == [0]
    assert space_timesteps(3) == [0, 500, 999]
    assert space_timesteps(4) == [0, 333, 666, 999]
    assert space_timesteps(20) == [
        0, 53, 105, 158, 210, 263, 315, 368, 421, 473, 526, 578, 631, 684, 736, 789, 841, 894, 946, 999,
    ]
    # the accumulated float stride and round-half-to-even show up here (489, not 490)
    assert space_timesteps(50)[20:25] == [408, 428, 449, 469, 489]
    assert space_timesteps(200)[:4] == [0, 5, 10, 15]
    assert space_timesteps(1000) == list(range(1000))


@pytest.mark.parametrize("n", [0, -3, 1001])
def test_space_timesteps_rejects_impossible_counts(n):
    with pytest.raises(ValueError, match="between 1 and 1000"):
        space_timesteps(n)


def test_base_schedule_reference_values():
    base = base_schedule()
    assert base.betas.dtype == torch.float32 and base.num_steps == 1000
    assert base.betas[0].item() == pytest.approx(0.00085, rel=1e-6)
    assert base.betas[-1].item() == pytest.approx(0.012, rel=1e-6)
    expected = {0: 0.99915, 249: 0.675432, 499: 0.277670, 666: 0.105080, 749: 0.056623, 950: 0.008247, 999: 0.0046601}
    for t, value in expected.items():
        assert base.alphas_cumprod[t].item() == pytest.approx(value, rel=1e-4)
    assert base.sqrt_alphas_cumprod[999].item() == pytest.approx(0.0682649, rel=1e-6)
    assert base.sqrt_one_minus_alphas_cumprod[999].item() == pytest.approx(0.9976672, rel=1e-6)
    assert torch.equal(base.timesteps, torch.arange(1000))


def test_base_schedule_is_the_float64_schedule_stored_as_float32():
    golden = load_file(GOLDEN / "05_schedule.safetensors")
    base = base_schedule()
    assert torch.equal(torch.from_numpy(linear_betas()), golden["output.linear1000.betas_float64"])
    assert torch.equal(base.betas, golden["output.linear1000.betas_float64"].float())
    assert torch.equal(base.alphas_cumprod, golden["output.linear1000.alphas_cumprod_float64"].float())


def test_base_and_1000_step_respacing_agree_where_sampling_reads_them():
    base, respaced = base_schedule(), respaced_schedule(1000)
    assert torch.equal(base.alphas_cumprod, respaced.alphas_cumprod)
    for table in ("sqrt_alphas_cumprod", "sqrt_one_minus_alphas_cumprod"):
        assert getattr(base, table)[999] == getattr(respaced, table)[999]
    # betas differ by float32 rounding only, amplified by the cancellation in 1 - ratio (~1e-4 rel)
    torch.testing.assert_close(base.betas, respaced.betas, rtol=2e-4, atol=0)


def test_respaced_schedule_reference_values():
    four = respaced_schedule(4)
    assert four.timesteps.tolist() == [0, 333, 666, 999] and four.timesteps.dtype == torch.int64
    torch.testing.assert_close(four.betas, torch.tensor([8.50022e-4, 0.464583, 0.803574, 0.955652]), rtol=1e-5, atol=0)
    torch.testing.assert_close(four.alphas_cumprod, torch.tensor([0.99915, 0.534962, 0.105080, 0.0046601]), rtol=1e-5, atol=0)
    torch.testing.assert_close(four.posterior_variance, torch.tensor([0.0, 8.4919e-4, 0.417571, 0.859236]), rtol=1e-5, atol=0)
    assert torch.equal(four.given_betas, four.betas)
    two_hundred = respaced_schedule(200)
    assert two_hundred.betas[1].item() == pytest.approx(4.31329e-3, rel=1e-5)
    assert two_hundred.posterior_variance[1].item() == pytest.approx(7.10594e-4, rel=1e-5)
    assert two_hundred.betas[199].item() == pytest.approx(5.84094e-2, rel=1e-5)
    assert two_hundred.posterior_variance[199].item() == pytest.approx(5.83924e-2, rel=1e-5)


@PROPERTY
@given(st.integers(min_value=1, max_value=300))
def test_respaced_alpha_bar_follows_the_kept_timesteps(n):
    schedule, base = respaced_schedule(n), base_schedule()
    assert schedule.timesteps.tolist() == space_timesteps(n)
    assert schedule.alphas_cumprod_prev[0].item() == 1.0
    torch.testing.assert_close(schedule.alphas_cumprod, base.alphas_cumprod[schedule.timesteps], rtol=2e-5, atol=0)
    assert all(getattr(schedule, name).dtype == torch.float32 for name in ("betas", "posterior_mean_coef1"))


def test_q_sample_start_reproduces_the_canvas_scripts_x_T():
    golden = load_file(GOLDEN / "06_sampling.safetensors")
    x_T = q_sample_start(golden["input.lr_latent"], golden["input.noise.0"])
    assert torch.equal(x_T, golden["output.eps_canvas.x_T"])


def test_q_sample_start_refuses_a_respaced_schedule():
    z = torch.zeros(1, 4, 2, 2)
    with pytest.raises(ValueError, match="1000-step base schedule"):
        q_sample_start(z, z, respaced_schedule(4))


@pytest.mark.parametrize("prediction", [Prediction.EPS, Prediction.V, "eps", "v"])
def test_predict_z0_inverts_the_forward_process(prediction):
    schedule = respaced_schedule(50)
    generator = torch.Generator().manual_seed(1)
    z0, eps = torch.randn(2, 4, 3, 5, generator=generator), torch.randn(2, 4, 3, 5, generator=generator)
    i = 31
    a, b = schedule.sqrt_alphas_cumprod[i], schedule.sqrt_one_minus_alphas_cumprod[i]
    z_t = a * z0 + b * eps
    out = eps if Prediction(prediction) is Prediction.EPS else a * eps - b * z0
    torch.testing.assert_close(predict_z0(out, z_t, i, schedule, prediction), z0, rtol=0, atol=1e-5)


def _reference_step(out, z_t, i, schedule, prediction, noise):
    """Upstream's x0, posterior-mean and ancestral-step formulas (`p_sample`) in float64 from the float32 tables."""
    table = {name: getattr(schedule, name)[i].double() for name in schedule.__dataclass_fields__}
    z_t, out = z_t.double(), out.double()
    if prediction == "eps":
        z0 = table["sqrt_recip_alphas_cumprod"] * z_t - table["sqrt_recipm1_alphas_cumprod"] * out
    else:
        z0 = table["sqrt_alphas_cumprod"] * z_t - table["sqrt_one_minus_alphas_cumprod"] * out
    mean = table["posterior_mean_coef1"] * z0 + table["posterior_mean_coef2"] * z_t
    return mean + (i > 0) * torch.exp(0.5 * table["posterior_log_variance_clipped"]) * noise.double()


@pytest.mark.parametrize("prediction", ["eps", "v"])
@pytest.mark.parametrize("i", [0, 1, 3])
def test_ddpm_step_follows_the_posterior_formulas(prediction, i):
    schedule = respaced_schedule(4)
    generator = torch.Generator().manual_seed(2)
    out, z_t, noise = (torch.randn(1, 4, 6, 7, generator=generator) for _ in range(3))
    got = ddpm_step(out, z_t, i, schedule, prediction, noise)
    assert got.dtype == torch.float32
    want = _reference_step(out, z_t, i, schedule, prediction, noise)
    torch.testing.assert_close(got.double(), want, rtol=1e-6, atol=1e-5)


def test_last_step_ignores_the_noise_and_returns_z0():
    schedule = respaced_schedule(4)
    out, z_t = torch.randn(1, 4, 3, 3), torch.randn(1, 4, 3, 3)
    first = ddpm_step(out, z_t, 0, schedule, "eps", torch.randn(1, 4, 3, 3))
    second = ddpm_step(out, z_t, 0, schedule, "eps", 100 * torch.randn(1, 4, 3, 3))
    assert torch.equal(first, second)
    torch.testing.assert_close(first, predict_z0(out, z_t, 0, schedule, "eps"), rtol=1e-6, atol=1e-6)


def test_float16_latents_are_promoted_to_float32_like_upstream():
    schedule = respaced_schedule(4)
    z = torch.randn(1, 4, 3, 3).half()
    assert ddpm_step(z, z, 2, schedule, "v", z).dtype == torch.float32
    assert q_sample_start(z, z).dtype == torch.float32


def test_unknown_prediction_and_index_are_refused():
    schedule = respaced_schedule(4)
    z = torch.zeros(1, 4, 2, 2)
    with pytest.raises(ValueError, match="allowed: eps, v"):
        predict_z0(z, z, 1, schedule, "x0")
    with pytest.raises(ValueError, match="between 0 and 3"):
        ddpm_step(z, z, 4, schedule, "eps", z)


@pytest.mark.parametrize("prediction", ["eps", "v"])
def test_ddpm_step_is_bitwise_upstreams_float32_expression(prediction):
    # upstream's p_sample with extract_into_tensor's gather, written out in the same operation order
    schedule = respaced_schedule(20)
    generator = torch.Generator().manual_seed(3)
    out, x, noise = (torch.randn(1, 4, 5, 6, generator=generator) for _ in range(3))
    for i in (19, 7, 0):
        t = torch.full((1,), i, dtype=torch.long)

        def extract(table: torch.Tensor) -> torch.Tensor:
            return table.gather(-1, t).reshape(1, 1, 1, 1)

        if prediction == "eps":
            x_recon = extract(schedule.sqrt_recip_alphas_cumprod) * x - extract(schedule.sqrt_recipm1_alphas_cumprod) * out
        else:
            x_recon = extract(schedule.sqrt_alphas_cumprod) * x - extract(schedule.sqrt_one_minus_alphas_cumprod) * out
        mean = extract(schedule.posterior_mean_coef1) * x_recon + extract(schedule.posterior_mean_coef2) * x
        nonzero_mask = (1 - (t == 0).float()).reshape(1, 1, 1, 1)
        upstream = mean + nonzero_mask * (0.5 * extract(schedule.posterior_log_variance_clipped)).exp() * noise
        assert torch.equal(ddpm_step(out, x, i, schedule, prediction, noise), upstream)
