"""The golden runner itself: pointed at another folder it runs every case there, and a case of a
kind it does not know FAILS (it is never skipped). Calls the runner's own functions, in-process."""

from __future__ import annotations

from pathlib import Path

import pytest
from safetensors import safe_open
from safetensors.torch import save_file

import golden_handlers  # noqa: F401  (registers the handlers)
import test_golden
from golden_support import DEFAULT_GOLDEN_DIR, golden_cases, golden_dir, run_case

GOLDEN = DEFAULT_GOLDEN_DIR


def copy_case(source: Path, target: Path, **metadata_changes: str) -> None:
    with safe_open(str(source), "pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
        metadata = dict(f.metadata() or {})
    metadata.update(metadata_changes)
    save_file(tensors, str(target), metadata=metadata)


def test_the_folder_comes_from_the_environment(tmp_path):
    assert golden_dir({"STABLESR_GOLDEN_DIR": str(tmp_path)}) == tmp_path
    assert golden_dir({}) == GOLDEN
    assert golden_dir({"STABLESR_GOLDEN_DIR": ""}) == GOLDEN
    # the runner module collects from that folder, one test per case file
    assert test_golden.CASES == golden_cases(golden_dir())


def test_runner_runs_another_folder_and_fails_unknown_kinds(tmp_path):
    copy_case(GOLDEN / "07_colorfix.safetensors", tmp_path / "my_colorfix.safetensors")
    copy_case(GOLDEN / "07_colorfix.safetensors", tmp_path / "zz_unknown.safetensors", upstream="somewhere.new_kind")
    (tmp_path / "notes.txt").write_text("not a case")
    mine, unknown = golden_cases(tmp_path)
    assert (mine.name, unknown.name) == ("my_colorfix.safetensors", "zz_unknown.safetensors")

    report = run_case(mine)
    assert report and all("max|err|" in line for line in report)
    with pytest.raises(AssertionError, match=r"zz_unknown\.safetensors: no handler for upstream 'somewhere\.new_kind'"):
        run_case(unknown)


def test_a_case_out_of_tolerance_fails(tmp_path):
    with safe_open(str(GOLDEN / "07_colorfix.safetensors"), "pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
        metadata = dict(f.metadata() or {})
    name = "output.wavelet_reconstruction"
    tensors[name] = tensors[name] + 1e-3  # the case allows 1e-5
    save_file(tensors, str(tmp_path / "off.safetensors"), metadata=metadata)
    with pytest.raises(AssertionError, match=r"off\.safetensors:\n.*output\.wavelet_reconstruction: max\|err\|"):
        run_case(tmp_path / "off.safetensors")
