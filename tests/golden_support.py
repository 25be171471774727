"""The generic golden-case machinery: read a case file, resolve its weights, compare outputs.

A case is one `.safetensors` file written by the official code (see tests/fixtures/golden/README.md):
`weights.<upstream key>`, `input.<name>`, `output.<name>` tensors plus metadata (`case`, `upstream`,
`config`, `tolerance`, ...). Handlers are looked up by the metadata's `upstream` field (what upstream
callable produced the outputs), so any other case of the same kind runs through the same handler.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open

WEIGHTS = "weights."
DEFAULT_GOLDEN_DIR = Path(__file__).parent / "fixtures" / "golden"


def golden_dir(environ: dict[str, str] | os._Environ = os.environ) -> Path:
    """The folder of cases to run: $STABLESR_GOLDEN_DIR, or the fixtures shipped with the tests."""
    return Path(environ.get("STABLESR_GOLDEN_DIR") or DEFAULT_GOLDEN_DIR)


def golden_cases(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.safetensors"))


@dataclass
class GoldenCase:
    path: Path
    tensors: dict[str, torch.Tensor]
    metadata: dict[str, str]
    _shared_weights: dict[str, torch.Tensor] | None = field(default=None, repr=False)

    @classmethod
    def load(cls, path: Path) -> "GoldenCase":
        tensors: dict[str, torch.Tensor] = {}
        with safe_open(str(path), "pt") as f:
            metadata = dict(f.metadata() or {})
            for name in f.keys():
                tensors[name] = f.get_tensor(name)
        return cls(path, tensors, metadata)

    @property
    def name(self) -> str:
        return self.path.stem

    @property
    def upstream(self) -> str:
        return self.metadata.get("upstream", "")

    @property
    def config(self) -> dict:
        return json.loads(self.metadata.get("config", "{}"))

    def meta_json(self, key: str):
        return json.loads(self.metadata[key])

    def input(self, name: str) -> torch.Tensor:
        return self.tensors[f"input.{name}"]

    def inputs(self, prefix: str) -> dict[str, torch.Tensor]:
        """`input.<prefix>.<rest>` tensors keyed by <rest>."""
        head = f"input.{prefix}."
        return {k[len(head):]: v for k, v in self.tensors.items() if k.startswith(head)}

    def outputs(self) -> dict[str, torch.Tensor]:
        return {k: v for k, v in self.tensors.items() if k.startswith("output.")}

    def weights(self) -> dict[str, torch.Tensor]:
        """The case's weights under their upstream keys, cast to float32 (float8 -> float32 is exact).

        A case without `weights.*` tensors names the files it shares weights with in its
        `weights_source` metadata; those files are read from the same folder.
        """
        own = {k[len(WEIGHTS):]: v for k, v in self.tensors.items() if k.startswith(WEIGHTS)}
        if own:
            return {k: _to_float32(v) for k, v in own.items()}
        if self._shared_weights is None:
            source = self.metadata.get("weights_source", "")
            files = re.findall(r"[\w.-]+\.safetensors", source)
            if not files:
                raise AssertionError(f"{self.path.name}: no weights.* tensors and no weights_source")
            shared: dict[str, torch.Tensor] = {}
            for file in files:
                with safe_open(str(self.path.parent / file), "pt") as f:
                    for name in f.keys():
                        if name.startswith(WEIGHTS):
                            shared[name[len(WEIGHTS):]] = _to_float32(f.get_tensor(name))
            self._shared_weights = shared
        return dict(self._shared_weights)

    def tolerance_for(self, name: str) -> tuple[float, float]:
        for rule in json.loads(self.metadata.get("tolerance", "[]")):
            if fnmatch.fnmatchcase(name, rule["match"]):
                return float(rule["atol"]), float(rule["rtol"])
        raise AssertionError(f"{self.path.name}: no tolerance rule matches {name}")


def _to_float32(t: torch.Tensor) -> torch.Tensor:
    return t.to(torch.float32) if t.is_floating_point() else t


Handler = Callable[[GoldenCase], dict[str, torch.Tensor]]
HANDLERS: dict[str, Handler] = {}


def handles(upstream: str) -> Callable[[Handler], Handler]:
    """Register a handler for cases whose metadata `upstream` equals this string.

    The handler returns the tensors it computed, named like the case's tensors
    (`output.<name>`, and `input.<name>` where an input is itself derived, e.g. token ids).
    """

    def register(fn: Handler) -> Handler:
        HANDLERS[upstream] = fn
        return fn

    return register


def compare(case: GoldenCase, produced: dict[str, torch.Tensor]) -> list[str]:
    """Every `output.*` of the case must be produced and within tolerance; returns a report per tensor."""
    failures: list[str] = []
    report: list[str] = []
    expected_names = set(case.outputs()) | {k for k in produced if k.startswith("input.")}
    missing = sorted(set(case.outputs()) - set(produced))
    if missing:
        failures.append(f"not produced by the handler: {missing}")
    for name in sorted(expected_names & set(produced)):
        want = case.tensors[name]
        got = produced[name].detach().to("cpu")
        if tuple(got.shape) != tuple(want.shape):
            failures.append(f"{name}: shape {tuple(got.shape)} != golden {tuple(want.shape)}")
            continue
        atol, rtol = case.tolerance_for(name)
        if want.is_floating_point() or got.is_floating_point():
            w64, g64 = want.to(torch.float64), got.to(torch.float64)
        else:
            w64, g64 = want.to(torch.int64), got.to(torch.int64)
        diff = (g64 - w64).abs()
        bound = atol + rtol * w64.abs()
        max_err = float(diff.max()) if diff.numel() else 0.0
        ok = bool((diff <= bound).all())
        report.append(f"{name}: max|err| = {max_err:.3g} (atol {atol:g}, rtol {rtol:g})")
        if not ok:
            over = int((diff > bound).sum())
            failures.append(
                f"{name}: max|err| = {max_err:.3g}, mean {float(diff.double().mean()):.3g}, "
                f"{over}/{diff.numel()} elements over atol {atol:g} + rtol {rtol:g}"
            )
    if failures:
        raise AssertionError(f"{case.path.name}:\n  " + "\n  ".join(failures))
    return report


def run_case(path: Path) -> list[str]:
    """Load one case, run the handler its metadata names and compare; returns the per-tensor report.

    A case of a kind no handler knows is an AssertionError (a failed test, never a skip).
    """
    case = GoldenCase.load(path)
    handler = HANDLERS.get(case.upstream)
    if handler is None:
        raise AssertionError(f"{path.name}: no handler for upstream {case.upstream!r}; known: {sorted(HANDLERS)}")
    return compare(case, handler(case))
