"""Throughput of `stablesr upscale` over a folder: one process vs several workers vs Ray, on this machine.

    python bench/batch_throughput.py --model tiny --images 12             # tiny random-weight model
    python bench/batch_throughput.py --model full --images 4 --side 64    # full-size random weights
    python bench/batch_throughput.py --model tiny --ray                   # also through a local Ray

Each configuration is the real command in a fresh process (`python -m stablesr_cli upscale IN -o OUT
--json-file LOG ...`), so the numbers include process start, model load and writing. Printed per
configuration: wall seconds, images per hour, the mean work per image (read + compute + write,
from the JSON lines) and CPU seconds per image (the command and its worker processes; on a shared,
busy machine two processes also get a bigger share of the CPU, which this column sees through). Also measured alone: model load in a fresh process, and Ray start-up.
The full-size model is SD 2.x-sized with random weights, written once as a converted folder
(about 4.5 GB) under --work; its images are meaningless, its cost is the real architecture's.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))


def tiny_model(work: Path) -> Path:
    folder = work / "tiny" / "converted"
    if folder.is_dir():
        return folder
    from typer.testing import CliRunner

    from stablesr_cli.cli import app
    from tiny_checkpoints import write_tiny_cfw_ckpt, write_tiny_sr_ckpt

    (work / "tiny").mkdir(parents=True, exist_ok=True)
    write_tiny_sr_ckpt(work / "tiny" / "sr.ckpt", text_width=16)
    write_tiny_cfw_ckpt(work / "tiny" / "cfw.ckpt")
    result = CliRunner().invoke(app, [
        "weights", "convert", str(work / "tiny" / "sr.ckpt"), "--cfw", str(work / "tiny" / "cfw.ckpt"),
        "-o", str(folder), "--model", "turbo", "--unet-head-channels", "16", "--text-heads", "4",
    ])  # fmt: skip
    assert result.exit_code == 0, result.output
    return folder


def full_size_model(work: Path) -> Path:
    """A converted folder of SD 2.x-sized networks with random weights, in the upstream key layout."""
    folder = work / "full"
    if (folder / "cfw.safetensors").is_file():
        return folder
    import torch
    from safetensors.torch import save_file

    from bench import full_size_models
    from stablesr_cli.checkpoints.keymap import resblocks_to_upstream

    folder.mkdir(parents=True, exist_ok=True)
    models = full_size_models(torch.device("cpu"), torch.float32)

    def save(name: str, state: dict, metadata: dict[str, str]) -> None:
        tensors = {k: v.contiguous() for k, v in state.items()}
        save_file(tensors, str(folder / f"{name}.safetensors"), metadata=metadata)

    save("unet", resblocks_to_upstream(models.unet.state_dict()), {"num_head_channels": "64", "default_steps": "4"})
    save("time_encoder", resblocks_to_upstream(models.time_encoder.state_dict()), {"num_heads": "4"})
    vae = {k: v for k, v in models.cfw_vae.state_dict().items() if ".fusion_layer" not in k and "fusion" not in k}
    save("vae", vae, {})
    save("cfw", models.cfw_vae.state_dict(), {})
    save("context_empty", {"context": models.context.contiguous()}, {})
    return folder


def write_images(folder: Path, count: int, side: int) -> Path:
    import numpy as np
    from PIL import Image

    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for index in range(count):
        pixels = rng.integers(0, 256, (side, side, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"img{index:03d}.png")
    return folder


def env() -> dict[str, str]:
    variables = dict(os.environ)
    variables["PYTHONPATH"] = str(ROOT) + os.pathsep + variables.get("PYTHONPATH", "")
    variables.setdefault("STABLESR_OFFLINE", "1")
    return variables


def run(label: str, images: Path, out: Path, model_args: list[str], extra: list[str]) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    log = out.with_suffix(".jsonl")
    log.unlink(missing_ok=True)
    command = [sys.executable, "-m", "stablesr_cli", "upscale", str(images), "-o", str(out), "--json-file", str(log), "-q", *model_args, *extra]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, env=env())
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    # CPU time of the command and its worker processes (not of Ray's, which the raylet owns)
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    if result.returncode != 0:
        raise SystemExit(f"{label} failed ({result.returncode}):\n{result.stderr[-3000:]}")
    records = [json.loads(line) for line in log.read_text().splitlines()]
    work = [r["seconds"] for r in records if r["status"] == "done"]
    return {
        "label": label, "images": len(work), "wall": wall, "per_hour": len(work) / wall * 3600,
        "work": sum(work) / len(work), "cpu_per_image": cpu / len(work),
    }  # fmt: skip


def model_load_seconds(model_args: list[str], threads: int | None) -> float:
    code = (
        "import time, torch, sys; t = time.perf_counter(); from stablesr_cli.api import Upscaler; "
        f"{'torch.set_num_threads(%d); ' % threads if threads else ''}"
        f"Upscaler.from_pretrained({model_args[1]!r}); print(time.perf_counter() - t)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env(), check=True)
    return float(out.stdout.strip().splitlines()[-1])


def ray_start_seconds() -> float:
    code = (
        "import time; t = time.perf_counter(); import ray; "
        "ray.init(include_dashboard=False, log_to_driver=False); print(time.perf_counter() - t); ray.shutdown()"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env(), check=True)
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=["tiny", "full"], default="tiny")
    parser.add_argument("--images", type=int, default=12)
    parser.add_argument("--side", type=int, default=48, help="input side in pixels (outputs are 4x; full: 64 -> 256)")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--ray", action="store_true", help="also run through a local Ray instance")
    parser.add_argument("--work", type=Path, default=Path("/tmp/stablesr-batch-bench"))
    args = parser.parse_args()

    args.work.mkdir(parents=True, exist_ok=True)
    if args.model == "tiny":
        model_args = ["--model", str(tiny_model(args.work)), "--steps", "2", "--scale", "2", "--tile-size", "64", "--tile-overlap", "0"]
    else:
        model_args = ["--model", str(full_size_model(args.work)), "--steps", "4", "--scale", "4", "--tile-size", "256", "--tile-overlap", "0"]
    images = write_images(args.work / "in", args.images, args.side)
    rows = []
    for count in args.workers:
        extra = [] if count == 1 else ["--workers", str(count)]
        rows.append(run(f"{count} worker(s)", images, args.work / f"out-{count}", model_args, extra))
        print(rows[-1], flush=True)
    if args.ray:
        rows.append(run("ray, 2 actors", images, args.work / "out-ray", model_args, ["--ray", "--workers", "2"]))
        print(rows[-1], flush=True)
    load = model_load_seconds(model_args, None)
    print(f"\nstablesr batch throughput: {args.model} model, {args.images} images of {args.side}x{args.side}, "
          f"{os.cpu_count()} CPUs, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}")
    print(f"{'configuration':<16} {'wall s':>8} {'images/hour':>12} {'work/image s':>13} {'CPU s/image':>12}")
    for row in rows:
        print(
            f"{row['label']:<16} {row['wall']:>8.1f} {row['per_hour']:>12.0f} {row['work']:>13.2f} "
            f"{row['cpu_per_image']:>12.2f}"
        )
    print(f"model load in a fresh process (incl. torch import): {load:.1f} s")
    if args.ray:
        print(f"Ray start (ray.init, local): {ray_start_seconds():.1f} s")


if __name__ == "__main__":
    main()
