"""Forward properties of the tiny networks: batch independence, half precision, no NaNs."""

from __future__ import annotations

import torch

from tiny_models import tiny_models


def inputs(batch: int):
    g = torch.Generator().manual_seed(3)
    z = torch.randn(batch, 4, 16, 24, generator=g)
    t = torch.tensor([999, 333, 5][:batch])
    return z, t, torch.randn(batch, 77, 16, generator=g)


def test_batch_of_two_equals_two_singles():
    m = tiny_models()
    z, t, ctx = inputs(2)
    with torch.no_grad():
        both = m.unet(z, t, ctx, m.time_encoder(z, t))
        one = [m.unet(z[i:i + 1], t[i:i + 1], ctx[i:i + 1], m.time_encoder(z[i:i + 1], t[i:i + 1])) for i in range(2)]
    assert (both - torch.cat(one)).abs().max() < 1e-5


def test_bfloat16_follows_float32():
    """Reduced precision stays close to float32."""
    m = tiny_models()
    z, t, ctx = inputs(2)
    with torch.no_grad():
        ref = m.unet(z, t, ctx, m.time_encoder(z, t))
        unet, enc = m.unet.to(torch.bfloat16), m.time_encoder.to(torch.bfloat16)
        try:
            zb, cb = z.to(torch.bfloat16), ctx.to(torch.bfloat16)
            out = unet(zb, t, cb, enc(zb, t)).float()
        finally:
            m.unet.float(), m.time_encoder.float()
    assert torch.isfinite(out).all()
    rel = (out - ref).norm() / ref.norm()
    assert rel < 0.05, f"bf16 differs from fp32 by {float(rel):.3f} (relative L2)"


def test_autoencoder_round_trip_is_finite_for_extreme_inputs():
    m = tiny_models()
    x = torch.cat([torch.full((1, 3, 32, 40), -1.0), torch.full((1, 3, 32, 40), 1.0)])
    with torch.no_grad():
        posterior, features = m.cfw_vae.encode_with_features(x)
        out = m.cfw_vae.decode(posterior.mode(), features, 1.0)
    assert torch.isfinite(out).all() and out.shape == x.shape
