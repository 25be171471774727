"""ONE runner for every golden case: tests/fixtures/golden/*.safetensors, or $STABLESR_GOLDEN_DIR.

Each case is its own test (id = file name); the handler is chosen from the case's own metadata and
the module is built from the file alone. A case of a kind no handler knows FAILS, it is never skipped.
"""

from __future__ import annotations

from pathlib import Path

import pytest

import golden_handlers  # noqa: F401  (registers the handlers)
from golden_support import golden_cases, golden_dir, run_case

GOLDEN_DIR = golden_dir()
CASES = golden_cases(GOLDEN_DIR)


def test_golden_folder_has_cases():
    assert CASES, f"no golden cases (*.safetensors) in {GOLDEN_DIR}"


@pytest.mark.parametrize("path", CASES, ids=[p.name for p in CASES])
def test_golden_case(path: Path, record_property):
    report = run_case(path)
    for line in report:
        print(line)
    record_property("max_errors", "; ".join(report))
