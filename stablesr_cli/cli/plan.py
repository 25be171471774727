"""What a `stablesr upscale` run will do, decided before any pixel is touched.

Output naming, format choice and the skip / overwrite / refuse policy live here as plain
functions over paths (which inputs, in cli/scan.py), so they can be tested without a model and
so `--dry-run` shows exactly what a real run would do. Nothing here reads image content or
imports torch; the only file-system access is listing folders and asking whether paths exist.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from ..errors import OptionError
from ..options import OutputFormat, check_suffix
from .scan import (  # noqa: F401  (re-exported: the planner's public vocabulary)
    IMAGE_EXTENSIONS,
    STDIO,
    Expansion,
    MissingInput,
    Source,
    expand_inputs,
    previous_outputs,
)

DEFAULT_SUFFIX = "_x{scale}"
"""Appended to the input's name for outputs written next to their inputs."""


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
_FORMAT_ALIASES = {"jpeg": OutputFormat.JPG, "tif": OutputFormat.TIFF}
FALLBACK_FORMAT = OutputFormat.PNG
"""For inputs whose extension names no writable format: lossless, keeps alpha and 16 bits."""


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
    exists: bool = False
    """A FAIL only because the output already exists (neither --skip-existing nor --overwrite)."""

    @property
    def destination_label(self) -> str:
        return "<stdout>" if self.destination is None else str(self.destination)


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


def parse_format(text: str) -> OutputFormat:
    """A --format value: png, jpg, webp, tiff or bmp, any case, also jpeg and tif."""
    word = text.strip().lower().lstrip(".")
    try:
        return _FORMAT_ALIASES.get(word) or OutputFormat(word)
    except ValueError:
        raise OptionError(
            f"--format {text}: not a format stablesr writes; choose png, jpg (or jpeg), webp, tiff (or tif) or bmp"
        ) from None


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
    if names_a_folder:
        return target
    if not expansion.single:
        if format_of_name(target) is not None:
            raise OptionError(
                f"-o {request.output}: several inputs need an output folder, and this looks like a file name; "
                "give a folder (a name ending in /)"
            )
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
    earlier = {id(s) for s in previous_outputs(expansion.sources, suffix=suffix, output_folder=output_folder)}
    sources = [s for s in expansion.sources if id(s) not in earlier]

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
    told_how = False
    for source in sources:
        destination, fmt = _destination(source, request, output_folder, suffix)
        destination = _unclaimed(destination, claimed)
        action, reason = decide(
            destination, inputs=inputs, skip_existing=request.skip_existing, overwrite=request.overwrite
        )
        exists = action is Action.FAIL and _is_existing_output(destination, inputs)
        if exists and told_how:  # the first such message names both flags; the others need not
            reason = f"output {destination} already exists"
        told_how = told_how or exists
        jobs.append(Job(source, destination, fmt, action, reason, label=source.label, exists=exists))
    return jobs


def left_out_as_earlier_outputs(expansion: Expansion, request: OutputRequest) -> list[Source]:
    """The scanned files `plan_jobs` leaves out as results of earlier runs (for the run to say so)."""
    output_folder = output_folder_of(request, expansion)
    suffix = effective_suffix(request, output_folder)
    return previous_outputs(expansion.sources, suffix=suffix, output_folder=output_folder)


def _is_existing_output(destination: Path, inputs: frozenset[FileIdentity]) -> bool:
    existing = identity(destination)
    return existing is not None and existing not in inputs and not destination.is_dir()


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
        if named is None:
            raise OptionError(_unknown_extension(request.output))
        if request.format is not None and named != request.format:
            raise OptionError(f"--format {request.format.value} does not match the extension of {target}")
        return target, named
    if source.path is None:  # stdin into a folder
        extension, fmt = output_extension(None, request.format)
        return output_folder / f"stdin{suffix}{extension}", fmt  # type: ignore[operator]
    extension, fmt = output_extension(source.path, request.format)
    name = f"{source.path.stem}{suffix}{extension}"
    if output_folder is None:
        return source.path.with_name(name), fmt
    relative_folder = source.path.parent.relative_to(source.root) if source.root else Path()
    return output_folder / relative_folder / name, fmt


def _unknown_extension(output: str) -> str:
    extension = Path(output).suffix
    if not extension:
        return (
            f"-o {output}: an output file name needs an image extension ({output}.png); "
            f"to write into a folder, end its name with / ({output}/)"
        )
    return f"-o {output}: {extension} is not an image extension stablesr writes; use .png, .jpg, .webp, .tif or .bmp"


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
