"""The golden runner itself: pointed at another folder it runs every case there, and a case of a
kind it does not know FAILS (it is never skipped)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from safetensors import safe_open
from safetensors.torch import save_file

TESTS = Path(__file__).parent
GOLDEN = TESTS / "fixtures" / "golden"


def copy_case(source: Path, target: Path, **metadata_changes: str) -> None:
    with safe_open(str(source), "pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
        metadata = dict(f.metadata() or {})
    metadata.update(metadata_changes)
    save_file(tensors, str(target), metadata=metadata)


def test_runner_runs_another_folder_and_fails_unknown_kinds(tmp_path):
    copy_case(GOLDEN / "07_colorfix.safetensors", tmp_path / "my_colorfix.safetensors")
    copy_case(GOLDEN / "07_colorfix.safetensors", tmp_path / "zz_unknown.safetensors", upstream="somewhere.new_kind")
    env = {**os.environ, "STABLESR_GOLDEN_DIR": str(tmp_path)}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(TESTS / "test_golden.py")],
        capture_output=True, text=True, env=env, cwd=TESTS.parent,
    )
    out = result.stdout
    assert result.returncode == 1, out
    assert "test_golden_case[my_colorfix.safetensors] PASSED" in out or "1 failed, 2 passed" in out, out
    assert "FAILED" in out and "zz_unknown.safetensors" in out and "no handler for upstream 'somewhere.new_kind'" in out
    assert "skipped" not in out
