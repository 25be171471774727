"""Speed and memory of full-size StableSR networks with random weights (no download needed).

    python bench/bench.py                          # CPU, the dtype `--dtype auto` picks: components + 512 image
    python bench/bench.py --dtype fp32 bf16 --json # both dtypes side by side, one JSON object per dtype
    python bench/bench.py --big                    # adds 256x256 -> 1024x1024 with lean VAE tiling
    python bench/bench.py --quick --json           # tiny networks, seconds: checks the instrument itself
    python bench/bench.py --compile                # adds torch.compile: compile time and compiled step/image

For each dtype it first measures the machine's own peak (a large GEMM and a large 3x3 convolution
in that dtype, NCHW and channels_last), then times each network (time-aware encoder and UNet on one
64x64 latent tile, SD-VAE encode of a 512x512 image, CFW decode to 512x512) and whole images,
printing seconds (best of the repeats), FLOPs (counted once with FlopCounterMode), the achieved
fraction of the measured convolution peak, and the peak RSS of each measurement (the process's
high-water mark is reset before each one). Random weights give the real architecture's cost; the
images are meaningless.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import resource
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, conv_flop_count, sdpa_flop_count

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from stablesr_cli.models.autoencoder import Autoencoder, AutoencoderConfig  # noqa: E402
from stablesr_cli.models.layout import prepare_for_inference  # noqa: E402
from stablesr_cli.models.time_encoder import TimeAwareEncoder, TimeEncoderConfig  # noqa: E402
from stablesr_cli.models.unet import UNet, UNetConfig  # noqa: E402
from stablesr_cli.options import UpscaleOptions, VaeTiling  # noqa: E402
from stablesr_cli.pipeline.compiled import compile_networks  # noqa: E402
from stablesr_cli.pipeline.noise import SeededNoise  # noqa: E402
from stablesr_cli.pipeline.schedule import Prediction  # noqa: E402
from stablesr_cli.pipeline.upscale import StableSRModels, upscale_tensor  # noqa: E402
from stablesr_cli.runtime import auto_dtype  # noqa: E402

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@dataclasses.dataclass(frozen=True)
class Sizes:
    """What one bench run builds and times; `QUICK` keeps every code path at toy size."""

    unet: UNetConfig = UNetConfig()
    encoder: TimeEncoderConfig = TimeEncoderConfig()
    vae: AutoencoderConfig = AutoencoderConfig(num_fuse_blocks=2)
    context_dim: int = 1024
    latent: int = 64  # one native latent tile
    image: int = 512  # SD-VAE encode / CFW decode side, the Turbo image's output side (keys say 512 even in --quick)
    big_image: int = 1024
    gemm: int = 4096
    conv_channels: int = 640
    conv_side: int = 64


QUICK = Sizes(
    unet=UNetConfig(model_channels=32, channel_mult=(1, 2), attention_resolutions=(1,), num_head_channels=16,
                    context_dim=16, sft_in_channels=32, sft_hidden=16),
    encoder=TimeEncoderConfig(model_channels=32, out_channels=32, channel_mult=(1, 2), num_heads=2),
    vae=AutoencoderConfig(base_channels=32, channel_mult=(1, 1, 2), num_res_blocks=1, num_fuse_blocks=1),
    context_dim=16, latent=16, image=64, big_image=128, gemm=256, conv_channels=64, conv_side=16,
)  # fmt: skip


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
    return prepare_for_inference(module.to(dtype).eval().requires_grad_(False))


def random_models(sizes: Sizes, device: torch.device, dtype: torch.dtype) -> StableSRModels:
    with torch.device("meta"):
        unet, encoder, cfw = UNet(sizes.unet), TimeAwareEncoder(sizes.encoder), Autoencoder(sizes.vae)
    cfw = randomised(cfw, device, dtype)
    return StableSRModels(
        unet=randomised(unet, device, dtype),
        time_encoder=randomised(encoder, device, dtype),
        # the released SR and CFW checkpoints share the SD 2.1 VAE encoder, so the API loads one
        sd_vae=cfw,
        cfw_vae=cfw,
        context=torch.randn(1, 77, sizes.context_dim, device=device),
        prediction=Prediction.EPS,
        native_tile=sizes.latent,
    )


# --- measuring -------------------------------------------------------------------------------------


def reset_peak_rss() -> None:
    """Linux: writing 5 to clear_refs resets the process's RSS high-water mark (VmHWM)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass  # then the peak is the process's since start (ru_maxrss), still an upper bound


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_image(key: str, models: StableSRModels, side: int, tiling: VaeTiling, device: torch.device, steps: int | None) -> dict[str, float]:
    """`{key}_s` and `{key}_peak_mb` of one 4x upscale to `side` x `side` pixels (one call: whole
    images are too slow to repeat, and the first call is what a user waits for)."""
    img = torch.rand(1, 3, side // 4, side // 4, generator=torch.Generator().manual_seed(0))
    vae_tile = side // 2 if tiling is VaeTiling.LEAN else 1280  # lean: 4 tiles (one would only add overhead)
    opts = UpscaleOptions(scale=4, w=0.5, steps=steps, vae_tiling=tiling, vae_tile_size=vae_tile,
                          vae_tile_stride=min(1000, vae_tile))  # fmt: skip
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    reset_peak_rss()
    start = time.perf_counter()
    upscale_tensor(img, models, opts, SeededNoise(42))
    synchronize(device)
    return {f"{key}_s": time.perf_counter() - start, f"{key}_peak_mb": peak_memory_mb(device)}


def best_seconds(fn: Callable[[], object], device: torch.device, repeats: int) -> float:
    """Best wall time of `repeats` calls after one warm-up call (the minimum is the least disturbed by others)."""
    with torch.no_grad():
        fn()
        best = float("inf")
        for _ in range(repeats):
            synchronize(device)
            start = time.perf_counter()
            fn()
            synchronize(device)
            best = min(best, time.perf_counter() - start)
    return best


def _conv_pointwise_flop(x, *args, out_val=None, **_kwargs) -> int:
    # default overload (x, weight, bias, padding, ...); `.binary` (x, other, weight, bias, padding, ...)
    weight = args[0] if isinstance(args[2], (list, tuple)) else args[1]
    return conv_flop_count(list(x.shape), list(weight.shape), list(out_val.shape))


def _linear_pointwise_flop(x, *args, out_val=None, **_kwargs) -> int:
    # default overload (x, weight, bias, attr, ...); `.binary` (x, other, weight, bias, attr)
    weight = args[0] if isinstance(args[2], str) else args[1]
    rows = math.prod(x.shape[:-1])
    return 2 * rows * weight.shape[0] * weight.shape[1]  # the weight is [out, in]


# raw: called with the tensors themselves, which tell the two overloads apart
_conv_pointwise_flop._get_raw = True  # type: ignore[attr-defined]
_linear_pointwise_flop._get_raw = True  # type: ignore[attr-defined]


def _cpu_flash_attention_flop(q_shape, k_shape, v_shape, *_args, out_shape=None, **_kwargs) -> int:
    return sdpa_flop_count(q_shape, k_shape, v_shape)


# operators FlopCounterMode has no formula for: the prepacked oneDNN convolution and linear of the
# CPU bf16 path, and the CPU flash-attention kernel (without it every attention counted as free)
_EXTRA_FLOP_FORMULAS = {
    torch.ops.mkldnn._convolution_pointwise: _conv_pointwise_flop,
    torch.ops.mkldnn._linear_pointwise: _linear_pointwise_flop,
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_flash_attention_flop,
}


def count_flops(fn: Callable[[], object]) -> int:
    with torch.no_grad(), FlopCounterMode(display=False, custom_mapping=_EXTRA_FLOP_FORMULAS) as counter:
        fn()
    return counter.get_total_flops()


def machine_peak(sizes: Sizes, device: torch.device, dtype: torch.dtype, repeats: int) -> dict[str, float]:
    """GFLOP/s of one large GEMM and of one large 3x3 convolution (the better of NCHW and channels_last)."""
    n = sizes.gemm
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    gemm = 2 * n**3 / best_seconds(lambda: a @ b, device, repeats) / 1e9
    c, side = sizes.conv_channels, sizes.conv_side
    conv = nn.Conv2d(c, c, 3, padding=1).to(device=device, dtype=dtype).requires_grad_(False)
    x = torch.randn(1, c, side, side, device=device).to(dtype)
    conv_flops = 2 * c * c * 9 * side * side
    nchw = conv_flops / best_seconds(lambda: conv(x), device, repeats) / 1e9
    conv_cl = conv.to(memory_format=torch.channels_last)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    channels_last = conv_flops / best_seconds(lambda: conv_cl(x_cl), device, repeats) / 1e9
    return {"gemm_peak_gflops": gemm, "conv_peak_nchw_gflops": nchw, "conv_peak_channels_last_gflops": channels_last,
            "conv_peak_gflops": max(nchw, channels_last)}  # fmt: skip


def run_dtype(name: str, sizes: Sizes, device: torch.device, args: argparse.Namespace) -> dict[str, object]:
    dtype = DTYPES[name]
    torch.manual_seed(0)
    result: dict[str, object] = {"dtype": name, "device": str(device), "quick": args.quick}
    result.update(machine_peak(sizes, device, dtype, args.repeats))
    peak = result["conv_peak_gflops"]
    models = random_models(sizes, device, dtype)

    def component(key: str, fn: Callable[[], object], repeats: int) -> None:
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        reset_peak_rss()
        flops = count_flops(fn)
        seconds = best_seconds(fn, device, repeats)
        result[f"{key}_s"] = seconds
        result[f"{key}_gflop"] = flops / 1e9
        result[f"{key}_gflops"] = flops / seconds / 1e9
        result[f"{key}_peak_fraction"] = flops / seconds / 1e9 / peak
        result[f"{key}_peak_mb"] = peak_memory_mb(device)

    z = torch.randn(1, 4, sizes.latent, sizes.latent, device=device, dtype=dtype)
    t = torch.tensor([999], device=device)
    context = models.context.to(dtype)
    structure = models.time_encoder(z, t)
    component("time_encoder", lambda: models.time_encoder(z, t), args.repeats)
    component("unet", lambda: models.unet(z, t, context, structure), args.repeats)
    component("step", lambda: models.unet(z, t, context, models.time_encoder(z, t)), args.repeats)

    x = torch.rand(1, 3, sizes.image, sizes.image, device=device, dtype=dtype) * 2 - 1
    _, features = models.cfw_vae.encode_with_features(x)
    down = sizes.vae.downscale
    z_raw = torch.randn(1, 4, sizes.image // down, sizes.image // down, device=device, dtype=dtype)
    component("vae_encode_512", lambda: models.sd_vae.encode_with_features(x), args.repeats)
    component("cfw_decode_512", lambda: models.cfw_vae.decode(z_raw, features, 0.5), args.repeats)
    del features, structure

    jobs = [("image_512", sizes.image, VaeTiling.NONE)]
    if args.big:
        jobs += [("image_1024_lean", sizes.big_image, VaeTiling.LEAN), ("image_1024_whole", sizes.big_image, VaeTiling.NONE)]
    if device.type == "cuda" and not args.quick:
        jobs += [("image_2048_upstream", 2048, VaeTiling.UPSTREAM), ("image_2048_lean", 2048, VaeTiling.LEAN)]
    for key, side, tiling in jobs:
        result.update(time_image(key, models, side, tiling, device, args.steps))
    if args.compile:
        result.update(compiled_timings(models, sizes, device, args, result))
    result["peak_rss_mb"] = max(v for k, v in result.items() if k.endswith("_peak_mb"))
    return result


FOLDER_IMAGES = 10


def compiled_timings(
    models: StableSRModels, sizes: Sizes, device: torch.device, args: argparse.Namespace, eager: dict[str, object]
) -> dict[str, object]:
    """The same step and 512 image with torch.compile'd networks, in this process after the eager ones.

    compile_step_first_s: the first compiled step (UNet and time encoder compile); the first compiled
    image adds the CFW decoder's compile. folder10_*: a folder of 10 same-size images, eager against
    compiled with the compile paid once; the measure of whether compiling pays off.
    """
    import tempfile

    if args.compile_cache:  # a used folder: what a later run of the CLI pays
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = args.compile_cache
        models = compile_networks(models)
    else:  # a fresh, cold cache: what the first run pays
        models = compile_networks(models, Path(tempfile.mkdtemp(prefix="stablesr-bench-")))
    z = torch.randn(1, 4, sizes.latent, sizes.latent, device=device, dtype=models.dtype)
    t = torch.tensor([999], device=device)
    context = models.context.to(models.dtype)

    def step():
        return models.unet(z, t, context, models.time_encoder(z, t))

    out: dict[str, object] = {}
    reset_peak_rss()
    with torch.no_grad():
        start = time.perf_counter()
        step()
        synchronize(device)
        out["compile_step_first_s"] = time.perf_counter() - start
    out["compile_step_first_peak_mb"] = peak_memory_mb(device)
    reset_peak_rss()
    out["compiled_step_s"] = best_seconds(step, device, args.repeats)
    out["compiled_step_peak_mb"] = peak_memory_mb(device)
    for key in ("compiled_image_512_first", "compiled_image_512"):  # the eager image_512's settings
        out.update(time_image(key, models, sizes.image, VaeTiling.NONE, device, args.steps))
    out["step_speedup"] = eager["step_s"] / out["compiled_step_s"]
    out["folder10_eager_s"] = FOLDER_IMAGES * eager["image_512_s"]
    out["folder10_compiled_s"] = (
        out["compile_step_first_s"] + out["compiled_image_512_first_s"] + (FOLDER_IMAGES - 1) * out["compiled_image_512_s"]
    )
    out["inductor_cache"] = os.environ.get("TORCHINDUCTOR_CACHE_DIR", "")
    return out


# --- reporting -------------------------------------------------------------------------------------


def machine_line(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = platform.processor() or platform.machine()
    flags: set[str] = set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and model in ("", platform.machine()):
                model = line.split(":", 1)[1].strip()
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    extras = [f for f in ("avx512_bf16", "amx_bf16") if f in flags]
    load = "n/a"
    try:
        load = Path("/proc/loadavg").read_text().split()[0]
    except OSError:
        pass
    return f"{model} ({', '.join(extras) or 'no bf16 matrix instructions'}), {torch.get_num_threads()} threads, load {load}"


def print_table(results: list[dict[str, object]], device: torch.device) -> None:
    out = sys.stderr
    print(f"\nstablesr benchmark: {machine_line(device)}, torch {torch.__version__}", file=out)
    names = [str(r["dtype"]) for r in results]
    print(f"{'what':<34}" + "".join(f"{n:>26}" for n in names), file=out)
    peaks = [("GEMM peak", "gemm_peak_gflops"), ("3x3 conv peak", "conv_peak_gflops")]
    for label, key in peaks:
        print(f"{label:<34}" + "".join(f"{r[key]:>18.0f} GFLOP/s" for r in results), file=out)
    keys = [k[:-2] for k in results[0] if k.endswith("_s") and k[:-2] + "_peak_mb" in results[0]]
    for key in keys:
        cells = []
        for r in results:
            cell = f"{r[key + '_s']:.2f} s"
            if f"{key}_peak_fraction" in r:
                cell += f" {100 * r[key + '_peak_fraction']:3.0f}%"
            cell += f" {r[key + '_peak_mb'] / 1024:4.1f}G"
            cells.append(f"{cell:>26}")
        flops = f" ({results[0][key + '_gflop']:.1f} GFLOP)" if f"{key}_gflop" in results[0] else ""
        print(f"{key + flops:<34}" + "".join(cells), file=out)
    print("(seconds: best of repeats; %: of the dtype's conv peak; G: peak RSS in GiB)", file=out)
    if "compiled_step_s" in results[0]:
        print(f"\ntorch.compile{'':<21}" + "".join(f"{n:>26}" for n in names), file=out)
        rows = [("step eager -> compiled", lambda r: f"{r['step_s']:.2f} -> {r['compiled_step_s']:.2f} s"),
                ("compile (first step)", lambda r: f"{r['compile_step_first_s']:.1f} s"),
                ("first image (+decoder compile)", lambda r: f"{r['compiled_image_512_first_s']:.1f} s"),
                ("image eager -> compiled", lambda r: f"{r['image_512_s']:.2f} -> {r['compiled_image_512_s']:.2f} s"),
                (f"{FOLDER_IMAGES} images eager / compiled", lambda r: f"{r['folder10_eager_s']:.0f} / {r['folder10_compiled_s']:.0f} s")]  # fmt: skip
        for label, cell in rows:
            print(f"{label:<34}" + "".join(f"{cell(r):>26}" for r in results), file=out)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", nargs="+", default=["auto"], choices=["auto", *DTYPES],
                        help="one or more; several run side by side in this process")  # fmt: skip
    parser.add_argument("--steps", type=int, default=4, help="sampling steps per image (Turbo: 4)")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per component (best is reported)")
    parser.add_argument("--big", action="store_true", help="also 256x256 -> 1024x1024, lean VAE tiling and whole")
    parser.add_argument("--quick", action="store_true", help="toy-size networks (a check of the bench itself)")
    parser.add_argument("--json", action="store_true", help="one JSON object per dtype on standard output")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile'd networks (compile + step)")
    parser.add_argument("--compile-cache", metavar="DIR", help="inductor cache folder to use, e.g. one an earlier run filled (default: a fresh, cold one)")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    sizes = QUICK if args.quick else Sizes()
    if args.quick:
        args.repeats = min(args.repeats, 1)
    results = []
    for name in args.dtype:
        if name == "auto":
            name = "fp16" if device.type == "cuda" else {torch.float32: "fp32", torch.bfloat16: "bf16"}[auto_dtype()[0]]
        result = run_dtype(name, sizes, device, args)
        result["machine"] = machine_line(device)
        results.append(result)
        if args.json:
            print(json.dumps(result), flush=True)
    print_table(results, device)


if __name__ == "__main__":
    main()
