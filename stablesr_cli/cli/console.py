"""Everything the CLI tells people, on standard error: one-line errors, progress, summary, --json lines.

Standard output stays reserved for image bytes, so nothing in this module ever writes there.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
import unicodedata
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from enum import Enum
from typing import TextIO

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from ..progress import ProgressEvent
from .streams import log_write_error, stop_quietly

PROGRAM = "stablesr"


class _StderrConsole(Console):
    def on_broken_pipe(self) -> None:
        """Standard error's reader went away (`2>&1 | head -1`): stop quietly with the same 141 as
        for standard output (Rich's default exits 1 and silences only standard output)."""
        self.quiet = True
        stop_quietly()


def make_console() -> Console:
    """The stderr console. Built per command so it binds to the sys.stderr of that moment (CliRunner swaps it)."""
    return _StderrConsole(stderr=True, highlight=False)


_BIDI_CONTROLS = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def printable(text: str) -> str:
    """`text` with everything that could break or forge a line of output escaped, Python style.

    File names may hold any character but / and NUL: a newline would split a one-line error (and
    let a name forge a second, fake line in a log), an ESC start a terminal control sequence, a
    bidirectional override reorder what is shown. Undecodable bytes (kept by Python as lone
    surrogates) are shown as \\xNN. JSON output needs none of this: json.dumps escapes them itself.
    """
    if text.isprintable() and text.isascii():
        return text
    escaped = []
    for character in text:
        code = ord(character)
        if 0xDC80 <= code <= 0xDCFF:  # a byte that was not UTF-8 (surrogateescape)
            escaped.append(f"\\x{code - 0xDC00:02x}")
        elif character in _BIDI_CONTROLS or unicodedata.category(character) in ("Cc", "Cs", "Zl", "Zp"):
            escaped.append(repr(character)[1:-1] if code < 0x80 else f"\\u{code:04x}")
        else:
            escaped.append(character)
    return "".join(escaped)


def describe(subject: str, problem: str) -> str:
    """`<subject>: <problem>` on one line, where the problem does not repeat the subject.

    Library errors often already start with the file they are about ("a.png: not an image ...");
    printing the subject twice would be noise.
    """
    subject, problem = printable(subject), printable(problem.strip()) or "failed"
    if subject and not problem.startswith(subject):
        return f"{subject}: {problem}"
    return problem


def error_line(subject: str, problem: str) -> str:
    """`stablesr: <subject>: <problem>`: the one line an expected failure prints."""
    return f"{PROGRAM}: {describe(subject, problem)}"


def cli_message(error: Exception) -> str:
    """An error's message as the CLI shows it: the first mention of each API parameter an
    `OptionError` lists (`tile_size`) written as the flag that sets it (`--tile-size`). Only the
    first: later ones may be the plain word ("device 'gpu' is not a device")."""
    text = str(error)
    for name in getattr(error, "options", ()):
        text = re.sub(rf"(?<![\w-]){re.escape(name)}(?![\w-])", "--" + name.replace("_", "-"), text, count=1)
    return text


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
    exists: bool = field(default=False, compare=False)
    """Failed only because its output already exists; counted apart in the summary (not in JSON)."""

    def to_json(self) -> str:
        record = asdict(self)
        del record["exists"]
        record["status"] = self.status.value
        record["seconds"] = round(self.seconds, 3)
        return json.dumps(record, ensure_ascii=False)


class JsonLines:
    """Writes one JSON object per line and flushes it, so `tail -f` and pipes see each image as it finishes."""

    def __init__(self, stream: TextIO, *, owned: bool = False, name: str = "standard error") -> None:
        self._stream = stream
        self._owned = owned
        """True for a --json-file we opened (and close); False for standard error."""
        self.name = name

    def write(self, outcome: Outcome) -> None:
        try:
            self._stream.write(outcome.to_json() + "\n")
            self._stream.flush()
        except BrokenPipeError:
            stop_quietly()  # --json on standard error, and its reader went away
        except OSError as error:
            raise log_write_error(self.name, error) from error

    def close(self) -> None:
        if self._owned:
            try:
                self._stream.close()
            except OSError:
                pass  # every line was flushed when written; a failure then was already reported


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


PROGRESS_INTERVAL_VARIABLE = "STABLESR_PROGRESS_INTERVAL"
DEFAULT_PROGRESS_INTERVAL = 30.0
"""Seconds between progress lines when standard error is not a terminal (a log, CI, nohup)."""


def progress_interval() -> float:
    """The seconds between progress lines: STABLESR_PROGRESS_INTERVAL, else 30."""
    try:
        return max(0.0, float(os.environ.get(PROGRESS_INTERVAL_VARIABLE, DEFAULT_PROGRESS_INTERVAL)))
    except ValueError:
        return DEFAULT_PROGRESS_INTERVAL


class RunProgress:
    """Progress on stderr, in one of two forms (or none, with --quiet or --json).

    On a terminal, two bars: images in the run, and steps/tiles within the current image, each
    with elapsed time and an estimate of the time left. Elsewhere (a log file, CI) a bar cannot
    redraw, so one line is printed every `interval` seconds: image, stage, step, tile, elapsed
    time and the estimated time left. A 200-step run on a CPU is then never silent for long.
    """

    def __init__(self, console: Console, *, total_images: int, bars: bool, lines: bool = False,
                 interval: float = DEFAULT_PROGRESS_INTERVAL) -> None:  # fmt: skip
        self._console = console
        self._progress: Progress | None = None
        self._lines = lines and not bars
        self._interval = interval
        self._total_images = max(total_images, 1)
        self._images_done = 0
        self._label = ""
        self._started = time.monotonic()
        self._last_line = self._started
        if bars:
            self._progress = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TextColumn("ETA"),
                TimeRemainingColumn(),
                console=console,
                transient=True,
            )
            self._images: TaskID = self._progress.add_task("images", total=total_images)
            self._within: TaskID = self._progress.add_task("", total=1, visible=False)

    @contextmanager
    def shown(self) -> Iterator[RunProgress]:
        self._started = self._last_line = time.monotonic()
        if self._progress is None:
            yield self
            return
        with self._progress:
            yield self

    def start_image(self, label: str) -> None:
        self._label = label
        if self._progress is not None:
            self._progress.update(self._within, description=printable(label), completed=0, total=1, visible=True)

    def on_event(self, event: ProgressEvent) -> None:
        if self._lines:
            self._maybe_print_line(event)
        if self._progress is None:
            return
        if event.total_steps:  # only sampling events know the amount of work; the others just name the stage
            done, total = work_done(event)
            self._progress.update(self._within, completed=done, total=total)
        self._progress.update(self._within, description=describe_event(event))

    def finish_image(self) -> None:
        self._images_done += 1
        if self._progress is not None:
            self._progress.update(self._within, visible=False)
            self._progress.advance(self._images)

    def _maybe_print_line(self, event: ProgressEvent) -> None:
        now = time.monotonic()
        if now - self._last_line < self._interval:
            return
        self._last_line = now
        elapsed = now - self._started
        within = 0.0
        if event.total_steps:
            done, total = work_done(event)
            within = done / total if total else 0.0
        fraction = (self._images_done + within) / self._total_images
        eta = format_seconds(elapsed * (1 - fraction) / fraction) if fraction > 0 else "unknown"
        image = f"image {self._images_done + 1}/{self._total_images}"
        print_line(
            self._console,
            f"progress: {self._label} ({image}) · {describe_event(event)} · "
            f"{format_seconds(elapsed)} elapsed · ETA {eta}",
        )


def format_seconds(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m{rest:02d}s" if hours else f"{minutes}m{rest:02d}s"


SUMMARY_TABLE_LIMIT = 50
"""Above this many images the summary gives per-image timing as min / mean / max, not a row each."""


def print_summary(console: Console, outcomes: Sequence[Outcome], *, seconds: float) -> None:
    done = [o for o in outcomes if o.status is Status.DONE]
    skipped = [o for o in outcomes if o.status is Status.SKIPPED]
    existing = [o for o in outcomes if o.status is Status.FAILED and o.exists]
    failed = [o for o in outcomes if o.status is Status.FAILED and not o.exists]
    if done and len(done) <= SUMMARY_TABLE_LIMIT:
        table = Table("input", "output", "size", "time", box=None, pad_edge=False)
        for o in done:
            size = f"{o.size[0]}x{o.size[1]}" if o.size else ""
            table.add_row(printable(o.input), printable(o.output or ""), size, format_seconds(o.seconds))
        console.print(table)
    elif done:
        times = [o.seconds for o in done]
        print_line(
            console,
            f"per image: min {format_seconds(min(times))}, mean {format_seconds(sum(times) / len(times))}, "
            f"max {format_seconds(max(times))}",
        )
    exist = f"{len(existing)} already existed, " if existing else ""
    counts = f"{len(done)} upscaled, {len(skipped)} skipped, {exist}{len(failed)} failed in {format_seconds(seconds)}"
    print_line(console, counts, style="bold")
    if existing:
        print_line(
            console,
            f"{len(existing)} outputs already existed and were left alone: pass --skip-existing to keep them "
            "(and resume) or --overwrite to replace them",
        )
    if failed:
        print_line(console, "failed:", style="red")
        for o in failed:
            print_line(console, "  " + describe(o.input, o.error or "failed"))


def stderr_json_lines() -> JsonLines:
    return JsonLines(sys.stderr)
