"""Our cache of converted weights: one folder per official file, converted once, checked on use.

`converted/<file stem>/` under STABLESR_CACHE_DIR holds the safetensors files and `stamp.json`.
One process converts a file while others wait on a lock, then reuse its result. A folder counts
as converted when its stamp names the right source (and, when our manifest records the source's
SHA-256, that hash) and every recorded file has its recorded size and a whole header.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..atomic import remove_stale_temporaries
from .conversion import convert_fetched
from .events import WeightsCallback, WeightsEvent
from .fetch import cached_download, fetch_file
from .manifest import FileSpec, ModelSpec, load_manifest
from .places import converted_dir, file_lock
from .record import Stamp, read_stamp


def current_stamp(folder: Path, spec: FileSpec) -> tuple[Stamp | None, dict[str, str]]:
    """(the stamp, if it is for `spec`; file name -> problem for each damaged file)."""
    stamp = read_stamp(folder)
    if stamp is None or stamp.source != spec.filename:
        return None, {}
    if spec.sha256 and stamp.source_sha256 != spec.sha256:
        return None, {}
    return stamp, stamp.problems(folder)


def ensure_converted(
    spec: FileSpec, model: ModelSpec | None, *, from_dir: str | Path | None, offline: bool,
    on_event: WeightsCallback, text_heads: int | None,
) -> Path:
    """The folder of converted files for one official file, fetching and converting it if needed.

    `from_dir`: take the file from this folder instead of the Hub (it is verified all the same).
    A damaged conversion (a truncated file, say) is converted again.
    """
    folder = converted_dir(spec)
    with file_lock(spec.stem):
        stamp, damaged = current_stamp(folder, spec)
        if stamp is not None and not damaged:
            on_event(WeightsEvent("found", f"{spec.filename}: converted weights in {folder}", file=spec.filename))
            return folder
        if damaged:
            name, problem = next(iter(damaged.items()))
            on_event(WeightsEvent("note", f"{folder / name}: {problem}; converting {spec.filename} again", file=spec.filename))
        fetched = fetch_file(spec, from_dir=from_dir, offline=offline, on_event=on_event)
        remove_stale_temporaries(folder)  # a conversion killed with SIGKILL leaves gigabytes behind

        def note(line: str) -> None:
            on_event(WeightsEvent("convert", f"{spec.filename}: {line}", file=spec.filename))

        on_event(WeightsEvent("convert", f"converting {spec.filename} to safetensors in {folder}", file=spec.filename))
        convert_fetched(fetched, folder, model=model, text_heads=text_heads, note=note)
    return folder


def needs_download(spec: FileSpec) -> bool:
    """Whether using `spec` now would fetch it over the network (neither converted nor downloaded)."""
    stamp, damaged = current_stamp(converted_dir(spec), spec)
    if stamp is not None and not damaged:
        return False
    return cached_download(spec) is None


# ---------------------------------------------------------------------------------------------- status


@dataclass(frozen=True)
class FileStatus:
    spec: FileSpec
    downloaded: Path | None
    """The file in the Hugging Face cache, if there."""
    converted: Path | None
    """The folder of converted files, if complete and undamaged."""
    source_sha256: str | None = None
    verified_by: str | None = None
    source_path: str | None = None
    damaged: dict[str, str] = field(default_factory=dict)
    """Converted file -> what is wrong with it (the folder is then not `converted`)."""

    @property
    def problem(self) -> str | None:
        """One line about the first damaged file, if any."""
        if not self.damaged:
            return None
        name, problem = next(iter(self.damaged.items()))
        return f"{name}: {problem}"


@dataclass(frozen=True)
class ModelStatus:
    spec: ModelSpec
    files: tuple[FileStatus, ...] = field(default_factory=tuple)

    @property
    def ready(self) -> bool:
        return all(f.converted is not None for f in self.files)


def file_status(spec: FileSpec) -> FileStatus:
    """What is on this machine for one official file, from sizes and headers (no hashing)."""
    folder = converted_dir(spec)
    stamp, damaged = current_stamp(folder, spec)
    usable = stamp is not None and not damaged
    return FileStatus(
        spec=spec,
        downloaded=cached_download(spec),
        converted=folder if usable else None,
        source_sha256=stamp.source_sha256 if stamp else None,
        verified_by=stamp.verified_by if stamp else None,
        source_path=stamp.source_path if stamp else None,
        damaged=damaged,
    )


def model_status() -> list[ModelStatus]:
    """Every manifest model with what is present, converted, verified or damaged, and where."""
    manifest = load_manifest()
    by_file = {name: file_status(spec) for name, spec in manifest.files.items()}
    return [ModelStatus(m, (by_file[m.file.filename], by_file[m.cfw_file.filename])) for m in manifest.models.values()]
