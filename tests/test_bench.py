"""The benchmark is an instrument other work relies on: its --quick mode runs and reports every key."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
KEYS = {"dtype", "device", "unet_s", "step_s", "time_encoder_s", "vae_encode_512_s", "cfw_decode_512_s",
        "image_512_s", "peak_rss_mb", "gemm_peak_gflops", "unet_gflops"}  # fmt: skip


def test_quick_bench_writes_one_json_object_per_dtype_with_every_key():
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "bench.py"), "--quick", "--json", "--dtype", "fp32", "bf16"],
        capture_output=True, text=True, env=env, timeout=600, check=True,
    )
    results = [json.loads(line) for line in done.stdout.splitlines()]
    assert [r["dtype"] for r in results] == ["fp32", "bf16"]
    for r in results:
        assert KEYS <= set(r), KEYS - set(r)
        assert r["device"] == "cpu" and r["unet_gflop"] > 0
        assert all(r[k] > 0 for k in KEYS - {"dtype", "device"})
        assert r["unet_peak_fraction"] == pytest.approx(r["unet_gflops"] / r["conv_peak_gflops"])
        assert r["step_gflop"] > r["unet_gflop"]  # the step is the encoder plus the UNet
    # one network costs the same FLOPs in every dtype: the bf16 path's prepacked oneDNN operators and
    # the CPU flash-attention kernel are counted, not skipped as free
    counted = [k for k in results[0] if k.endswith("_gflop")]
    assert counted and all(results[0][k] == pytest.approx(results[1][k]) for k in counted)
    assert "unet" in done.stderr and "GFLOP/s" in done.stderr  # the human table
