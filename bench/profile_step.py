"""Where one sampling step's time goes: torch.profiler over time-aware encoder + UNet on one 64x64 tile.

    python bench/profile_step.py --dtype bf16          # full-size random weights, top operators
    python bench/profile_step.py --dtype bf16 --quick  # toy size

Prints the operators with the most self CPU time (copies, layout reorders and slow attention
paths show up here) and the step's wall time outside the profiler.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench import DTYPES, QUICK, Sizes, random_models  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dtype", default="bf16", choices=list(DTYPES))
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rows", type=int, default=15)
    args = parser.parse_args()
    sizes = QUICK if args.quick else Sizes()
    dtype = DTYPES[args.dtype]
    models = random_models(sizes, torch.device("cpu"), dtype)
    z = torch.randn(1, 4, sizes.latent, sizes.latent, dtype=dtype)
    t = torch.tensor([999])
    context = models.context.to(dtype)

    def step() -> torch.Tensor:
        return models.unet(z, t, context, models.time_encoder(z, t))

    with torch.no_grad():
        step()  # warm-up: oneDNN primitive creation is not part of a step
        start = time.perf_counter()
        step()
        seconds = time.perf_counter() - start
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            step()
    print(f"one {args.dtype} step (encoder + UNet, {sizes.latent}x{sizes.latent} latent): {seconds:.2f} s, "
          f"{torch.get_num_threads()} threads")  # fmt: skip
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows, max_name_column_width=48))


if __name__ == "__main__":
    main()
