"""`stablesr weights verify`: read every byte again and compare with what was recorded.

Converted files are compared with the size and SHA-256 recorded in their folder's `stamp.json` at
conversion; downloaded checkpoints in the Hugging Face cache with our manifest's SHA-256 (or the
Hub's, for a file whose hash we do not record).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..checkpoints.layout import find_converted
from ..errors import StableSRError, WeightsNotFoundError
from ..hashing import require_regular_file, sha256_file
from .events import WeightsCallback, WeightsEvent, silent
from .fetch import cached_download, source_problem
from .integrity import file_problem
from .manifest import FileSpec, load_manifest
from .places import converted_dir
from .record import read_stamp


@dataclass(frozen=True)
class FileCheck:
    path: Path
    problem: str | None
    """What is wrong, or None when the file is as recorded."""
    how: str
    """What was compared, for the report."""

    @property
    def ok(self) -> bool:
        return self.problem is None


def _check_converted(path: Path, size: int | None, sha256: str | None, on_event: WeightsCallback) -> FileCheck:
    problem = file_problem(path, size)
    if problem is not None:
        return FileCheck(path, problem, "size and header")
    if sha256 is None:
        return FileCheck(path, None, "size and header only (no SHA-256 was recorded at conversion)")
    on_event(WeightsEvent("verify", f"checking the SHA-256 of {path}", file=path.name, total=path.stat().st_size))
    try:
        actual = sha256_file(path)
    except StableSRError as exc:
        return FileCheck(path, str(exc), "SHA-256")
    if actual != sha256:
        return FileCheck(path, f"SHA-256 {actual} differs from {sha256} recorded at conversion: the file changed", "SHA-256")
    return FileCheck(path, None, "SHA-256 recorded at conversion")


def verify_folder(folder: str | Path, on_event: WeightsCallback | None = None) -> list[FileCheck]:
    """Check every converted file in `folder`: the ones its stamp records and any other component file."""
    folder, on_event = Path(folder).expanduser(), on_event or silent
    if not folder.is_dir():
        raise WeightsNotFoundError(f"{folder}: not a folder")
    stamp = read_stamp(folder)
    recorded = stamp.files if stamp else {}
    names = sorted(set(recorded) | {p.name for p in find_converted(folder).values()})
    if not names:
        raise WeightsNotFoundError(f"{folder}: no converted weights here (no stamp.json, no *.safetensors components)")
    checks = []
    for name in names:
        entry = recorded.get(name)
        checks.append(_check_converted(folder / name, entry.size if entry else None, entry.sha256 if entry else None, on_event))
    return checks


def verify_download(spec: FileSpec, on_event: WeightsCallback | None = None) -> FileCheck | None:
    """Check the downloaded checkpoint in the Hugging Face cache; None when it is not there."""
    on_event = on_event or silent
    path = cached_download(spec)
    if path is None:
        return None
    try:
        size = require_regular_file(path)
        if spec.size is not None and size != spec.size:
            return FileCheck(path, f"{size} bytes, our manifest records {spec.size} for {spec.filename}", "size")
        on_event(WeightsEvent("verify", f"checking the SHA-256 of {path}", file=spec.filename, total=size))
        _, by, problem = source_problem(spec, path, downloaded=True)
    except StableSRError as exc:
        return FileCheck(path, str(exc), "SHA-256")
    how = {"manifest": "SHA-256 in our manifest", "hub": "the Hub's published SHA-256"}.get(by or "", "not verified: no published SHA-256")
    return FileCheck(path, problem, how)


def verify_files(specs: list[FileSpec], on_event: WeightsCallback | None = None) -> list[FileCheck]:
    """Converted folders and downloads of these official files, whichever are on this machine."""
    checks: list[FileCheck] = []
    for spec in specs:
        folder = converted_dir(spec)
        if folder.is_dir() and (read_stamp(folder) is not None or find_converted(folder)):
            checks.extend(verify_folder(folder, on_event))
        download = verify_download(spec, on_event)
        if download is not None:
            checks.append(download)
    return checks


def verify_model(name: str, on_event: WeightsCallback | None = None) -> list[FileCheck]:
    """Check what is on this machine of one manifest model; raises when nothing of it is."""
    spec = load_manifest().model(name)
    checks = verify_files(list(spec.files), on_event)
    if not checks:
        raise WeightsNotFoundError(f"nothing of model '{name}' is on this machine; fetch it with `stablesr weights download {name}`")
    return checks


def verify_everything(on_event: WeightsCallback | None = None) -> list[FileCheck]:
    """Check every official file that is on this machine (converted or downloaded)."""
    return verify_files(list(load_manifest().files.values()), on_event)
