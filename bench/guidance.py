"""What classifier-free guidance costs per sampling step, full-size networks with random weights.

    python bench/guidance.py                    # CPU, fp32
    python bench/guidance.py --device cuda      # GPU, fp16

One sampling step on one 64x64 latent tile (a 512x512 tile of the output), timed three ways:
unguided (time-aware encoder + UNet on 1 tile), guided as we run it (encoder on 1 tile, UNet on
2: negative and positive context), and guided as upstream runs it (encoder on the doubled batch
too, with `--upstream`). The best of `--repeats` runs after a warm-up, as wall-clock seconds and,
on the CPU, as the process's CPU seconds (the fairer figure on a shared machine); peak memory is
the process's (CPU) or the allocator's (CUDA).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench import full_size_models, peak_memory_mb, timed  # noqa: E402
from stablesr_cli.pipeline.sampler import Denoiser, Guidance  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default=None, choices=["fp32", "fp16", "bf16"])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--upstream", action="store_true", help="also time upstream's guided batch")
    args = parser.parse_args()
    device = torch.device(args.device)
    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[
        args.dtype or ("fp16" if device.type == "cuda" else "fp32")
    ]
    torch.manual_seed(0)
    models = full_size_models(device, dtype)
    z_t = torch.randn(1, 4, 64, 64, device=device)
    z_lq = torch.randn(1, 4, 64, 64, device=device)
    negative = torch.randn(1, 77, 1024, device=device)
    plain = Denoiser(models.unet, models.time_encoder, models.context, models.prediction)
    guided = Denoiser(models.unet, models.time_encoder, models.context, models.prediction, Guidance(negative, 7.0))

    def upstream_guided() -> None:
        """Upstream's batch: the time-aware encoder also runs on [tiles, tiles]."""
        t = torch.full((2,), 999, device=device)
        z2 = torch.cat([z_t, z_t]).to(dtype)
        structure = models.time_encoder(torch.cat([z_lq, z_lq]).to(dtype), t)
        context = torch.cat([negative, models.context]).to(dtype)
        out_negative, out_positive = models.unet(z2, t, context, structure).float().chunk(2)
        out_negative + 7.0 * (out_positive - out_negative)

    steps = [
        ("unguided step (encoder + UNet, 1 tile)", lambda: plain.predict(z_t, z_lq, 999)),
        ("guided step, encoder once (ours)", lambda: guided.predict(z_t, z_lq, 999)),
    ]
    if args.upstream:
        steps.append(("guided step, encoder on 2 tiles (upstream)", upstream_guided))
    rows = []
    for label, step in steps:
        with torch.no_grad():
            step()  # warm-up
            runs = []
            for _ in range(args.repeats):
                cpu = time.process_time()
                wall = timed(step, device)
                runs.append((wall, time.process_time() - cpu))
        wall, cpu = min(runs)
        rows.append((label, wall, cpu, peak_memory_mb(device)))
        print(f"{label}: {wall:.2f} s wall, {cpu:.2f} s CPU", file=sys.stderr, flush=True)

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"\nguidance cost: {name}, {str(dtype).replace('torch.', '')}, torch {torch.__version__}, 64x64 latent")
    width = max(len(r[0]) for r in rows)
    base_wall, base_cpu = rows[0][1], rows[0][2]
    print(f"{'what':<{width}}  {'wall':>8}  {'CPU':>8}  {'vs unguided (wall, CPU)':>24}  {'peak memory':>12}")
    for what, wall, cpu, memory in rows:
        ratios = f"{wall / base_wall:.2f}x, {cpu / base_cpu:.2f}x"
        print(f"{what:<{width}}  {wall:>7.2f}s  {cpu:>7.2f}s  {ratios:>24}  {memory:>9.0f} MiB")


if __name__ == "__main__":
    main()
