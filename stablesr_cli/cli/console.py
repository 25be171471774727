"""Everything the CLI tells people, on standard error: one-line errors, progress, summary, --json lines.

Standard output stays reserved for image bytes, so nothing in this module ever writes there.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from enum import Enum
from typing import TextIO

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table

from ..progress import ProgressEvent

PROGRAM = "stablesr"


def make_console() -> Console:
    """The stderr console. Built per command so it binds to the sys.stderr of that moment (CliRunner swaps it)."""
    return Console(stderr=True, highlight=False)


def describe(subject: str, problem: str) -> str:
    """`<subject>: <problem>` on one line, where the problem does not repeat the subject.

    Library errors often already start with the file they are about ("a.png: not an image ...");
    printing the subject twice would be noise.
    """
    problem = problem.strip().splitlines()[0] if problem.strip() else "failed"
    if subject and not problem.startswith(subject):
        return f"{subject}: {problem}"
    return problem


def error_line(subject: str, problem: str) -> str:
    """`stablesr: <subject>: <problem>`: the one line an expected failure prints."""
    return f"{PROGRAM}: {describe(subject, problem)}"


def print_line(console: Console, text: str, style: str | None = None) -> None:
    """Print one line exactly as given: no wrapping at the terminal width, no markup parsing."""
    console.print(text, style=style, markup=False, highlight=False, soft_wrap=True)


class Status(str, Enum):
    DONE = "done"
    SKIPPED = "skipped"
    FAILED = "failed"
    PLANNED = "planned"
    """--dry-run: would be upscaled."""


@dataclass(frozen=True)
class Outcome:
    """What happened to one input; one --json line each."""

    input: str
    output: str | None
    status: Status
    seconds: float = 0.0
    size: tuple[int, int] | None = None
    """Output width and height in pixels."""
    input_size: tuple[int, int] | None = None
    error: str | None = None
    """For skipped and failed images: why."""
    warnings: tuple[str, ...] = ()
    """For done images: what had to be changed in the input to use it (e.g. NaN pixels replaced)."""

    def to_json(self) -> str:
        record = asdict(self)
        record["status"] = self.status.value
        record["seconds"] = round(self.seconds, 3)
        return json.dumps(record, ensure_ascii=False)


class JsonLines:
    """Writes one JSON object per line and flushes it, so `tail -f` and pipes see each image as it finishes."""

    def __init__(self, stream: TextIO, *, owned: bool = False) -> None:
        self._stream = stream
        self._owned = owned
        """True for a --json-file we opened (and close); False for standard error."""

    def write(self, outcome: Outcome) -> None:
        self._stream.write(outcome.to_json() + "\n")
        self._stream.flush()

    def close(self) -> None:
        if self._owned:
            self._stream.close()


def work_done(event: ProgressEvent) -> tuple[int, int]:
    """(units done, units in total) for one image, one unit being one latent tile of one step.

    Pixel patches (vae_tiling=upstream) each run the whole sampling loop, so they multiply the
    total; `patch` is the 0-based index of the current one.
    """
    per_patch = max(event.total_steps, 1) * max(event.total_tiles, 1)
    total = per_patch * max(event.total_patches, 1)
    done = event.patch * per_patch + event.step * max(event.total_tiles, 1) + event.tile
    return min(done, total), total


def describe_event(event: ProgressEvent) -> str:
    parts = [event.stage]
    if event.total_patches > 1:
        parts.append(f"patch {event.patch + 1}/{event.total_patches}")
    if event.total_steps:
        parts.append(f"step {min(event.step + 1, event.total_steps)}/{event.total_steps}")
    if event.total_tiles > 1:
        parts.append(f"tile {min(event.tile + 1, event.total_tiles)}/{event.total_tiles}")
    return " · ".join(parts)


class RunProgress:
    """Two bars on stderr: images in the run, and steps/tiles within the current image.

    Disabled (every method a no-op) when stderr is not a terminal or with --quiet, so logs and
    CI output carry only the per-image lines and the summary.
    """

    def __init__(self, console: Console, *, total_images: int, enabled: bool) -> None:
        self._progress: Progress | None = None
        if enabled:
            self._progress = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=console,
                transient=True,
            )
            self._images: TaskID = self._progress.add_task("images", total=total_images)
            self._within: TaskID = self._progress.add_task("", total=1, visible=False)

    @contextmanager
    def shown(self) -> Iterator[RunProgress]:
        if self._progress is None:
            yield self
            return
        with self._progress:
            yield self

    def start_image(self, label: str) -> None:
        if self._progress is not None:
            self._progress.update(self._within, description=label, completed=0, total=1, visible=True)

    def on_event(self, event: ProgressEvent) -> None:
        if self._progress is None:
            return
        if event.total_steps:  # only sampling events know the amount of work; the others just name the stage
            done, total = work_done(event)
            self._progress.update(self._within, completed=done, total=total)
        self._progress.update(self._within, description=describe_event(event))

    def finish_image(self) -> None:
        if self._progress is not None:
            self._progress.update(self._within, visible=False)
            self._progress.advance(self._images)


def format_seconds(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m{rest:02d}s" if hours else f"{minutes}m{rest:02d}s"


SUMMARY_TABLE_LIMIT = 50
"""Above this many images the summary gives per-image timing as min / mean / max, not a row each."""


def print_summary(console: Console, outcomes: Sequence[Outcome], *, seconds: float, interrupted: bool) -> None:
    done = [o for o in outcomes if o.status is Status.DONE]
    skipped = [o for o in outcomes if o.status is Status.SKIPPED]
    failed = [o for o in outcomes if o.status is Status.FAILED]
    if done and len(done) <= SUMMARY_TABLE_LIMIT:
        table = Table("input", "output", "size", "time", box=None, pad_edge=False)
        for o in done:
            size = f"{o.size[0]}x{o.size[1]}" if o.size else ""
            table.add_row(o.input, o.output or "", size, format_seconds(o.seconds))
        console.print(table)
    elif done:
        times = [o.seconds for o in done]
        print_line(
            console,
            f"per image: min {format_seconds(min(times))}, mean {format_seconds(sum(times) / len(times))}, "
            f"max {format_seconds(max(times))}",
        )
    counts = f"{len(done)} upscaled, {len(skipped)} skipped, {len(failed)} failed in {format_seconds(seconds)}"
    print_line(console, ("interrupted: " if interrupted else "") + counts, style="bold")
    if failed:
        print_line(console, "failed:", style="red")
        for o in failed:
            print_line(console, "  " + describe(o.input, o.error or "failed"))


def stderr_json_lines() -> JsonLines:
    return JsonLines(sys.stderr)
