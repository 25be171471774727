"""The memory bench measures each case in its own process and skips what would not fit, saying why."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench" / "memory_bench.py"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(BENCH), "--quick", "--json", *args], capture_output=True, text=True, env=ENV,
        timeout=600, check=True,
    )  # fmt: skip


def test_quick_memory_bench_measures_whole_and_lean_in_child_processes():
    done = _run("--sizes", "128", "--dtypes", "fp32")
    results = [json.loads(line) for line in done.stdout.splitlines()]
    assert [(r["side"], r["dtype"], r["tiling"]) for r in results] == [(128, "fp32", "whole"), (128, "fp32", "lean")]
    for r in results:
        assert "skipped" not in r and "error" not in r, r
        # the networks are resident, the upscale adds to them, and the parent's memory is not counted
        assert 0 < r["models_mb"] < r["peak_rss_mb"]
        assert r["above_models_mb"] == r["peak_rss_mb"] - r["models_mb"]
        assert r["seconds"] > 0 and r["estimate_mb"] > r["models_mb"]
        # the peak of each stage, reset between them; the largest is the peak
        stages = [r[f"{s}_above_models_mb"] for s in ("encode", "sample", "decode")]
        assert max(stages) == r["above_models_mb"] and r[f"{r['peak_stage']}_above_models_mb"] == max(stages)
    assert "1 sampling step" in done.stderr and "128x128 fp32" in done.stderr  # the human table


def test_cases_that_would_not_fit_are_skipped_with_their_estimate():
    done = _run("--sizes", "128", "512", "--dtypes", "bf16", "--tilings", "lean", "--memory-limit-gb", "2.5", "--reserve-gb", "2")
    results = [json.loads(line) for line in done.stdout.splitlines()]
    assert [r["side"] for r in results] == [128, 512]
    for r in results:
        assert "peak_rss_mb" not in r  # nothing was run
        assert r["skipped"] == f"needs ~{r['estimate_mb'] / 1024:.1f} GB, 0.5 GB available"
    assert "skipped: needs ~" in done.stderr
