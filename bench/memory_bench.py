"""Peak RSS of whole 4x upscales to 512, 1024 and 2048 pixels, whole-image VAE against lean VAE tiling.

    nice -n 19 python bench/memory_bench.py                 # full-size random weights, bf16 and fp32
    nice -n 19 python bench/memory_bench.py --json          # also one JSON object per case on stdout
    python bench/memory_bench.py --sizes 512 1024 --dtypes bf16 --tilings lean
    python bench/memory_bench.py --quick                    # tiny networks, seconds: checks the instrument

Each case (output side, dtype, `--vae-tiling none` or `lean`) runs `upscale_tensor` on a random
128/256/512 px input in a fresh child process, so the kernel's RSS high-water mark (VmHWM) is that
case's alone. The mark is reset after the networks are built and again between the stages (encode,
sample, decode), and the child reports the peak (models included), the peak above the loaded models
and each stage's. Sampling runs ONE step: the UNet works tile by tile and needs the same at every
step and output size, while the autoencoders see the whole canvas; more steps add time, not memory.

Before a case starts, its peak is estimated from the networks' size and the output's
full-resolution activation; a case that would not fit in the memory available now (less a
reserve) is skipped with the estimate instead of pushing a shared machine into swap or the OOM
killer. Networks are full-size with random weights (bench.py's `random_models`), so the numbers are
the real architecture's; the images are meaningless.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(ROOT))

from stablesr_cli.options import UpscaleOptions, VaeTiling  # noqa: E402

SIZES = (512, 1024, 2048)
QUICK_SIZES = (128, 256, 512)
SCALE = 4
TILINGS = {"whole": VaeTiling.NONE, "lean": VaeTiling.LEAN}
DTYPE_BYTES = {"bf16": 2, "fp32": 4}
MIB = 2**20

# Peak activation memory in "units" of one full-resolution activation at the VAE's base width
# (output pixels x base channels x dtype bytes), with margin: the whole-image decoder holds about
# eight at its last level; lean measured 3.8 (2048 bf16) and holds about one more in float32, where
# the upsampling conv's output is stored.
PEAK_UNITS = {"whole": 9.0, "lean": 6.0}
STAGES = ("encode", "sample", "decode")
"""The upscale's stages, as its progress events name them; the child reports each one's peak."""
RUNTIME_MB = 600  # the interpreter, torch's libraries and its thread pools


@dataclass(frozen=True)
class Case:
    side: int
    dtype: str
    tiling: str
    lean_tile: int
    quick: bool

    @property
    def name(self) -> str:
        return f"{self.side} {self.dtype} {self.tiling}"


# --- the child: one case -----------------------------------------------------------------------------


def _status_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"/proc/self/status has no {field}: this bench needs Linux")


def run_case(case: Case) -> dict[str, object]:
    """Build the networks, reset the RSS high-water mark, upscale once; this process's numbers."""
    import torch

    from bench import DTYPES, QUICK, Sizes, random_models
    from stablesr_cli.pipeline.noise import SeededNoise
    from stablesr_cli.progress import ProgressEvent
    from stablesr_cli.pipeline.upscale import upscale_tensor
    from stablesr_cli.pipeline.tile_grid import release_freed_host_memory

    sizes = QUICK if case.quick else Sizes()
    models = random_models(sizes, torch.device("cpu"), DTYPES[case.dtype])
    # the random build's float32 temporaries are freed but may stay resident in the C heap; a loaded
    # checkpoint would not leave them, so they are handed back before the baseline is read
    release_freed_host_memory()
    image = torch.rand(1, 3, case.side // SCALE, case.side // SCALE, generator=torch.Generator().manual_seed(0))
    opts = UpscaleOptions(
        scale=SCALE, w=0.5, steps=1, vae_tiling=TILINGS[case.tiling], vae_tile_size=case.lean_tile,
    )  # fmt: skip
    loaded = _status_mb("VmRSS")
    peaks: dict[str, float] = {}
    stage = "encode"

    def next_stage(event: ProgressEvent) -> None:
        """At each stage change, note the stage's peak and reset the mark (VmHWM := VmRSS)."""
        nonlocal stage
        if event.stage in STAGES and event.stage != stage:
            peaks[stage] = _status_mb("VmHWM")
            Path("/proc/self/clear_refs").write_text("5")
            stage = event.stage

    Path("/proc/self/clear_refs").write_text("5")  # the build's own peak is not the upscale's
    start = time.perf_counter()
    out = upscale_tensor(image, models, opts, SeededNoise(42), next_stage)
    seconds = time.perf_counter() - start
    peaks[stage] = _status_mb("VmHWM")
    assert out.shape[-2:] == (case.side, case.side) and bool(torch.isfinite(out).all())
    peak = max(peaks.values())
    return {
        "models_mb": loaded, "peak_rss_mb": peak, "above_models_mb": peak - loaded, "seconds": seconds,
        "peak_stage": max(peaks, key=peaks.__getitem__),
        **{f"{name}_above_models_mb": value - loaded for name, value in peaks.items()},
    }  # fmt: skip


# --- the parent: estimates, children, table -----------------------------------------------------------


def model_mb(case: Case) -> float:
    """Resident size of the networks in the case's dtype, counted on the meta device."""
    import torch

    from bench import QUICK, Sizes
    from stablesr_cli.models.autoencoder import Autoencoder
    from stablesr_cli.models.time_encoder import TimeAwareEncoder
    from stablesr_cli.models.unet import UNet

    sizes = QUICK if case.quick else Sizes()
    with torch.device("meta"):
        nets = (UNet(sizes.unet), TimeAwareEncoder(sizes.encoder), Autoencoder(sizes.vae))
    return sum(p.numel() for net in nets for p in net.parameters()) * DTYPE_BYTES[case.dtype] / MIB


def estimate_mb(case: Case, models: float, base_channels: int) -> float:
    unit = case.side**2 * base_channels * DTYPE_BYTES[case.dtype] / MIB
    return RUNTIME_MB + models + PEAK_UNITS[case.tiling] * unit


def available_mb() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("/proc/meminfo has no MemAvailable: this bench needs Linux")


def measure(case: Case, timeout: float | None) -> dict[str, object]:
    """Run one case in a child process (the parent's own memory and peak stay out of it)."""
    command = [sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(asdict(case))]
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return {"error": f"child exited with {done.returncode}: {tail}"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def run_all(cases: list[Case], args: argparse.Namespace) -> list[dict[str, object]]:
    from bench import QUICK, Sizes

    base_channels = (QUICK if args.quick else Sizes()).vae.base_channels
    models = {dtype: model_mb(Case(0, dtype, "whole", 0, args.quick)) for dtype in {c.dtype for c in cases}}
    results = []
    for case in cases:
        estimate = round(estimate_mb(case, models[case.dtype], base_channels))
        room = (args.memory_limit_gb * 1024 if args.memory_limit_gb is not None else available_mb()) - args.reserve_gb * 1024
        result: dict[str, object] = {**asdict(case), "estimate_mb": estimate}
        if estimate > room:
            result["skipped"] = f"needs ~{estimate / 1024:.1f} GB, {max(room, 0) / 1024:.1f} GB available"
        else:
            print(f"{case.name}: estimated {estimate / 1024:.1f} GB ...", file=sys.stderr, flush=True)
            try:
                result.update(measure(case, args.timeout))
            except subprocess.TimeoutExpired:
                result["error"] = f"over the {args.timeout:.0f} s timeout"
        results.append(result)
        if args.json:
            print(json.dumps(result), flush=True)
    return results


def cell(result: dict[str, object] | None) -> str:
    if result is None:
        return "-"
    if "skipped" in result:
        return "skipped: " + str(result["skipped"]).split(",")[0]
    if "error" in result:
        return "failed: " + str(result["error"])
    return (
        f"{result['peak_rss_mb'] / 1024:.2f} GB (+{result['above_models_mb'] / 1024:.2f}) "
        f"{result['peak_stage']}, {result['seconds']:.0f} s"
    )


def print_table(results: list[dict[str, object]], args: argparse.Namespace) -> None:
    out = sys.stderr
    networks = "tiny networks (--quick)" if args.quick else "full-size networks, random weights"
    print(f"\nstablesr memory: peak RSS of one 4x upscale, 1 sampling step, {networks}, lean tiles "
          f"{args.lean_tile} px", file=out)  # fmt: skip
    print("(one step: the UNet works tile by tile, so more steps add time, not memory; each cell names the "
          "stage that peaked)", file=out)  # fmt: skip
    tilings = [t for t in TILINGS if t in args.tilings]
    print(f"{'output':<16}" + "".join(f"{t:>40}" for t in tilings), file=out)
    by_key = {(r["side"], r["dtype"], r["tiling"]): r for r in results}
    for side in args.sizes:
        for dtype in args.dtypes:
            row = [cell(by_key.get((side, dtype, t))) for t in tilings]
            print(f"{f'{side}x{side} {dtype}':<16}" + "".join(f"{c:>40}" for c in row), file=out)
    print("(GB: peak RSS with the models loaded; +: above the loaded models; then the stage it peaked in "
          "and the upscale's seconds)", file=out)  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", help=f"output sides (default {SIZES}; --quick {QUICK_SIZES})")
    parser.add_argument("--dtypes", nargs="+", default=["bf16", "fp32"], choices=list(DTYPE_BYTES))
    parser.add_argument("--tilings", nargs="+", default=list(TILINGS), choices=list(TILINGS))
    parser.add_argument("--lean-tile", type=int, help="lean VAE tile side in pixels (default 256; --quick 64)")
    parser.add_argument("--quick", action="store_true", help="tiny networks (a check of the bench itself)")
    parser.add_argument("--json", action="store_true", help="one JSON object per case on standard output")
    parser.add_argument("--reserve-gb", type=float, default=2.0, help="memory left free for others (default 2)")
    parser.add_argument("--memory-limit-gb", type=float, help="memory to plan with instead of what is available now")
    parser.add_argument("--timeout", type=float, help="seconds a case may take before it is stopped")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    sys.path.insert(0, str(BENCH))
    if args.child:
        print(json.dumps(run_case(Case(**json.loads(args.child)))), flush=True)
        return
    args.sizes = args.sizes or list(QUICK_SIZES if args.quick else SIZES)
    args.lean_tile = args.lean_tile or (64 if args.quick else 256)
    if any(side % (SCALE * 8) for side in args.sizes):
        parser.error(f"output sides must be multiples of {SCALE * 8}")
    cases = [
        Case(side, dtype, tiling, args.lean_tile, args.quick)
        for side in args.sizes for dtype in args.dtypes for tiling in TILINGS if tiling in args.tilings
    ]  # fmt: skip
    print_table(run_all(cases, args), args)


if __name__ == "__main__":
    main()
