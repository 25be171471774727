"""What a `stablesr upscale` run will do, decided before any pixel is touched.

Input expansion (files, directories, globs, `-`), output naming, format choice and the
skip / overwrite / refuse policy live here as plain functions over paths, so they can be tested
without a model and so `--dry-run` shows exactly what a real run would do.
Nothing here reads image content or imports torch; the only file-system access is listing
folders and asking whether paths exist.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from ..errors import OptionError
from ..options import OutputFormat, check_suffix

STDIO = "-"
"""The argument that stands for standard input (as INPUT) or standard output (as --output)."""

DEFAULT_SUFFIX = "_x{scale}"
"""Appended to the input's name for outputs written next to their inputs."""


# Extensions a folder scan or a glob picks up: the formats people keep photos in.
IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff", ".bmp"})

_FORMAT_OF_EXTENSION = {
    ".png": OutputFormat.PNG,
    ".jpg": OutputFormat.JPG,
    ".jpeg": OutputFormat.JPG,
    ".webp": OutputFormat.WEBP,
    ".tif": OutputFormat.TIFF,
    ".tiff": OutputFormat.TIFF,
    ".bmp": OutputFormat.BMP,
}
_EXTENSION_OF_FORMAT = {
    OutputFormat.PNG: ".png",
    OutputFormat.JPG: ".jpg",
    OutputFormat.WEBP: ".webp",
    OutputFormat.TIFF: ".tiff",
    OutputFormat.BMP: ".bmp",
}
FALLBACK_FORMAT = OutputFormat.PNG
"""For inputs whose extension names no writable format: lossless, keeps alpha and 16 bits."""


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

    @property
    def is_stdin(self) -> bool:
        return self.path is None

    @property
    def label(self) -> str:
        """How messages name this input."""
        return "<stdin>" if self.path is None else str(self.path)


@dataclass(frozen=True)
class MissingInput:
    """An INPUT argument that names nothing: reported as a failed image, the rest still runs."""

    argument: str
    problem: str


@dataclass(frozen=True)
class Expansion:
    sources: list[Source]
    missing: list[MissingInput]
    single: bool
    """True when exactly one file (or `-`) was named directly: then --output is a file name.
    A folder or a glob means "several", even when it holds one image."""


class Action(str, Enum):
    UPSCALE = "upscale"
    SKIP = "skip"
    FAIL = "fail"


@dataclass(frozen=True)
class Job:
    """One input, where its result goes, and whether to make it."""

    source: Source | None
    """None for a MissingInput turned into a failed job."""
    destination: Path | None
    """None: standard output."""
    format: OutputFormat | None
    """None: the input's own format, known only once standard input has been read."""
    action: Action
    reason: str = ""
    """Why the job is skipped or failed; empty for UPSCALE."""
    label: str = ""
    """The input as messages name it."""

    @property
    def destination_label(self) -> str:
        return "<stdout>" if self.destination is None else str(self.destination)


# ------------------------------------------------------------------ inputs


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
    named_directly = 0
    for argument in arguments:
        path = Path(argument)
        if path.is_dir():
            sources.extend(_scan_folder(path, recursive=recursive))
        elif path.exists():
            sources.append(Source(path=path))
            named_directly += 1
        elif glob.has_magic(argument):
            matched = _expand_glob(argument, recursive=recursive)
            if not matched:
                missing.append(MissingInput(argument, "no image matches this pattern"))
            sources.extend(matched)
        else:
            missing.append(MissingInput(argument, "no such file or folder"))
    single = named_directly == 1 and len(arguments) == 1
    return Expansion(sources=_unique(sources), missing=missing, single=single)


def _is_image_name(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def _scan_folder(folder: Path, *, recursive: bool) -> list[Source]:
    found: list[Path] = []
    if recursive:
        for directory, subdirs, files in os.walk(folder):
            subdirs[:] = sorted(d for d in subdirs if not d.startswith("."))
            found.extend(Path(directory) / name for name in files)
    else:
        found.extend(entry for entry in folder.iterdir() if entry.is_file())
    images = sorted((p for p in found if _is_image_name(p)), key=_natural_key)
    return [Source(path=p, root=folder, named=False) for p in images]


def _expand_glob(pattern: str, *, recursive: bool) -> list[Source]:
    sources: list[Source] = []
    for match in sorted((Path(m) for m in glob.glob(pattern, recursive=recursive)), key=_natural_key):
        if match.is_dir():
            sources.extend(_scan_folder(match, recursive=recursive))
        elif _is_image_name(match):
            sources.append(Source(path=match, named=False))
    return sources


def _natural_key(path: Path) -> tuple:
    """img2 before img10, as people number their files."""
    parts = []
    for chunk in _split_digits(str(path)):
        parts.append((0, int(chunk), "") if chunk.isdigit() else (1, 0, chunk.casefold()))
    return tuple(parts)


def _split_digits(text: str) -> list[str]:
    chunks: list[str] = []
    for char in text:
        if chunks and chunks[-1][-1].isdigit() == char.isdigit():
            chunks[-1] += char
        else:
            chunks.append(char)
    return chunks


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


def drop_previous_outputs(sources: Sequence[Source], *, suffix: str, output_folder: Path | None) -> list[Source]:
    """Leave out files that an earlier run of this same command wrote.

    Without this, re-running `stablesr upscale photos/` (e.g. to resume with --skip-existing)
    would upscale last run's `a_x4.png` into `a_x4_x4.png`. Only files found by scanning a folder
    or a glob are considered (an explicitly named file is always processed): one is dropped when
    it lies inside an --output folder nested in the scanned folder, or when its name is another
    scanned image's name plus `suffix`.
    """
    scanned_stems = {
        (source.path.parent, source.path.stem)
        for source in sources
        if source.path is not None
    }
    output_real = os.path.realpath(output_folder) if output_folder is not None else None
    kept: list[Source] = []
    for source in sources:
        if source.path is None or source.named:
            kept.append(source)
            continue
        if output_real is not None and _output_folder_nested_in_scan(source, output_real):
            continue
        stem = source.path.stem
        if suffix and stem.endswith(suffix) and (source.path.parent, stem[: -len(suffix)]) in scanned_stems:
            continue
        kept.append(source)
    return kept


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
    return os.path.commonpath([path, folder]) == folder


# ----------------------------------------------------------------- outputs


def expand_suffix(template: str, scale: float) -> str:
    """`_x{scale}` -> `_x4` for 4.0, `_x2.5` for 2.5."""
    check_suffix(template)
    try:
        return template.format(scale=f"{scale:g}")
    except (KeyError, IndexError, ValueError) as error:
        raise OptionError(
            f"--suffix {template!r} is not a valid name template (only {{scale}} may appear in braces)"
        ) from error


def format_of_name(path: Path | str) -> OutputFormat | None:
    """The output format a file name asks for, from its extension."""
    return _FORMAT_OF_EXTENSION.get(Path(path).suffix.lower())


def output_extension(input_path: Path | None, requested: OutputFormat | None) -> tuple[str, OutputFormat]:
    """Extension and format of an output named after its input.

    The input's own extension spelling is kept when the format stays the same (photo.JPEG ->
    photo_x4.JPEG); a requested format uses its canonical extension; an input whose extension
    names no writable format becomes PNG.
    """
    input_format = format_of_name(input_path) if input_path is not None else None
    chosen = requested or input_format or FALLBACK_FORMAT
    if input_path is not None and chosen == input_format:
        return input_path.suffix, chosen
    return _EXTENSION_OF_FORMAT[chosen], chosen


@dataclass(frozen=True)
class OutputRequest:
    """The user's output options, as given."""

    output: str | None = None
    """-o/--output: None (next to each input), `-` (standard output), a file, or a folder."""
    suffix: str | None = None
    """--suffix template; None means `_x{scale}` next to inputs and no suffix in an --output folder."""
    format: OutputFormat | None = None
    scale: float = 4.0
    skip_existing: bool = False
    overwrite: bool = False


def output_folder_of(request: OutputRequest, expansion: Expansion) -> Path | None:
    """The folder that receives every output, or None when outputs go to a file, stdout or next to inputs."""
    if request.output is None or request.output == STDIO:
        return None
    target = Path(request.output)
    names_a_folder = target.is_dir() or request.output.endswith(("/", os.sep))
    if names_a_folder or not expansion.single:
        return target
    return None


def effective_suffix(request: OutputRequest, output_folder: Path | None) -> str:
    if request.suffix is not None:
        return expand_suffix(request.suffix, request.scale)
    # In a separate output folder the original names are the most useful ones; next to the
    # input a suffix is needed so the input is never replaced.
    return "" if output_folder is not None else expand_suffix(DEFAULT_SUFFIX, request.scale)


def plan_jobs(expansion: Expansion, request: OutputRequest) -> list[Job]:
    """Decide, for every source, the destination, its format, and whether to upscale, skip or fail."""
    if request.skip_existing and request.overwrite:
        raise OptionError("--skip-existing and --overwrite contradict each other; pass one of them")
    output_folder = output_folder_of(request, expansion)
    suffix = effective_suffix(request, output_folder)
    sources = drop_previous_outputs(expansion.sources, suffix=suffix, output_folder=output_folder)

    jobs: list[Job] = [
        Job(source=None, destination=None, format=None, action=Action.FAIL, reason=m.problem, label=m.argument)
        for m in expansion.missing
    ]
    if request.output == STDIO or (request.output is None and any(s.is_stdin for s in sources)):
        if len(sources) + len(expansion.missing) > 1:
            raise OptionError("--output - (standard output) takes exactly one input image")
        jobs.extend(_stdout_job(source, request) for source in sources)
        return jobs

    inputs = input_identities(sources)
    claimed: set[str] = set()
    for source in sources:
        destination, fmt = _destination(source, request, output_folder, suffix)
        destination = _unclaimed(destination, claimed)
        action, reason = decide(
            destination, inputs=inputs, skip_existing=request.skip_existing, overwrite=request.overwrite
        )
        jobs.append(Job(source, destination, fmt, action, reason, label=source.label))
    return jobs


def input_identities(sources: Iterable[Source]) -> frozenset[FileIdentity]:
    found = (identity(source.path) for source in sources if source.path is not None)
    return frozenset(i for i in found if i is not None)


def _stdout_job(source: Source, request: OutputRequest) -> Job:
    if source.is_stdin:
        return Job(source, None, request.format, Action.UPSCALE, label=source.label)
    _, fmt = output_extension(source.path, request.format)
    return Job(source, None, fmt, Action.UPSCALE, label=source.label)


def _destination(
    source: Source, request: OutputRequest, output_folder: Path | None, suffix: str
) -> tuple[Path, OutputFormat | None]:
    if output_folder is None and request.output is not None:  # one input, an output file name
        target = Path(request.output)
        named = format_of_name(target)
        if request.format is not None and named is not None and named != request.format:
            raise OptionError(f"--format {request.format.value} does not match the extension of {target}")
        if named is not None or request.format is not None:
            return target, request.format or named
        _, fmt = output_extension(source.path, None)
        return target, fmt
    if source.path is None:  # stdin into a folder
        extension, fmt = output_extension(None, request.format)
        return output_folder / f"stdin{suffix}{extension}", fmt  # type: ignore[operator]
    extension, fmt = output_extension(source.path, request.format)
    name = f"{source.path.stem}{suffix}{extension}"
    if output_folder is None:
        return source.path.with_name(name), fmt
    relative_folder = source.path.parent.relative_to(source.root) if source.root else Path()
    return output_folder / relative_folder / name, fmt


def _unclaimed(destination: Path, claimed: set[str]) -> Path:
    """Give a destination that another input of this run already took a `_2`, `_3`, ... suffix.

    a.png and a.jpg with --format png would otherwise both become a_x4.png. The order of inputs
    is deterministic, so a re-run picks the same names (which keeps --skip-existing resumable).
    The key is case-folded because macOS and Windows file systems ignore case.
    """
    candidate = destination
    counter = 1
    while os.path.normcase(str(candidate)).casefold() in claimed:
        counter += 1
        candidate = destination.with_name(f"{destination.stem}_{counter}{destination.suffix}")
    claimed.add(os.path.normcase(str(candidate)).casefold())
    return candidate


FileIdentity = tuple[int, int]
"""(device, inode): equal for the same file under any spelling, symlink, hard link or letter case."""


def identity(path: Path) -> FileIdentity | None:
    try:
        status = path.stat()
    except OSError:
        return None
    return status.st_dev, status.st_ino


def decide(
    destination: Path, *, inputs: frozenset[FileIdentity], skip_existing: bool, overwrite: bool
) -> tuple[Action, str]:
    """The overwrite policy for one destination: never silently, and never an input.

    `inputs` holds the identity of every input of the run; only an existing path can be one of
    them, so comparing identities catches `-o photo.png` for input ./photo.png, a symlink, or
    PHOTO.PNG on a case-insensitive disk.
    """
    if destination.is_dir():
        return Action.FAIL, f"output {destination} is a folder"
    existing = identity(destination)
    if existing is not None:
        if existing in inputs:
            return Action.FAIL, f"output {destination} is an input; refusing to overwrite it (use another --output or --suffix)"
        if skip_existing:
            return Action.SKIP, f"{destination} already exists"
        if not overwrite:
            return Action.FAIL, (
                f"output {destination} already exists (pass --skip-existing to keep it or --overwrite to replace it)"
            )
    blocker = _unwritable_ancestor(destination.parent)
    if blocker is not None:
        return Action.FAIL, blocker
    return Action.UPSCALE, ""


def _unwritable_ancestor(folder: Path) -> str | None:
    """Why outputs cannot go into `folder` (which may not exist yet), or None if they can."""
    probe = folder
    while not probe.exists():
        if probe.parent == probe:
            return None
        probe = probe.parent
    if not probe.is_dir():
        return f"cannot create output folder {folder}: {probe} is a file"
    if not os.access(probe, os.W_OK | os.X_OK):
        return f"output folder {probe} is not writable"
    return None
