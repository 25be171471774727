"""07_colorfix: AdaIN and wavelet colour fixes on tensors and on 8-bit images (pipeline.colorfix)."""

from __future__ import annotations

import torch

from golden_support import GoldenCase, handles
from stablesr_cli.pipeline.colorfix import (
    adain_color_fix,
    wavelet_decomposition,
    wavelet_reconstruction,
)


def _u8_to_tensor(image: torch.Tensor) -> torch.Tensor:
    """H x W x 3 uint8 -> [1, 3, H, W] float32 in [0, 1], as torchvision's ToTensor (x / 255)."""
    return image.permute(2, 0, 1).contiguous().to(torch.float32).div(255)[None]


def _tensor_to_u8(image: torch.Tensor) -> torch.Tensor:
    """[1, 3, H, W] -> H x W x 3 uint8 as ToPILImage after clamp(0, 1): x * 255, truncated."""
    return image[0].clamp(0.0, 1.0).mul(255).to(torch.uint8).permute(1, 2, 0).contiguous()


@handles("scripts/wavelet_color_fix.py")
def colorfix_case(case: GoldenCase) -> dict[str, torch.Tensor]:
    config = case.config
    content, style = case.input("content"), case.input("style")
    if tuple(content.shape[-2:]) != (config["H"], config["W"]):
        raise AssertionError(f"07_colorfix: content is {tuple(content.shape)}, config says H={config['H']} W={config['W']}")
    high, low = wavelet_decomposition(content, levels=int(config["wavelet_levels"]))
    target, source = _u8_to_tensor(case.input("target_u8")), _u8_to_tensor(case.input("source_u8"))
    return {
        "output.adaptive_instance_normalization": adain_color_fix(content, style),
        "output.wavelet_reconstruction": wavelet_reconstruction(content, style),
        "output.wavelet_decomposition.high": high,
        "output.wavelet_decomposition.low": low,
        "output.adain_color_fix_u8": _tensor_to_u8(adain_color_fix(target, source)),
        "output.wavelet_color_fix_u8": _tensor_to_u8(wavelet_reconstruction(target, source)),
    }
