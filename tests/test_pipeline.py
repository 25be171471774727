"""End to end through the upscale data path with tiny random-weight models (issue: the pipeline)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image

from stablesr_cli.options import ColorFix, UpscaleOptions, VaeTiling
from stablesr_cli.pipeline.tiling import pixel_patches
from tiny_models import TILE_PX, tiny_upscaler

FIXTURES = __import__("pathlib").Path(__file__).parent / "fixtures" / "images"

BASE = UpscaleOptions(scale=2, steps=2, tile_size=TILE_PX, tile_overlap=32, vae_tile_size=64, vae_tile_stride=48)


def image(h: int, w: int, seed: int = 0) -> torch.Tensor:
    """A smooth random image [1,3,h,w] in [0,1] (a blurred noise field: photo-like, not white noise)."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(1, 3, max(2, h // 6), max(2, w // 6), generator=g)
    return torch.nn.functional.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False)


@pytest.mark.parametrize("scale", [2, 3.5, 4])
@pytest.mark.parametrize("tiling", list(VaeTiling))
def test_odd_sizes_all_scales_and_tilings(scale, tiling):
    up = tiny_upscaler()
    out = up.upscale_tensor(image(23, 37), dataclasses.replace(BASE, scale=scale, vae_tiling=tiling))
    assert out.shape == (1, 3, int(23 * scale), int(37 * scale))
    assert torch.isfinite(out).all() and out.min() >= 0 and out.max() <= 1


def test_same_seed_same_image_other_seed_other_image():
    up = tiny_upscaler()
    a = up.upscale_tensor(image(20, 24), BASE)
    b = up.upscale_tensor(image(20, 24), BASE)
    c = up.upscale_tensor(image(20, 24), dataclasses.replace(BASE, seed=43))
    assert torch.equal(a, b)
    assert (a - c).abs().max() > 1e-3


def test_tile_batch_does_not_change_the_result():
    up = tiny_upscaler()
    one = up.upscale_tensor(image(30, 50), BASE)
    many = up.upscale_tensor(image(30, 50), dataclasses.replace(BASE, tile_batch=3))
    assert (one - many).abs().max() < 1e-5


def test_one_tile_equals_untiled():
    """A latent that fits in one tile is sampled exactly as without tiling; a padded image no larger
    than the VAE patch is processed whole, so upstream-patch and no-patch modes agree exactly."""
    up = tiny_upscaler()
    x = image(16, 16)
    whole = up.upscale_tensor(x, dataclasses.replace(BASE, vae_tiling=VaeTiling.NONE, vae_tile_size=512))
    patched_mode = up.upscale_tensor(x, dataclasses.replace(BASE, vae_tiling=VaeTiling.UPSTREAM, vae_tile_size=512))
    assert torch.equal(whole, patched_mode)


def test_lean_vae_tiling_matches_whole_vae():
    """The lean tiled VAE shares exact GroupNorm statistics, so it reproduces the whole-image VAE."""
    up = tiny_upscaler()
    x = image(40, 56)
    whole = up.upscale_tensor(x, dataclasses.replace(BASE, vae_tiling=VaeTiling.NONE))
    lean = up.upscale_tensor(x, dataclasses.replace(BASE, vae_tiling=VaeTiling.LEAN, vae_tile_size=64))
    assert (whole - lean).abs().max() < 2e-3


def _column_steps(img: torch.Tensor) -> torch.Tensor:
    """steps[c - 1] = mean |I[:, c] - I[:, c-1]| over rows and channels (a seam shows up as a spike)."""
    return (img[..., 1:] - img[..., :-1]).abs().mean(dim=(0, 1, 2))


def _seam_scores(img: torch.Tensor, borders: list[int], phase: int = 4) -> dict[int, float]:
    """How far the step into each border column lies above the steps into the other columns of the
    same phase, in standard deviations. The VAE's nearest upsampling gives the image a period of
    `phase` pixels, and every tile border falls on that grid, so only same-phase columns compare."""
    steps = _column_steps(img)
    inside = torch.stack([steps[c - 1] for c in range(phase, img.shape[-1], phase) if c not in borders])
    return {b: float((steps[b - 1] - inside.mean()) / inside.std()) for b in borders}


SEAM_SIGMAS = 4.0  # a hard stitch of two independent results scores ~6.5 here; clean columns 0..2.5


def _tile_borders(width: int, opts: UpscaleOptions) -> list[int]:
    borders = set(range(32, width, 32))  # latent tiles: starts and ends fall on multiples of 8 latent = 32 px
    for tile in pixel_patches(64, width, opts.vae_tile_size, opts.vae_tile_stride):
        borders.update({tile.x, tile.x + tile.w})
    return sorted(b for b in borders if 0 < b < width)


@pytest.mark.parametrize("tiling", [VaeTiling.UPSTREAM, VaeTiling.LEAN])
def test_no_seams_at_tile_borders(tiling):
    """Across every pixel-patch and latent-tile border the image changes no more than inside tiles."""
    up = tiny_upscaler()
    opts = dataclasses.replace(BASE, scale=1, vae_tiling=tiling, color_fix=ColorFix.NONE)
    out = up.upscale_tensor(image(64, 160, seed=3), opts)  # 64x160: aligned, so no padding
    for border, score in _seam_scores(out, _tile_borders(160, opts)).items():
        assert score <= SEAM_SIGMAS, f"seam at column {border}: {score:.1f} sigma above the inside of tiles"


def test_seam_check_detects_a_hard_stitch():
    """The seam statistic above is not blind: stitching two differently seeded results is caught."""
    up = tiny_upscaler()
    opts = dataclasses.replace(BASE, scale=1, vae_tiling=VaeTiling.NONE, color_fix=ColorFix.NONE)
    a = up.upscale_tensor(image(64, 160, seed=3), opts)
    b = up.upscale_tensor(image(64, 160, seed=3), dataclasses.replace(opts, seed=7))
    stitched = torch.cat([a[..., :80], b[..., 80:]], dim=-1)
    assert _seam_scores(stitched, [80])[80] > SEAM_SIGMAS


def test_pil_round_trip_on_real_photo():
    up = tiny_upscaler()
    photo = Image.open(FIXTURES / "0014.jpg").convert("RGB").crop((0, 0, 37, 23))
    out = up.upscale(photo, dataclasses.replace(BASE, scale=2))
    assert out.size == (74, 46) and out.mode == "RGB"
    assert np.asarray(out).std() > 0


def test_progress_reports_every_step_and_tile(capsys):
    from stablesr_cli.api import tqdm_progress

    events = []
    up = tiny_upscaler()
    up.upscale_tensor(image(30, 50), BASE, progress=events.append)
    done = [e for e in events if e.stage == "sample" and not e.total_tiles]
    patches = done[0].total_patches
    assert patches > 1  # BASE splits this image into pixel patches: each one reports its own steps
    assert [(e.patch, e.step) for e in done] == [(k, s) for k in range(patches) for s in (1, 2)]
    tiles = [e for e in events if e.stage == "sample" and e.total_tiles]
    assert tiles and tiles[-1].tile == tiles[-1].total_tiles
    assert {e.stage for e in events} >= {"encode", "sample", "decode"}
    up.upscale_tensor(image(30, 50), BASE, progress=tqdm_progress())
    assert "2/2" in capsys.readouterr().err


def test_one_encoder_pass_when_both_autoencoders_encode_alike():
    """Upstream encodes the LR image twice (SD VAE for the latent, CFW for its features); with
    identical encoder weights one pass gives exactly the same image."""
    from stablesr_cli.api import Upscaler
    from stablesr_cli.checkpoints.assemble import WeightSource
    from stablesr_cli.checkpoints.load import _same_encoder
    from tiny_models import tiny_models

    models = tiny_models()
    sd_vae, cfw_vae = (WeightSource.of(vae.state_dict()) for vae in (models.sd_vae, models.cfw_vae))
    assert models.sd_vae is not models.cfw_vae and _same_encoder(sd_vae, cfw_vae, torch.float32)
    shared = Upscaler(dataclasses.replace(models, sd_vae=models.cfw_vae), tiny_upscaler().facts)
    x = image(30, 40)
    assert torch.equal(tiny_upscaler().upscale_tensor(x, BASE), shared.upscale_tensor(x, BASE))


def test_bfloat16_pipeline_runs_and_follows_float32():
    """--dtype bf16: every network in bfloat16 (noise, schedule and blending stay float32)."""
    import copy

    from stablesr_cli.api import Upscaler
    from tiny_models import tiny_models

    fp32 = tiny_models()
    half = dataclasses.replace(
        fp32,
        unet=copy.deepcopy(fp32.unet).to(torch.bfloat16),
        time_encoder=copy.deepcopy(fp32.time_encoder).to(torch.bfloat16),
        sd_vae=copy.deepcopy(fp32.cfw_vae).to(torch.bfloat16),
    )
    half = dataclasses.replace(half, cfw_vae=half.sd_vae)
    x = image(24, 32)
    ref = tiny_upscaler().upscale_tensor(x, BASE)
    out = Upscaler(half, tiny_upscaler().facts).upscale_tensor(x, BASE)
    assert out.dtype == torch.float32 and out.shape == ref.shape and torch.isfinite(out).all()
    assert (out - ref).abs().mean() < 0.05


def test_an_output_of_no_pixels_is_a_clear_error():
    from stablesr_cli.errors import OptionError

    with pytest.raises(OptionError, match=r"a 1x1 image at scale 0.5 would be 0x0 pixels"):
        tiny_upscaler().upscale_tensor(torch.rand(1, 3, 1, 1), dataclasses.replace(BASE, scale=0.5))


def test_one_pixel_and_downscaling_work():
    up = tiny_upscaler()
    assert up.upscale_tensor(torch.rand(1, 3, 1, 1), BASE).shape == (1, 3, 2, 2)
    assert up.upscale_tensor(image(20, 30), dataclasses.replace(BASE, scale=0.5)).shape == (1, 3, 10, 15)
