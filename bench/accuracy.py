"""What bf16 costs in accuracy: bf16 against fp32 final 8-bit images, same seed, same photos.

    python bench/accuracy.py                 # tiny golden-fixture networks, every test photo (seconds)
    python bench/accuracy.py --full --crop 128 --limit 2   # full-size random weights, 128 -> 512 (minutes)

Each photo's centre crop is upscaled x4 (Turbo: 4 steps, seed 42) once in float32 and once in
bfloat16; the two 8-bit outputs are compared: max and mean absolute difference (in 8-bit levels)
and PSNR. Random weights are not a trained model, so the full-size numbers show how bf16 rounding
propagates through the real architecture, not how a trained model's picture changes.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))  # the tiny networks are built from the golden test fixtures

from stablesr_cli.models.layout import prepare_for_inference  # noqa: E402
from stablesr_cli.options import UpscaleOptions  # noqa: E402
from stablesr_cli.pipeline.noise import SeededNoise  # noqa: E402
from stablesr_cli.pipeline.upscale import StableSRModels, upscale_tensor  # noqa: E402

PHOTOS = ROOT / "tests" / "fixtures" / "images"


def in_dtype(models: StableSRModels, dtype: torch.dtype) -> StableSRModels:
    """A copy of the models in `dtype`, laid out as the loader lays them out."""
    import copy

    def convert(module: torch.nn.Module) -> torch.nn.Module:
        return prepare_for_inference(copy.deepcopy(module).to(dtype))

    cfw = convert(models.cfw_vae)
    sd_vae = cfw if models.sd_vae is models.cfw_vae else convert(models.sd_vae)
    return dataclasses.replace(models, unet=convert(models.unet), time_encoder=convert(models.time_encoder),
                               sd_vae=sd_vae, cfw_vae=cfw)  # fmt: skip


def eight_bit(img: torch.Tensor) -> np.ndarray:
    return (img.clamp(0, 1) * 255).round().to(torch.uint8).numpy()


def compare(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    diff = np.abs(a.astype(np.int16) - b.astype(np.int16))
    mse = float(np.mean(diff.astype(np.float64) ** 2))
    psnr = math.inf if mse == 0 else 10 * math.log10(255**2 / mse)
    return {"max_abs": int(diff.max()), "mean_abs": float(diff.mean()), "psnr_db": psnr}


def photo(path: Path, crop: int) -> torch.Tensor:
    rgb = Image.open(path).convert("RGB")
    side = min(crop, *rgb.size)
    left, top = (rgb.width - side) // 2, (rgb.height - side) // 2
    arr = np.asarray(rgb.crop((left, top, left + side, top + side)), dtype=np.float32) / 255.0
    return torch.from_numpy(arr).permute(2, 0, 1)[None]


def bf16_against_fp32(models: StableSRModels, images: list[Path], crop: int, steps: int) -> list[dict[str, object]]:
    pair = {"fp32": in_dtype(models, torch.float32), "bf16": in_dtype(models, torch.bfloat16)}
    opts = UpscaleOptions(scale=4, steps=steps, w=0.5)
    rows = []
    for path in images:
        x = photo(path, crop)
        out = {name: eight_bit(upscale_tensor(x, m, opts, SeededNoise(42))) for name, m in pair.items()}
        rows.append({"photo": path.name, "side": x.shape[-1], **compare(out["fp32"], out["bf16"])})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--full", action="store_true", help="full-size networks with random weights (slow)")
    parser.add_argument("--photos", type=Path, default=PHOTOS)
    parser.add_argument("--crop", type=int, default=48, help="centre crop side of each photo, in pixels")
    parser.add_argument("--limit", type=int, default=0, help="at most this many photos (0: all)")
    parser.add_argument("--steps", type=int, default=4)
    args = parser.parse_args()
    images = sorted(p for p in args.photos.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
    images = images[: args.limit] if args.limit else images
    if args.full:
        from bench import random_models, Sizes  # noqa: PLC0415

        models = random_models(Sizes(), torch.device("cpu"), torch.float32)
    else:
        from tiny_models import tiny_models  # noqa: PLC0415

        models = tiny_models()
    for row in bf16_against_fp32(models, images, args.crop, args.steps):
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
