"""ONE runner for every golden case: tests/fixtures/golden/*.safetensors, or $STABLESR_GOLDEN_DIR.

Each case is its own test (id = file name); the handler is chosen from the case's own metadata and
the module is built from the file alone. A case of a kind no handler knows FAILS, it is never skipped.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import golden_handlers  # noqa: F401  (registers the handlers)
from golden_support import HANDLERS, GoldenCase, compare

GOLDEN_DIR = Path(os.environ.get("STABLESR_GOLDEN_DIR") or Path(__file__).parent / "fixtures" / "golden")
CASES = sorted(GOLDEN_DIR.glob("*.safetensors"))


def test_golden_folder_has_cases():
    assert CASES, f"no golden cases (*.safetensors) in {GOLDEN_DIR}"


@pytest.mark.parametrize("path", CASES, ids=[p.name for p in CASES])
def test_golden_case(path: Path, record_property):
    case = GoldenCase.load(path)
    handler = HANDLERS.get(case.upstream)
    if handler is None:
        pytest.fail(f"{path.name}: no handler for upstream {case.upstream!r}; known: {sorted(HANDLERS)}")
    report = compare(case, handler(case))
    for line in report:
        print(line)
    record_property("max_errors", "; ".join(report))
