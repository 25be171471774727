"""`--compile`: torch.compile'd networks give eager's images within float rounding, compile once per
image size (no recompiles between tiles or between images of one size), and cache under our folder."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cli_helpers import invoke
from stablesr_cli.pipeline.compiled import INDUCTOR_CACHE_ENV, use_inductor_cache
from stablesr_cli.pipeline.sampler import LatentTiling, blended_prediction
from stablesr_cli.pipeline.tiling import latent_tiles

# the tiny model: 64-pixel tiles are 16 latent pixels; 32-pixel overlap, 8
TILING = ["--dtype", "fp32", "--steps", "2", "--scale", "2", "--tile-size", "64", "--tile-overlap", "32", "--tile-batch", "4"]


@pytest.fixture(autouse=True)
def offline(isolated, monkeypatch):
    monkeypatch.setenv("STABLESR_OFFLINE", "1")


def test_inductor_cache_goes_under_our_cache_unless_the_user_chose_one(tmp_path, monkeypatch):
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    monkeypatch.setenv(INDUCTOR_CACHE_ENV, default_cache_dir())  # what importing torch._dynamo may leave
    assert use_inductor_cache(tmp_path / "ours") == tmp_path / "ours" / "inductor"
    assert os.environ[INDUCTOR_CACHE_ENV] == str(tmp_path / "ours" / "inductor")
    monkeypatch.setenv(INDUCTOR_CACHE_ENV, str(tmp_path / "theirs"))
    assert use_inductor_cache(tmp_path / "ours") == tmp_path / "theirs"
    assert os.environ[INDUCTOR_CACHE_ENV] == str(tmp_path / "theirs")


def test_a_short_last_tile_batch_is_padded_and_real_tiles_are_unchanged():
    seen: list[int] = []

    class Recorder:
        def predict(self, z_t, z_lq, t):
            seen.append(z_t.shape[0])
            return z_t * 2 + z_lq  # per sample: a padded copy cannot change a real tile's result

    z_t = torch.randn(1, 4, 24, 32, generator=torch.Generator().manual_seed(0))
    z_lq = torch.randn(1, 4, 24, 32, generator=torch.Generator().manual_seed(1))
    assert len(latent_tiles(24, 32, 16, 8)) == 6
    plain = blended_prediction(Recorder(), z_t, z_lq, 999, LatentTiling(16, 8, batch=4))
    assert seen == [4, 2]
    seen.clear()
    padded = blended_prediction(Recorder(), z_t, z_lq, 999, LatentTiling(16, 8, batch=4, pad_batch=True))
    assert seen == [4, 4]
    assert torch.equal(plain, padded)
    seen.clear()  # never padded beyond the image's own tile count
    blended_prediction(Recorder(), z_t[..., :16, :16], z_lq[..., :16, :16], 999, LatentTiling(16, 8, batch=4, pad_batch=True))
    assert seen == [1]


def _pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.int16)


@pytest.mark.slow  # inductor builds every kernel with the C++ compiler: minutes on a loaded 2-core box
def test_compile_from_the_cli_matches_eager_and_compiles_once_per_image_size(tmp_path, tiny_model_dir, monkeypatch):
    from torch._dynamo.utils import counters
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    monkeypatch.setenv(INDUCTOR_CACHE_ENV, default_cache_dir())  # as unset: ours must be chosen
    inputs = tmp_path / "in"
    inputs.mkdir()
    rng = np.random.default_rng(0)
    for name in ("a", "b"):  # 48x64 -> latent 24x32: 6 tiles, batches of 4 and 2 (padded to 4)
        Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(inputs / f"{name}.png")
    model = ["--model", str(tiny_model_dir), *TILING]
    eager = invoke(["upscale", str(inputs), "-o", str(tmp_path / "eager"), *model])
    assert eager.exit_code == 0, eager.output

    torch._dynamo.reset()
    counters.clear()
    compiled = invoke(["upscale", str(inputs), "-o", str(tmp_path / "compiled"), "--compile", *model])
    assert compiled.exit_code == 0, compiled.output

    # one frame and graph each for UNet, time encoder and CFW decoder, over 2 images x 2 steps x
    # 2 tile batches: a recompile (a new shape, a failed guard) would compile a frame again
    assert counters["frames"]["total"] == 3
    assert counters["stats"]["unique_graphs"] == 3
    assert any((tmp_path / "stablesr" / "inductor").iterdir())
    for name in ("a", "b"):
        want, got = _pixels(tmp_path / "eager" / f"{name}.png"), _pixels(tmp_path / "compiled" / f"{name}.png")
        # fp32: float results differ by ~1e-5 (fused kernels sum in another order); truncation to 8
        # bits turns that into at most one level on the few pixels sitting at a level boundary. (In
        # bf16 eager rounds between ops where the fused kernels do not: up to 7 levels, 46 dB.)
        assert np.abs(want - got).max() <= 1
        assert (want != got).mean() < 0.01
