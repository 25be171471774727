"""KL autoencoder / CFW decoder: config detection, full-size key manifests, strict loading, w=0 parity."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from stablesr_cli.checkpoints.assemble import build_autoencoder, load_strict
from stablesr_cli.checkpoints.detect_autoencoder import (
    infer_autoencoder_config,
    split_autoencoder,
)
from stablesr_cli.errors import CheckpointError, CheckpointMismatchError
from stablesr_cli.models.autoencoder import Autoencoder, AutoencoderConfig, DiagonalGaussian

GOLDEN = Path(__file__).parent / "fixtures" / "golden"

TINY_CONFIGS = [
    AutoencoderConfig(base_channels=32, channel_mult=(1, 2), num_res_blocks=1),
    AutoencoderConfig(base_channels=32, channel_mult=(2, 1, 1), num_res_blocks=1, num_fuse_blocks=1),
    AutoencoderConfig(base_channels=32, channel_mult=(1, 1, 2, 2), num_res_blocks=2, num_fuse_blocks=2),
    AutoencoderConfig(in_channels=1, out_channels=2, base_channels=64, channel_mult=(1, 1), num_res_blocks=3,
                      z_channels=8, embed_dim=6),
]


def _meta_state_dict(cfg: AutoencoderConfig) -> dict[str, torch.Tensor]:
    with torch.device("meta"):
        return Autoencoder(cfg).state_dict()


def _random_vae(cfg: AutoencoderConfig, seed: int = 0) -> Autoencoder:
    torch.manual_seed(seed)
    vae = Autoencoder(cfg).eval()
    with torch.no_grad():  # non-trivial norm affines and biases so every parameter matters
        for name, p in vae.named_parameters():
            if name.endswith("bias"):
                p.normal_(0, 0.1)
            elif p.ndim == 1:
                p.normal_(1, 0.15)
    return vae


def _manifest(name: str) -> dict[str, torch.Tensor]:
    """A key manifest as meta tensors of the listed shapes."""
    keys = json.loads((GOLDEN / name).read_text())["keys"]
    return {k: torch.empty(shape, device="meta") for k, (shape, _dtype) in keys.items()}


@pytest.mark.parametrize("cfg", TINY_CONFIGS, ids=lambda c: f"ch{c.base_channels}-{'x'.join(map(str, c.channel_mult))}-f{c.num_fuse_blocks}")
def test_detection_round_trip(cfg: AutoencoderConfig):
    sd = _meta_state_dict(cfg)
    assert infer_autoencoder_config(sd) == cfg
    prefixed = {f"first_stage_model.{k}": v for k, v in sd.items()}
    prefixed["model.diffusion_model.out.0.weight"] = torch.empty(4, device="meta")
    assert infer_autoencoder_config(prefixed) == cfg
    with_loss = dict(sd, **{"loss.logvar": torch.empty((), device="meta")})
    assert infer_autoencoder_config(with_loss) == cfg
    assert "loss.logvar" not in split_autoencoder(with_loss)


def test_detection_rejects_attention_outside_mid_block():
    sd = _meta_state_dict(TINY_CONFIGS[0])
    sd["encoder.down.1.attn.0.q.weight"] = torch.empty(64, 64, 1, 1, device="meta")
    with pytest.raises(CheckpointError, match=r"encoder\.down\.1"):
        infer_autoencoder_config(sd)


def test_detection_rejects_non_autoencoder():
    with pytest.raises(CheckpointError, match="encoder.conv_in.weight"):
        infer_autoencoder_config({"model.diffusion_model.out.0.weight": torch.zeros(4)})


def test_full_size_cfw_matches_official_manifest():
    manifest = _manifest("keys_autoencoder_kl_64x64x4_resi.json")
    cfg = infer_autoencoder_config(manifest)
    assert cfg == AutoencoderConfig(num_fuse_blocks=2)
    with torch.device("meta"):
        vae = Autoencoder(cfg)
    own = {k: tuple(v.shape) for k, v in vae.state_dict().items()}
    assert own == {k: tuple(v.shape) for k, v in split_autoencoder(manifest).items()}
    assert sum(p.numel() for p in vae.encoder.parameters()) == 34_163_592
    assert sum(p.numel() for p in vae.decoder.parameters()) == 93_883_907
    load_strict(vae, split_autoencoder(manifest), "CFW")


def test_full_size_sd_vae_matches_official_manifest():
    manifest = _manifest("keys_v2-finetune_text_T_512.json")
    cfg = infer_autoencoder_config(manifest)
    assert cfg == AutoencoderConfig()
    with torch.device("meta"):
        vae = Autoencoder(cfg)
    expected = split_autoencoder(manifest)
    assert {k: tuple(v.shape) for k, v in vae.state_dict().items()} == {k: tuple(v.shape) for k, v in expected.items()}
    assert sum(p.numel() for p in vae.parameters()) == 83_653_863


def test_strict_load_names_the_offending_keys():
    sd = _random_vae(TINY_CONFIGS[1]).state_dict()
    del sd["decoder.fusion_layer_1.encode_enc_2.0.rdb2.conv3.weight"]
    sd["decoder.fusion_layer_9.extra"] = torch.zeros(1)
    with torch.device("meta"):
        vae = Autoencoder(TINY_CONFIGS[1])
    with pytest.raises(CheckpointMismatchError) as err:
        load_strict(vae, sd, "CFW")
    assert "decoder.fusion_layer_1.encode_enc_2.0.rdb2.conv3.weight" in str(err.value)
    assert "decoder.fusion_layer_9.extra" in str(err.value)


def test_meta_build_and_load_reproduces_the_module():
    source = _random_vae(TINY_CONFIGS[1])
    loaded = build_autoencoder(source.state_dict())
    x = torch.rand(1, 3, 16, 24) * 2 - 1
    with torch.no_grad():
        want_post, want_feat = source.encode_with_features(x)
        got_post, got_feat = loaded.encode_with_features(x)
        torch.testing.assert_close(got_post.mean, want_post.mean, rtol=0, atol=0)
        for got, want in zip(got_feat, want_feat):
            torch.testing.assert_close(got, want, rtol=0, atol=0)
        z = want_post.mean
        torch.testing.assert_close(loaded.decode(z, got_feat, w=0.7), source.decode(z, want_feat, w=0.7), rtol=0, atol=0)


def test_cfw_with_zero_weight_equals_plain_decoder():
    cfw = _random_vae(TINY_CONFIGS[2], seed=3)
    plain_sd = {k: v for k, v in cfw.state_dict().items() if not k.startswith("decoder.fusion_layer_")}
    plain = build_autoencoder(plain_sd)
    assert not plain.config.is_cfw
    x = torch.rand(1, 3, 24, 40) * 2 - 1
    with torch.no_grad():
        posterior, features = cfw.encode_with_features(x)
        z = posterior.sample(torch.randn_like(posterior.mean))
        reference = plain.decode(z)
        assert torch.equal(cfw.decode(z, features, w=0.0), reference)
        assert torch.equal(cfw.decode(z, None, w=0.0), reference)
        # the fusion branch really is the only difference
        fused = cfw.decode(z, features, w=0.5)
        assert not torch.allclose(fused, reference, atol=1e-3)
        # a fusion layer returns dec + w*e: linear in w around the decoder feature
        layer = cfw.decoder.fusion_layer(1)
        enc, dec = features[0], torch.randn_like(features[0])
        e = layer.residual(enc, dec)
        torch.testing.assert_close(layer(enc, dec, 0.5), dec + 0.5 * e)
        assert torch.equal(layer(enc, dec, 0.0), dec)


def test_cfw_decode_without_features_is_refused():
    cfw = _random_vae(TINY_CONFIGS[1])
    with pytest.raises(ValueError, match="encoder features"):
        cfw.decode(torch.zeros(1, 4, 2, 3), None, w=0.5)


def test_feature_shapes_follow_upstream_levels():
    cfg = TINY_CONFIGS[2]
    vae = _random_vae(cfg)
    with torch.no_grad():
        posterior, features = vae.encode_with_features(torch.zeros(1, 3, 32, 48))
    assert [tuple(f.shape) for f in features] == [(1, 32, 16, 24), (1, 64, 8, 12)]
    assert tuple(posterior.mean.shape) == (1, 4, 4, 6)


def test_posterior_clamps_logvar_and_samples_with_given_noise():
    moments = torch.cat([torch.full((1, 4, 2, 2), 0.5), torch.tensor([-100.0, 0.0, 2.0, 100.0]).view(1, 4, 1, 1).expand(1, 4, 2, 2)], 1)
    posterior = DiagonalGaussian.from_moments(moments)
    assert posterior.logvar[0, :, 0, 0].tolist() == [-30.0, 0.0, 2.0, 20.0]
    noise = torch.randn(1, 4, 2, 2)
    torch.testing.assert_close(posterior.sample(noise), posterior.mean + torch.exp(0.5 * posterior.logvar) * noise)
    assert posterior.mode() is posterior.mean
    with pytest.raises(ValueError, match="noise shape"):
        posterior.sample(torch.randn(1, 4, 3, 3))


def test_config_rejects_cfw_beyond_recorded_features():
    with pytest.raises(ValueError, match="fusion layers"):
        AutoencoderConfig(base_channels=32, channel_mult=(1, 1, 1, 1, 1), num_fuse_blocks=1)
    with pytest.raises(ValueError, match="multiple of 32"):
        AutoencoderConfig(base_channels=48, channel_mult=(1,))
