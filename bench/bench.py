"""Speed and memory of full-size StableSR networks with random weights (no download needed).

    python bench/bench.py                       # CPU: one sampling step and one 512x512 image
    python bench/bench.py --device cuda         # GPU: the same plus a 4x upscale to 2048x2048
    python bench/bench.py --only step --steps 4

Prints a table: seconds per sampling step (time-aware encoder + UNet on one 64x64 latent tile),
seconds per image, and peak memory (process RSS on the CPU, allocator peak on CUDA).
Random weights give the real architecture's cost; the images are meaningless.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from stablesr_cli.models.autoencoder import Autoencoder, AutoencoderConfig  # noqa: E402
from stablesr_cli.models.time_encoder import TimeAwareEncoder, TimeEncoderConfig  # noqa: E402
from stablesr_cli.models.unet import UNet, UNetConfig  # noqa: E402
from stablesr_cli.options import UpscaleOptions, VaeTiling  # noqa: E402
from stablesr_cli.pipeline.noise import SeededNoise  # noqa: E402
from stablesr_cli.pipeline.schedule import Prediction  # noqa: E402
from stablesr_cli.pipeline.upscale import StableSRModels, upscale_tensor  # noqa: E402


def randomised(module: nn.Module, device: torch.device, dtype: torch.dtype) -> nn.Module:
    """Materialise a meta-built module with fan-in scaled random weights (no NaNs, realistic ranges)."""
    module = module.to_empty(device=device)
    g = torch.Generator(device="cpu").manual_seed(0)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.ndim >= 2:
                fan_in = p[0].numel()
                p.copy_(torch.randn(p.shape, generator=g) / fan_in**0.5)
            elif name.endswith("weight"):
                p.fill_(1.0)
            else:
                p.zero_()
    return module.to(dtype).eval().requires_grad_(False)


def full_size_models(device: torch.device, dtype: torch.dtype) -> StableSRModels:
    with torch.device("meta"):
        unet, encoder = UNet(UNetConfig()), TimeAwareEncoder(TimeEncoderConfig())
        cfw = Autoencoder(AutoencoderConfig(num_fuse_blocks=2))
    cfw = randomised(cfw, device, dtype)
    return StableSRModels(
        unet=randomised(unet, device, dtype),
        time_encoder=randomised(encoder, device, dtype),
        # the released SR and CFW checkpoints share the SD 2.1 VAE encoder, so the API loads one
        sd_vae=cfw,
        cfw_vae=cfw,
        context=torch.randn(1, 77, 1024, device=device),
        prediction=Prediction.EPS,
        native_tile=64,
    )


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def timed(fn, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default=None, choices=["fp32", "fp16", "bf16"])
    parser.add_argument("--steps", type=int, default=4, help="sampling steps per image (Turbo: 4)")
    parser.add_argument("--only", choices=["step", "image"], default=None)
    args = parser.parse_args()
    device = torch.device(args.device)
    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[
        args.dtype or ("fp16" if device.type == "cuda" else "fp32")
    ]
    torch.manual_seed(0)
    models = full_size_models(device, dtype)
    rows: list[tuple[str, str, str]] = []

    if args.only in (None, "step"):
        z = torch.randn(1, 4, 64, 64, device=device, dtype=dtype)
        t = torch.tensor([999], device=device)
        context = models.context.to(dtype)

        def step() -> None:
            with torch.no_grad():
                models.unet(z, t, context, models.time_encoder(z, t))

        structure = models.time_encoder(z, t)

        def unet_only() -> None:
            with torch.no_grad():
                models.unet(z, t, context, structure)

        step()  # warm-up
        seconds = min(timed(unet_only, device) for _ in range(2))
        rows.append(("UNet forward, 64x64 latent", f"{seconds:.2f} s", f"{peak_memory_mb(device):.0f} MiB"))
        seconds = min(timed(step, device) for _ in range(2))
        rows.append(("sampling step, 64x64 latent (encoder + UNet)", f"{seconds:.2f} s", f"{peak_memory_mb(device):.0f} MiB"))

    if args.only in (None, "image"):
        jobs = [("512x512 from 128x128 (x4)", 128, VaeTiling.NONE)]
        if device.type == "cuda":
            jobs.append(("2048x2048 from 512x512 (x4), upstream VAE tiles", 512, VaeTiling.UPSTREAM))
            jobs.append(("2048x2048 from 512x512 (x4), lean VAE tiling", 512, VaeTiling.LEAN))
        for label, side, tiling in jobs:
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            img = torch.rand(1, 3, side, side)
            opts = UpscaleOptions(scale=4, steps=args.steps, vae_tiling=tiling, vae_tile_size=1024 if tiling is VaeTiling.LEAN else 1280)
            seconds = timed(lambda: upscale_tensor(img, models, opts, SeededNoise(42)), device)
            rows.append((f"image {label}, {args.steps} steps", f"{seconds:.1f} s", f"{peak_memory_mb(device):.0f} MiB"))

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"\nstablesr benchmark: {name}, {str(dtype).replace('torch.', '')}, torch {torch.__version__}")
    width = max(len(r[0]) for r in rows)
    print(f"{'what':<{width}}  {'time':>10}  {'peak memory':>12}")
    for what, seconds, memory in rows:
        print(f"{what:<{width}}  {seconds:>10}  {memory:>12}")


if __name__ == "__main__":
    main()
