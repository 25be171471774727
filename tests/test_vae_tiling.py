"""Tiled VAE == whole-image VAE (encode, CFW features, decode with w in {0, 0.5}), and no seams."""

from __future__ import annotations

import pytest
import torch

from stablesr_cli.errors import OptionError
from stablesr_cli.models.autoencoder import Autoencoder, AutoencoderConfig
from stablesr_cli.models.layout import prepare_for_inference
from stablesr_cli.pipeline.tiled_stats import merged_stats
from stablesr_cli.pipeline.vae_tiling import Box, TileGrid, _TiledRunner, tiled_decode, tiled_encode

# 4 levels as the released VAE: CFW fusion at decoder levels 1 and 2, mid block at 1/8
CFG = AutoencoderConfig(base_channels=32, channel_mult=(1, 1, 2, 2), num_res_blocks=1, num_fuse_blocks=1)
REL_TOL = 1e-4


@pytest.fixture(scope="module")
def vae() -> Autoencoder:
    gen = torch.Generator().manual_seed(1234)
    model = Autoencoder(CFG).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))
            elif p.ndim == 1:
                p.copy_(1 + 0.15 * torch.randn(p.shape, generator=gen))
    return model


def _rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    assert got.shape == want.shape
    return float((got - want).abs().max() / want.abs().max())


def _image(h: int, w: int, batch: int = 1, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    # smooth content plus noise, so GroupNorm statistics differ between tiles
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
    base = torch.stack([torch.sin(3 * xx), torch.cos(2 * yy), xx * yy])[None].repeat(batch, 1, 1, 1)
    return (0.7 * base + 0.3 * torch.rand(batch, 3, h, w, generator=gen)).clamp(-1, 1)


@pytest.mark.parametrize(("height", "width", "tile"), [(37, 29, 8), (37, 29, 20), (21, 30, 512)])
def test_tiled_encode_matches_whole(vae, height, width, tile):
    x = _image(height, width)
    with torch.no_grad():
        want, want_features = vae.encode_with_features(x)
    got, got_features = tiled_encode(vae, x, tile)
    assert _rel_err(got.mean, want.mean) < REL_TOL
    assert _rel_err(got.logvar, want.logvar) < REL_TOL
    assert len(got_features) == len(want_features) == 2
    for g, w in zip(got_features, want_features):
        assert _rel_err(g, w) < REL_TOL


@pytest.mark.parametrize(("latent_hw", "tile"), [((5, 7), 24), ((3, 2), 512)])
@pytest.mark.parametrize("w", [0.0, 0.5])
def test_tiled_decode_matches_whole(vae, latent_hw, tile, w):
    h, wd = latent_hw
    x = _image(8 * h, 8 * wd, seed=1)
    with torch.no_grad():
        posterior, features = vae.encode_with_features(x)
        z = posterior.sample(torch.randn(posterior.mean.shape, generator=torch.Generator().manual_seed(2)))
        want = vae.decode(z, features, w=w)
    got = tiled_decode(vae, z, tile, features, w=w)
    assert _rel_err(got, want) < REL_TOL


def test_tiled_round_trip_with_tiled_features_and_batch(vae):
    x = _image(24, 32, batch=2, seed=3)
    with torch.no_grad():
        posterior, features = vae.encode_with_features(x)
        want = vae.decode(posterior.mean, features, w=0.5)
    tiled_posterior, tiled_features = tiled_encode(vae, x, 16, storage_device="cpu")
    got = tiled_decode(vae, tiled_posterior.mean, 16, tiled_features, w=0.5, storage_device="cpu")
    assert _rel_err(got, want) < REL_TOL


def _border_mask(shape: torch.Size, side: int) -> torch.Tensor:
    """Pixels on either side of every tile border."""
    border = torch.zeros(shape[-2:], dtype=torch.bool)
    for cut in range(side, shape[-2], side):
        border[cut - 1:cut + 1, :] = True
    for cut in range(side, shape[-1], side):
        border[:, cut - 1:cut + 1] = True
    return border


def test_no_seams_at_tile_borders(vae):
    side = 16
    x = _image(48, 48, seed=4)
    with torch.no_grad():
        posterior, features = vae.encode_with_features(x)
        want = vae.decode(posterior.mean, features, w=0.5)
    border = _border_mask(want.shape, side)
    scale = float(want.abs().max())

    def border_and_inner_error(got: torch.Tensor) -> tuple[float, float]:
        err = (got - want).abs().amax(dim=(0, 1))
        return float(err[border].max()) / scale, float(err[~border].max()) / scale

    on_border, inside = border_and_inner_error(tiled_decode(vae, posterior.mean, side, features, w=0.5))
    assert on_border < REL_TOL and on_border < 10 * max(inside, 1e-9)

    # the check does catch seams: decode each 2x2 latent tile on its own and stitch
    z = posterior.mean
    naive = torch.zeros_like(want)
    with torch.no_grad():
        for ty in range(0, 6, 2):
            for tx in range(0, 6, 2):
                tile_features = [f[..., ty * s:(ty + 2) * s, tx * s:(tx + 2) * s] for f, s in zip(features, (4, 2))]
                naive[..., 8 * ty:8 * (ty + 2), 8 * tx:8 * (tx + 2)] = vae.decode(
                    z[..., ty:ty + 2, tx:tx + 2], tile_features, w=0.5
                )
    assert border_and_inner_error(naive)[0] > 100 * REL_TOL


def test_group_stats_are_exact_over_uneven_tiles():
    torch.manual_seed(0)
    x = 1000.0 + torch.randn(2, 64, 23, 17, dtype=torch.float64)  # large offset: naive sum-of-squares would cancel
    x[..., :5, :] += 3.0  # tile means differ
    norm = torch.nn.GroupNorm(32, 64, eps=1e-6)
    runner = _TiledRunner(torch.nn.Conv2d(1, 1, 1).double(), 7, None)
    grid = runner.split(x, 1)
    mean, rstd = runner.group_stats([grid], norm)
    groups = x.reshape(2, 32, -1)
    torch.testing.assert_close(mean, groups.mean(-1), rtol=1e-12, atol=1e-9)
    torch.testing.assert_close(rstd, torch.rsqrt(groups.var(-1, unbiased=False) + 1e-6), rtol=1e-9, atol=0)


def test_tile_grid_reads_across_tiles():
    t = torch.arange(2 * 3 * 11 * 9, dtype=torch.float32).reshape(2, 3, 11, 9)
    grid = TileGrid.split(t, 1, 4, torch.device("cpu"))
    assert len(grid.tiles) == 9
    for box in (Box(0, 11, 0, 9), Box(3, 9, 2, 7), Box(8, 11, 8, 9), Box(4, 8, 4, 8)):
        assert torch.equal(grid.read(box, torch.device("cpu")), t[..., box.y0:box.y1, box.x0:box.x1])


def test_tile_size_must_be_positive(vae):
    with pytest.raises(OptionError, match="tile"):
        tiled_decode(vae, torch.zeros(1, 4, 2, 2), 0)


def test_tiling_leaves_its_inputs_untouched(vae):
    # lean tiling overwrites activations it no longer needs in place; never the caller's tensors
    x = _image(32, 40, seed=5)
    x_before = x.clone()
    posterior, features = tiled_encode(vae, x, 16)
    z = posterior.mean.clone()
    kept = [f.clone() for f in features]
    tiled_decode(vae, z, 16, features, w=0.5)
    assert torch.equal(x, x_before) and torch.equal(z, posterior.mean)
    assert all(torch.equal(f, k) for f, k in zip(features, kept))


def test_group_stats_in_group_chunks_keep_the_bits_of_one_reduction_per_tile():
    torch.manual_seed(1)
    x = (3 * torch.randn(1, 96, 40, 36) + 1).contiguous()
    norm = torch.nn.GroupNorm(32, 96, eps=1e-6)
    runner = _TiledRunner(torch.nn.Conv2d(1, 1, 1), 20, None)
    grid = runner.split(x, 1)
    mean, rstd = runner.group_stats([grid], norm)
    # the same merge over tiles, each tile's statistics from one float64 copy of all its groups
    tiles = []
    for box in grid.boxes:
        t = x[..., box.y0:box.y1, box.x0:box.x1].to(torch.float64).reshape(1, 32, -1)
        tile_mean = t.mean(dim=-1)
        tiles.append((t.shape[-1], tile_mean, (t - tile_mean[..., None]).square().sum(dim=-1)))
    want_mean, want_rstd = merged_stats(tiles, norm.eps)
    assert torch.equal(mean, want_mean) and torch.equal(rstd, want_rstd)


def test_upsample_fused_into_the_next_block_matches_the_stored_upsample(vae):
    # the decoder's low-precision path recomputes the upsampling conv inside the next ResnetBlock
    torch.manual_seed(2)
    small = torch.randn(1, 64, 9, 7)
    upsample = vae.decoder.up[2].upsample.conv
    block = vae.decoder.up[1].block[0]  # 64 -> 32 channels: with a 1x1 shortcut
    assert block.shortcut is not None
    run = _TiledRunner(vae, 6, None)
    with torch.no_grad():
        want = block(upsample(torch.nn.functional.interpolate(small, scale_factor=2.0, mode="nearest")))
        got = run.upsample_resnet(upsample, run.split(small, 4), block)
    assert _rel_err(got.data, want) < REL_TOL
    no_shortcut = vae.decoder.up[2].block[0]  # 64 -> 64
    with torch.no_grad():
        want = no_shortcut(upsample(torch.nn.functional.interpolate(small, scale_factor=2.0, mode="nearest")))
        got = run.upsample_resnet(upsample, run.split(small, 4), no_shortcut)
    assert _rel_err(got.data, want) < REL_TOL


def test_bf16_fused_upsample_matches_the_stored_path_and_the_decode_stays_close(vae):
    bf16 = Autoencoder(CFG).eval()
    bf16.load_state_dict(vae.state_dict())
    bf16 = prepare_for_inference(bf16.to(torch.bfloat16).requires_grad_(False))
    torch.manual_seed(3)
    small = torch.randn(1, 64, 9, 7).bfloat16()
    upsample, block = bf16.decoder.up[2].upsample.conv, bf16.decoder.up[1].block[0]
    run = _TiledRunner(bf16, 6, None)
    stored = run.resnet(block, run.conv([run.split(small, 4)], upsample, upsample=True))
    fused = run.upsample_resnet(upsample, run.split(small, 4), block)
    assert _rel_err(fused.data.float(), stored.data.float()) < 1e-2  # the same bf16 arithmetic, up to rounding

    x = _image(48, 40, seed=6)
    with torch.no_grad():
        posterior, features = vae.encode_with_features(x)
        want = vae.decode(posterior.mean, features, w=0.5)
        whole_bf16 = bf16.decode(posterior.mean.bfloat16(), [f.bfloat16() for f in features], w=0.5).float()
    got = tiled_decode(bf16, posterior.mean.bfloat16(), 16, [f.bfloat16() for f in features], w=0.5).float()
    # bf16 rounds between operations: the lean decode is about as close to float32 as the whole-image one
    assert _rel_err(got, want) < 1.5 * _rel_err(whole_bf16, want)
