"""Full-size networks built on the meta device from the official key manifests match them key for key."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from stablesr_cli.checkpoints.detect import infer_time_encoder_config, infer_unet_config
from stablesr_cli.checkpoints.keymap import COMPONENT_PREFIXES, resblocks_to_upstream, strip_prefix
from stablesr_cli.models.time_encoder import TimeAwareEncoder, TimeEncoderConfig
from stablesr_cli.models.unet import UNet, UNetConfig

GOLDEN = Path(__file__).parent / "fixtures" / "golden"
MANIFESTS = ["keys_v2-finetune_text_T_512.json", "keys_v2-finetune_text_T_768v.json"]


def manifest_component(name: str, prefix: str) -> dict[str, torch.Tensor]:
    """The manifest's keys under `prefix` as meta tensors of the listed shapes (no memory)."""
    keys = json.loads((GOLDEN / name).read_text())["keys"]
    return {
        k[len(prefix):]: torch.empty(shape, device="meta")
        for k, (shape, _dtype) in keys.items()
        if k.startswith(prefix)
    }


def shapes(sd: dict[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in sd.items()}


@pytest.mark.parametrize("manifest", MANIFESTS)
def test_full_size_unet_matches_manifest(manifest):
    expected = manifest_component(manifest, COMPONENT_PREFIXES["unet"])
    cfg = infer_unet_config(expected)
    assert cfg == UNetConfig()  # the SD 2.x / StableSR defaults, recovered from shapes alone
    with torch.device("meta"):
        unet = UNet(cfg)
    ours = resblocks_to_upstream(unet.state_dict())
    assert shapes(ours) == shapes(expected)
    assert sum(p.numel() for p in unet.parameters()) == 918_930_884
    assert sum(v.numel() for k, v in ours.items() if ".spade." in k) == 53_020_160


@pytest.mark.parametrize("manifest", MANIFESTS)
def test_full_size_time_encoder_matches_manifest(manifest):
    expected = manifest_component(manifest, COMPONENT_PREFIXES["time_encoder"])
    cfg = infer_time_encoder_config(expected)
    assert cfg == TimeEncoderConfig()
    with torch.device("meta"):
        encoder = TimeAwareEncoder(cfg)
    assert shapes(resblocks_to_upstream(encoder.state_dict())) == shapes(expected)
    assert sum(p.numel() for p in encoder.parameters()) == 52_494_080


@pytest.mark.parametrize("manifest", MANIFESTS)
def test_manifest_counts_agree_with_its_keys(manifest):
    """The parameter counts asserted above are the manifest's own `meta` numbers."""
    data = json.loads((GOLDEN / manifest).read_text())
    by_prefix = data["meta"]["numel_by_prefix"]
    for prefix, component in (("model", "unet"), ("structcond_stage_model", "time_encoder")):
        sd = manifest_component(manifest, COMPONENT_PREFIXES[component])
        assert sum(v.numel() for v in sd.values()) == by_prefix[prefix]


def test_keymap_round_trip_is_identity():
    sd = manifest_component(MANIFESTS[0], "")
    unet = strip_prefix(sd, COMPONENT_PREFIXES["unet"])
    from stablesr_cli.checkpoints.keymap import resblocks_to_ours

    assert shapes(resblocks_to_upstream(resblocks_to_ours(unet))) == shapes(unet)
