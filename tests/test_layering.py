"""The import direction is the architecture: cli -> api -> pipeline -> models, checkpoints beside.

Checked statically (ast), so it is cheap and cannot be fooled by lazy imports at run time; the
second test checks that the CLI starts without importing torch.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "stablesr_cli"


def module_level_imports(path: Path) -> set[str]:
    """Absolute names imported at module level (relative imports resolved against the package)."""
    tree = ast.parse(path.read_text())
    package = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts[:-1])
    found: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            found.add(name)
    return found


def all_imports(path: Path) -> set[str]:
    """Every import anywhere in the file, lazy ones included."""
    tree = ast.parse(path.read_text())
    package = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts[:-1])
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                found.add(".".join(base + ([node.module] if node.module else [])))
            else:
                found.add(node.module or "")
    return found


def files(folder: str) -> list[Path]:
    return sorted((PACKAGE / folder).glob("*.py")) if folder else []


def _hits(imports: set[str], forbidden: tuple[str, ...]) -> list[str]:
    return sorted(i for i in imports if any(i == f or i.startswith(f + ".") for f in forbidden))


@pytest.mark.parametrize("path", files("models"), ids=lambda p: p.name)
def test_models_import_no_io_no_ui_no_checkpoints(path):
    forbidden = ("PIL", "typer", "rich", "stablesr_cli.checkpoints", "stablesr_cli.pipeline", "stablesr_cli.cli")
    assert not _hits(all_imports(path), forbidden)


@pytest.mark.parametrize("path", files("pipeline"), ids=lambda p: p.name)
def test_pipeline_reads_no_files_and_draws_no_ui(path):
    forbidden = ("PIL", "typer", "rich", "stablesr_cli.cli", "stablesr_cli.imaging", "stablesr_cli.store")
    assert not _hits(all_imports(path), forbidden)


IMAGING_WITH_TORCH = ("tensor_bridge.py", "pil_images.py")
"""The two imaging modules that hand pixels to the model; the file readers and writers stay torch-free."""


@pytest.mark.parametrize("path", files("imaging"), ids=lambda p: p.name)
def test_imaging_draws_no_ui_and_knows_no_model(path):
    forbidden = (
        "typer", "rich", "stablesr_cli.cli", "stablesr_cli.api", "stablesr_cli.pipeline",
        "stablesr_cli.models", "stablesr_cli.checkpoints", "stablesr_cli.store",
    )  # fmt: skip
    assert not _hits(all_imports(path), forbidden)


@pytest.mark.parametrize("path", [p for p in files("imaging") if p.name not in IMAGING_WITH_TORCH], ids=lambda p: p.name)
def test_image_files_are_read_and_written_without_torch(path):
    assert not _hits(all_imports(path), ("torch",))


LIGHT_MODULES = ["options.py", "errors.py", "progress.py", "atomic.py", "hashing.py", "model_facts.py", "budget.py", "checkpoints/layout.py"]


@pytest.mark.parametrize("name", LIGHT_MODULES + [f"store/{p.name}" for p in files("store")])
def test_light_modules_import_no_torch_at_module_level(name):
    assert not _hits(module_level_imports(PACKAGE / name), ("torch", "numpy", "huggingface_hub"))


@pytest.mark.parametrize("path", files("store"), ids=lambda p: p.name)
def test_store_reaches_torch_code_only_lazily(path):
    """The store runs for `weights list`, `info` and --help: at import it may use the torch-free
    layout of converted folders, never the converter or the loaders."""
    checkpoints = {i for i in module_level_imports(path) if i.startswith("stablesr_cli.checkpoints")}
    assert checkpoints <= {"stablesr_cli.checkpoints.layout"}
    assert not _hits(module_level_imports(path), ("PIL", "typer", "rich", "stablesr_cli.cli", "stablesr_cli.api"))


@pytest.mark.parametrize("name", ["hashing.py", "store/fetch.py", "store/verify.py", "store/integrity.py", "store/record.py"])
def test_verification_never_imports_torch(name):
    """Checking a download or a converted folder reads bytes and JSON only, not even lazily torch."""
    imports = all_imports(PACKAGE / name)
    assert not _hits(imports, ("torch", "numpy", "safetensors", "stablesr_cli.checkpoints.convert", "stablesr_cli.checkpoints.io"))


@pytest.mark.parametrize("path", files("cli"), ids=lambda p: p.name)
def test_cli_modules_import_no_torch_at_module_level(path):
    # runtime imports torch, imaging imports numpy and PIL: both only once a run needs them
    heavy = ("torch", "numpy", "PIL", "stablesr_cli.api", "stablesr_cli.pipeline", "stablesr_cli.runtime", "stablesr_cli.imaging")
    assert not _hits(module_level_imports(path), heavy)


@pytest.mark.parametrize("path", files("batch"), ids=lambda p: p.name)
def test_batch_modules_import_no_torch_and_no_ray_at_module_level(path):
    """The CLI imports the runner at start-up; Ray is an optional extra, torch loads in the workers."""
    forbidden = ("torch", "ray", "numpy", "stablesr_cli.api", "stablesr_cli.pipeline", "stablesr_cli.models")
    assert not _hits(module_level_imports(path), forbidden)


def test_help_does_not_import_torch():
    code = (
        "import sys; from stablesr_cli.cli import app; from typer.testing import CliRunner; "
        "r = CliRunner().invoke(app, ['--help']); assert r.exit_code == 0, r.output; "
        "print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
