"""Time `stablesr weights convert` on full-size official-layout checkpoints and measure its peak RSS.

The released StableSR diffusion checkpoint is a 6.5 GB Lightning container: the model's 1.41 G
values (UNet with its SFT layers, time-aware encoder, SD-VAE, OpenCLIP text tower, schedule
buffers), the ModelCheckpoint callback state, and Adam's `exp_avg`/`exp_avg_sq` for the trained
parameters (the time-aware encoder and the UNet's `spade` layers). This bench writes a file of the
same keys, shapes and size with random weights (key names and shapes from the full-size key
manifests in the golden folder), plus the CFW checkpoint (autoencoder, LPIPS loss, Adam state for
the fusion layers and the discriminator), into a temporary folder, then runs in child processes:

1. `stablesr weights convert CKPT -o OUT` (the diffusion checkpoint),
2. `stablesr weights convert --cfw CFW -o OUT` (the CFW checkpoint),
3. the first-use path: convert both, then `Upscaler.from_components` on the result.

Each child's wall time and peak RSS (sampled from /proc, touched pages of memory-mapped files
included) are printed; the target is under 4 GB for the conversions and for the first use in bf16.
The first use in fp32 cannot meet it: the weights it loads (UNet, time-aware encoder, CFW
autoencoder) take 4194 MB in float32 alone (printed below the table, in its units). The temporary
folder is deleted at the end.

    PYTHONPATH=$PWD python bench/convert_bench.py [--json] [--dtype fp32 bf16] [--keys-dir DIR]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import OrderedDict
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
KEYS_DIR = Path("/work/shared/golden")
SR_KEYS = "keys_v2-finetune_text_T_512.json"
CFW_KEYS = "keys_autoencoder_kl_64x64x4_resi.json"
SR_FILE, CFW_FILE = "stablesr_full_random.ckpt", "vqgan_cfw_full_random.ckpt"
TARGET_MB = 4096
_POOL = 1 << 22  # random values copied into every tensor: filling GBs with torch.randn would take minutes


def _trained_sr(key: str) -> bool:
    # StableSR fine-tunes the time-aware encoder and the UNet's SFT (`spade`) layers; the rest is frozen
    return key.startswith("structcond_stage_model.") or ".spade." in key


def _trained_cfw(key: str) -> bool:
    return key.startswith("decoder.fusion_layer_") or key.startswith("loss.discriminator.")


def _random_filled(shape: list[int], dtype: str, pool: torch.Tensor) -> torch.Tensor:
    # small values, so the text tower run for the empty-prompt context stays finite
    t = torch.empty(shape, dtype=getattr(torch, dtype))
    flat = t.view(-1)
    for start in range(0, flat.numel(), _POOL):
        chunk = flat[start : start + _POOL]
        chunk.copy_(pool[: chunk.numel()])
    return t


def _pool(seed: int) -> torch.Tensor:
    return torch.randn(_POOL, generator=torch.Generator().manual_seed(seed)) * 0.02


def _checkpoint(manifest: Path, trained, seed: int, frozen_seed: int | None = None) -> tuple[dict, int]:
    """A Lightning container with the manifest's keys and shapes and Adam state of the real size.

    With `frozen_seed`, the untrained model weights are filled from that seed's values instead: a
    tensor's values depend only on its shape and the seed, so the CFW checkpoint's frozen autoencoder
    (upstream trains only the fusion layers and the discriminator, from the SD VAE) equals the
    diffusion checkpoint's VAE, as in the released files, and the first use shares one encoder.
    """
    keys = json.loads(manifest.read_text())["keys"]
    pool = _pool(seed)
    frozen = pool if frozen_seed is None else _pool(frozen_seed)
    state_dict = OrderedDict(
        (k, _random_filled(shape, dtype, pool if trained(k) or k.startswith("loss.") else frozen))
        for k, (shape, dtype) in keys.items()
    )
    adam = {}
    for index, (key, value) in enumerate(v for v in state_dict.items() if trained(v[0])):
        # never read by the converter: uninitialised memory is written out without touching RAM first
        adam[index] = {"step": 117000, "exp_avg": torch.empty_like(value), "exp_avg_sq": torch.empty_like(value)}
    container = {
        "epoch": 117,
        "global_step": 117000,
        "pytorch-lightning_version": "1.4.2",
        "state_dict": state_dict,
        "callbacks": {},
        "optimizer_states": [
            {
                "state": adam,
                "param_groups": [{"lr": 5e-5, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.0, "params": list(adam)}],
            }
        ],
        "lr_schedulers": [],
    }
    return container, sum(math.prod(shape) for shape, _ in keys.values())


def write_checkpoint(manifest: Path, trained, path: Path, seed: int, frozen_seed: int | None = None) -> dict:
    sys.path.insert(0, str(ROOT))
    from tests.tiny_checkpoints import lightning_callback_class

    start = time.perf_counter()
    container, values = _checkpoint(manifest, trained, seed, frozen_seed)
    with lightning_callback_class() as callback:
        container["callbacks"] = {callback: {"monitor": None, "best_model_score": torch.tensor(0.25), "current_score": None}}
        torch.save(container, path)
    del container
    return {"file": path.name, "values": values, "bytes": path.stat().st_size, "write_s": round(time.perf_counter() - start, 1)}


# The peak is sampled from /proc every 50 ms: `ru_maxrss` misses most of a memory-mapped file's
# pages here (a conversion holding 5.4 GB of checkpoint pages reported 1.5 GB), and Linux carries a
# process's high-water mark across fork and exec, so a child forked straight from this bench would
# also report the bench's own. A small launcher process starts the measured command and watches it.
_LAUNCHER = """
import json, os, subprocess, sys, time
start = time.perf_counter()
child = subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL)
peak = {"VmRSS": 0, "RssAnon": 0, "RssFile": 0}
while child.poll() is None:
    try:
        with open(f"/proc/{child.pid}/status") as fh:
            for line in fh:
                key = line.split(":")[0]
                if key in peak:
                    peak[key] = max(peak[key], int(line.split()[1]))
    except (OSError, ValueError, IndexError):
        pass
    time.sleep(0.05)
print(json.dumps({"code": child.returncode, "seconds": time.perf_counter() - start, "peak_kb": peak}))
"""


def run_child(argv: list[str], code: Path) -> dict:
    """Wall time and peak RSS of one command (its own, not the bench's or earlier commands')."""
    env = dict(os.environ, PYTHONPATH=str(code) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    # run in `code`: `python -c` and `python -m` put the working folder first on sys.path, ahead of
    # PYTHONPATH, so from another checkout the children would import that checkout's stablesr_cli
    done = subprocess.run([sys.executable, "-c", _LAUNCHER, *argv], env=env, cwd=code, capture_output=True, text=True)
    if done.returncode != 0 or not done.stdout.strip():
        raise SystemExit(f"launcher failed:\n{done.stderr[-2000:]}")
    report = json.loads(done.stdout.strip().splitlines()[-1])
    if report["code"] != 0:
        raise SystemExit(f"{' '.join(argv[:6])} ... failed with exit {report['code']}:\n{done.stderr[-2000:]}")
    peak = report["peak_kb"]
    return {
        "seconds": round(report["seconds"], 1),
        "peak_rss_mb": round(peak["VmRSS"] / 1024),
        "peak_file_mb": round(peak["RssFile"] / 1024),  # mapped checkpoint/weight pages
        "peak_anon_mb": round(peak["RssAnon"] / 1024),
    }


_FIRST_USE = """
import sys
from pathlib import Path
from stablesr_cli.api import Upscaler
from stablesr_cli.store.conversion import convert_checkpoint
written = convert_checkpoint(sys.argv[1], sys.argv[3], cfw=sys.argv[2])
names = ("unet", "time_encoder", "vae", "cfw", "context_empty")
Upscaler.from_components({n: Path(written[n]) for n in names}, device="cpu", dtype=sys.argv[4])
"""


def loaded_weights_mb(keys_dir: Path, dtype: str) -> int:
    """Size of the weights a first use keeps in `dtype`: the UNet, the time-aware encoder and the CFW
    autoencoder (the SD VAE shares the CFW's encoder and is not kept; the text tower is not loaded)."""
    sr = json.loads((keys_dir / SR_KEYS).read_text())["keys"]
    cfw = json.loads((keys_dir / CFW_KEYS).read_text())["keys"]
    kept = [shape for key, (shape, _) in sr.items() if key.startswith(("model.diffusion_model.", "structcond_stage_model."))]
    kept += [shape for key, (shape, _) in cfw.items() if not key.startswith("loss.")]
    size = 4 if dtype in ("fp32", "float32") else 2
    return round(sum(math.prod(shape) for shape in kept) * size / 2**20)


def _free_gb() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 2**20
    return float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    parser.add_argument("--dtype", nargs="+", default=["fp32", "bf16"], help="dtypes for the first-use load")
    parser.add_argument("--keys-dir", type=Path, default=KEYS_DIR, help="folder holding the two key manifests")
    parser.add_argument("--code", type=Path, default=ROOT, help="checkout whose stablesr_cli the children run (compare before/after)")
    parser.add_argument("--write-checkpoints", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--tmp", type=Path, default=None, help="where the temporary folder goes (default: $TMPDIR)")
    args = parser.parse_args()
    if args.write_checkpoints:
        work = args.write_checkpoints
        sr = write_checkpoint(args.keys_dir / SR_KEYS, _trained_sr, work / SR_FILE, seed=1)
        cfw = write_checkpoint(args.keys_dir / CFW_KEYS, _trained_cfw, work / CFW_FILE, seed=2, frozen_seed=1)
        print(json.dumps({"sr": sr, "cfw": cfw}))
        return

    args.code = args.code.resolve()  # the children run in it: every path they get is absolute
    work = Path(tempfile.mkdtemp(prefix="stablesr-convbench-", dir=args.tmp)).resolve()
    need_disk = 20 * 2**30  # both checkpoints + the converted files of two runs
    if shutil.disk_usage(work).free < need_disk:
        shutil.rmtree(work)
        raise SystemExit(f"{work}: needs {need_disk >> 30} GB free disk")
    if _free_gb() < 10:
        shutil.rmtree(work)
        raise SystemExit(f"only {_free_gb():.1f} GB of memory available; this bench needs 10 GB (it builds a 6.5 GB checkpoint)")
    result: dict = {
        "machine": f"{os.cpu_count()} cores, torch {torch.__version__}", "code": str(args.code), "load_avg": os.getloadavg()[0],
    }  # fmt: skip
    try:
        sr, cfw = work / SR_FILE, work / CFW_FILE
        # written by a child process: the GBs it builds are returned to the system before measuring
        writer = [sys.executable, __file__, "--write-checkpoints", str(work), "--keys-dir", str(args.keys_dir)]
        written = json.loads(subprocess.run(writer, check=True, capture_output=True, text=True).stdout)
        result["sr_checkpoint"], result["cfw_checkpoint"] = written["sr"], written["cfw"]
        cli = [sys.executable, "-m", "stablesr_cli", "weights", "convert"]
        rows = {
            "convert_sr": run_child(cli + [str(sr), "-o", str(work / "out")], args.code),
            "convert_cfw": run_child(cli + ["--cfw", str(cfw), "-o", str(work / "out")], args.code),
        }
        shutil.rmtree(work / "out")
        for dtype in args.dtype:
            rows[f"first_use_{dtype}"] = run_child(
                [sys.executable, "-c", _FIRST_USE, str(sr), str(cfw), str(work / f"first-{dtype}"), dtype], args.code
            )
            shutil.rmtree(work / f"first-{dtype}")
        result["runs"] = rows
        result["loaded_weights_mb"] = {dtype: loaded_weights_mb(args.keys_dir, dtype) for dtype in args.dtype}
        result["load_avg_end"] = os.getloadavg()[0]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if args.json:
        print(json.dumps(result))
        return
    print(f"code: {result['code']}")
    print(f"machine: {result['machine']}, load average {result['load_avg']:.1f} -> {result['load_avg_end']:.1f}")
    for name in ("sr_checkpoint", "cfw_checkpoint"):
        c = result[name]
        print(f"{c['file']}: {c['bytes'] / 1e9:.2f} GB ({c['values'] / 1e6:.0f} M model values), written in {c['write_s']} s")
    print(f"{'run':<20}{'seconds':>10}{'peak RSS MB':>14}{'file MB':>10}{'anon MB':>10}{'< 4 GB':>9}")
    for name, row in result["runs"].items():
        ok = "yes" if row["peak_rss_mb"] < TARGET_MB else "no"
        print(f"{name:<20}{row['seconds']:>10}{row['peak_rss_mb']:>14}{row['peak_file_mb']:>10}{row['peak_anon_mb']:>10}{ok:>9}")
    for dtype, size in result["loaded_weights_mb"].items():
        print(f"first use {dtype}: the weights it keeps are {size} MB themselves")


if __name__ == "__main__":
    main()
