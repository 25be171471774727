"""Which files a `stablesr upscale` run takes as inputs, and which it leaves out and why.

INPUT arguments (files, folders, globs, `-`) become an ordered, de-duplicated list of sources.
A scan leaves out what is not an image by its extension (and says so), hidden files (our own
in-progress temporaries among them), and the results of earlier runs: `a_x4.png` beside `a.png`
(any scale), files under an earlier output folder (each run leaves a marker file in its output
folder), and the current --output folder when it lies inside a scanned one. A file named
directly is always taken, except one of our temporaries. Nothing here reads image content.
"""

from __future__ import annotations

import glob
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..atomic import is_temporary_name
from ..errors import OptionError

STDIO = "-"
"""The argument that stands for standard input (as INPUT) or standard output (as --output)."""

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff", ".bmp"})
"""Extensions a folder scan or a glob picks up: the formats people keep photos in."""

RUN_MARKER = ".stablesr-outputs"
"""Written by every run into its --output folder; later scans leave folders holding it out."""

_SCALE_SUFFIX = re.compile(r"^(?P<base>.+)_x\d+(?:\.\d+)?(?:_\d+)?$")
"""`name_x4`, `name_x2.5`, `name_x4_2` (the counter for colliding names): our default suffix."""


@dataclass(frozen=True)
class Source:
    """One image to upscale."""

    path: Path | None
    """None: standard input."""
    root: Path | None = None
    """The folder argument this file was found under; outputs in an --output folder keep the
    path relative to it, so photos/a/x.png and photos/b/x.png do not collide."""
    named: bool = True
    """True when the user named this file directly; False when a folder scan or a glob found it."""
    found_under: Path | None = None
    """The folder a scan or glob started from (the glob's fixed leading folders); earlier output
    folders are recognised below it, not at it (naming an output folder means its files)."""

    @property
    def is_stdin(self) -> bool:
        return self.path is None

    @property
    def label(self) -> str:
        """How messages name this input."""
        return "<stdin>" if self.path is None else str(self.path)


@dataclass(frozen=True)
class MissingInput:
    """An INPUT argument that names nothing usable: reported as a failed image, the rest still runs."""

    argument: str
    problem: str


@dataclass(frozen=True)
class Expansion:
    sources: list[Source]
    missing: list[MissingInput]
    single: bool
    """True when exactly one file (or `-`) was named directly: then --output is a file name.
    A folder or a glob means "several", even when it holds one image."""
    not_images: list[Path] = field(default_factory=list)
    """Files a scan or glob met whose extension is not an image's (GIF, text, ...)."""


def expand_inputs(arguments: Sequence[str], *, recursive: bool) -> Expansion:
    """Turn INPUT arguments into a de-duplicated, ordered list of image sources.

    An existing path is taken literally (even if its name contains glob characters); otherwise a
    name with `*`, `?` or `[` is a glob. Explicit files are kept whatever their extension (a bad
    one fails with a clear message later); folders and globs contribute only image extensions,
    skipping hidden files (which includes our own in-progress temporary files).
    """
    if STDIO in arguments:
        if len(arguments) > 1:
            raise OptionError("'-' (standard input) cannot be combined with other inputs")
        return Expansion(sources=[Source(path=None)], missing=[], single=True)

    sources: list[Source] = []
    missing: list[MissingInput] = []
    not_images: list[Path] = []
    named_directly = 0
    for argument in arguments:
        path = Path(argument)
        if path.is_dir():
            sources.extend(_scan_folder(path, recursive=recursive, not_images=not_images))
        elif path.exists():
            named_directly += 1
            if is_temporary_name(path.name):
                missing.append(MissingInput(argument, "an unfinished file a stablesr run is writing; not an input"))
            else:
                sources.append(Source(path=path))
        elif glob.has_magic(argument):
            matched = _expand_glob(argument, recursive=recursive, not_images=not_images)
            if not matched:
                missing.append(MissingInput(argument, "no image matches this pattern"))
            sources.extend(matched)
        else:
            missing.append(MissingInput(argument, "no such file or folder"))
    single = named_directly == 1 and len(arguments) == 1
    return Expansion(sources=_unique(sources), missing=missing, single=single, not_images=_unique_paths(sorted(not_images, key=natural_key)))


def is_image_name(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def _sort_found(found: Iterable[Path], not_images: list[Path]) -> list[Path]:
    images: list[Path] = []
    for path in found:
        if is_image_name(path):
            images.append(path)
        elif not path.name.startswith("."):
            not_images.append(path)
    return sorted(images, key=natural_key)


def _scan_folder(folder: Path, *, recursive: bool, not_images: list[Path], found_under: Path | None = None) -> list[Source]:
    found: list[Path] = []
    if recursive:
        for directory, subdirs, files in os.walk(folder):
            subdirs[:] = sorted(d for d in subdirs if not d.startswith("."))
            found.extend(Path(directory) / name for name in files)
    else:
        found.extend(entry for entry in folder.iterdir() if entry.is_file())
    images = _sort_found(found, not_images)
    return [Source(path=p, root=folder, named=False, found_under=found_under or folder) for p in images]


def _expand_glob(pattern: str, *, recursive: bool, not_images: list[Path]) -> list[Source]:
    fixed = _fixed_folder(pattern)
    sources: list[Source] = []
    matches = [Path(m) for m in glob.glob(pattern, recursive=recursive)]
    files = [m for m in matches if not m.is_dir()]
    for match in sorted((m for m in matches if m.is_dir()), key=natural_key):
        sources.extend(_scan_folder(match, recursive=recursive, not_images=not_images, found_under=fixed))
    sources.extend(Source(path=p, named=False, found_under=fixed) for p in _sort_found(files, not_images))
    return sorted(sources, key=lambda s: natural_key(s.path))  # type: ignore[arg-type]


def _fixed_folder(pattern: str) -> Path:
    """The leading folders of a glob pattern that hold no wildcard (`shoot/*/x.png` -> `shoot`)."""
    fixed = Path()
    for part in Path(pattern).parent.parts:
        if glob.has_magic(part):
            break
        fixed /= part
    return fixed


def natural_key(path: Path) -> tuple:
    """img2 before img10, as people number their files."""
    return tuple((0, int(chunk), "") if chunk.isdigit() else (1, 0, chunk.casefold()) for chunk in re.findall(r"\d+|\D+", str(path)))


def _unique(sources: Iterable[Source]) -> list[Source]:
    """Keep the first mention of each file (e.g. `photos/ photos/a.png`)."""
    seen: set[str] = set()
    kept: list[Source] = []
    for source in sources:
        key = os.path.normcase(os.path.realpath(source.path)) if source.path else STDIO
        if key not in seen:
            seen.add(key)
            kept.append(source)
    return kept


def _unique_paths(paths: Iterable[Path]) -> list[Path]:
    return [s.path for s in _unique(Source(path=p) for p in paths)]  # type: ignore[misc]


# ------------------------------------------------------------ earlier outputs


def write_run_marker(folder: Path) -> None:
    """Mark `folder` as an output folder, so that scanning a folder above it leaves it out."""
    from ..atomic import atomic_write

    marker = folder / RUN_MARKER
    if not marker.exists():
        text = b"stablesr upscale writes its results here; scans of a folder above this one leave it out.\n"
        atomic_write(marker, lambda stream: stream.write(text), what="run marker")


def holds_inputs(folder: Path, sources: Sequence[Source]) -> bool:
    """Whether any input lies in `folder` or below it (then it is no folder of outputs alone)."""
    real = os.path.realpath(folder)
    return any(s.path is not None and _is_within(os.path.realpath(s.path), real) for s in sources)


def previous_outputs(sources: Sequence[Source], *, suffix: str, output_folder: Path | None) -> list[Source]:
    """The scanned sources that are results of earlier runs (or go to this run's output folder).

    Without this, re-running `stablesr upscale photos/` (e.g. to resume with --skip-existing)
    would upscale last run's `a_x4.png` into `a_x4_x4.png`. Only files found by scanning a folder
    or a glob are considered (an explicitly named file is always processed). One is left out when
    - it lies in a folder below the scan's start that holds a run marker (an earlier --output),
    - it lies inside this run's --output folder nested in the scanned folder, or
    - its name is `NAME_x<scale>` (or NAME + this run's suffix) and a file NAME.* sits beside it.
    """
    output_real = os.path.realpath(output_folder) if output_folder is not None else None
    stems = _FolderStems()
    marked = _MarkedFolders()
    left_out: list[Source] = []
    for source in sources:
        if source.path is None or source.named:
            continue
        if (
            marked.below(source)
            or (output_real is not None and _output_folder_nested_in_scan(source, output_real))
            or _named_like_an_output(source.path, suffix, stems)
        ):
            left_out.append(source)
    return left_out


def _named_like_an_output(path: Path, suffix: str, stems: _FolderStems) -> bool:
    stem = path.stem
    bases = []
    if suffix and stem.endswith(suffix) and len(stem) > len(suffix):
        bases.append(stem[: -len(suffix)])
    match = _SCALE_SUFFIX.match(stem)
    if match:
        bases.append(match["base"])
    return any(base in stems.of(path.parent) for base in bases)


class _FolderStems:
    """File stems per folder (any extension, hidden files excluded), listed once per folder."""

    def __init__(self) -> None:
        self._cache: dict[Path, frozenset[str]] = {}

    def of(self, folder: Path) -> frozenset[str]:
        if folder not in self._cache:
            try:
                names = os.listdir(folder)
            except OSError:
                names = []
            self._cache[folder] = frozenset(Path(n).stem for n in names if not n.startswith("."))
        return self._cache[folder]


class _MarkedFolders:
    """Whether a source lies below an earlier output folder (one holding a run marker)."""

    def __init__(self) -> None:
        self._cache: dict[Path, bool] = {}

    def below(self, source: Source) -> bool:
        assert source.path is not None
        start = Path(os.path.abspath(source.found_under or source.path.parent))
        folder = Path(os.path.abspath(source.path.parent))
        while folder != start and _is_within(str(folder), str(start)):
            if self._marked(folder):
                return True
            folder = folder.parent
        return False

    def _marked(self, folder: Path) -> bool:
        if folder not in self._cache:
            self._cache[folder] = (folder / RUN_MARKER).is_file()
        return self._cache[folder]


def _output_folder_nested_in_scan(source: Source, output_real: str) -> bool:
    """True when `source` lies in an --output folder that sits *below* the folder being scanned
    (photos/ -o photos/big/). An output folder equal to the scanned one holds the inputs
    themselves; those are kept and the overwrite policy deals with them."""
    if source.root is None or source.path is None:
        return False
    root_real = os.path.realpath(source.root)
    return (
        output_real != root_real
        and _is_within(output_real, root_real)
        and _is_within(os.path.realpath(source.path), output_real)
    )


def _is_within(path: str, folder: str) -> bool:
    try:
        return os.path.commonpath([path, folder]) == folder
    except ValueError:  # different drives on Windows
        return False


def describe_left_out(paths: Sequence[Path], why: str, *, limit: int = 5) -> str:
    """`N files <why>: a.gif, b.txt, ... and 7 more`: one line however many there are."""
    names = ", ".join(str(p) for p in paths[:limit])
    more = f" and {len(paths) - limit} more" if len(paths) > limit else ""
    noun = "file" if len(paths) == 1 else "files"
    return f"{len(paths)} {noun} {why}: {names}{more}"
