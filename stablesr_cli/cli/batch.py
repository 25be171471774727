"""Carrying out a planned `stablesr upscale` run (its --dry-run twin is cli/preflight.py).

`Report` says what happened to each image (human lines and/or JSON lines); `Batch` hands the
jobs to the runner of stablesr_cli/batch/ and is its sink (progress, messages, standard streams).
torch is imported only by the workers, when a first image needs the model.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from rich.console import Console

from ..options import Precision, UpscaleOptions
from .console import (
    PROGRAM,
    JsonLines,
    describe,
    printable,
    Outcome,
    RunProgress,
    Status,
    error_line,
    format_seconds,
    print_line,
    print_summary,
    progress_interval,
)
from .plan import Action, Job
from .signals import exit_code_of, remove_temporaries_of_killed_runs
from .streams import EXIT_CLOSED_PIPE, LogWriteError, ReaderGone, write_image_bytes

if TYPE_CHECKING:
    from ..batch.runner import Backend
    from ..progress import ProgressEvent
    from .downloads import DownloadView

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what shells report for Ctrl-C
RESUME_HINT = "interrupted; run the same command with --skip-existing to resume"


class Report:
    """Per-image messages (human and/or JSON) in the order images finish."""

    def __init__(self, console: Console, json_sinks: list[JsonLines], *, human: bool, quiet: bool) -> None:
        self.console = console
        self.json_sinks = json_sinks
        self.human = human
        self.quiet = quiet
        self.live = False
        """True while progress bars are drawn; they and the summary table replace per-image lines."""
        self.outcomes: list[Outcome] = []

    @property
    def chatty(self) -> bool:
        """Progress, per-image lines, notes and the summary."""
        return self.human and not self.quiet

    def add(self, outcome: Outcome, *, listing: bool = False) -> None:
        """Record one image's fate. Errors always print; a finished image prints a line only when
        no progress bars are drawn (logs, CI); skips print only in a --dry-run listing, so that
        resuming a 10,000-image run does not scroll 10,000 lines."""
        self.outcomes.append(outcome)
        for sink in self.json_sinks:
            sink.write(outcome)
        if not self.human:
            return
        if outcome.status is Status.FAILED:
            print_line(self.console, error_line(outcome.input, outcome.error or "failed"), style="red")
        elif self.quiet:
            return
        elif outcome.status is Status.PLANNED:
            print_line(self.console, f"would upscale {printable(outcome.input)} -> {printable(outcome.output or '')}{_sizes(outcome)}")
        elif outcome.status is Status.SKIPPED and listing:
            print_line(self.console, "skipped " + describe(outcome.input, outcome.error or ""), style="dim")
        elif outcome.status is Status.DONE and not self.live:
            size = f"{outcome.size[0]}x{outcome.size[1]}, " if outcome.size else ""
            line = f"{printable(outcome.input)} -> {printable(outcome.output or '')} ({size}{format_seconds(outcome.seconds)})"
            print_line(self.console, line)
        if not self.quiet:
            for warning in outcome.warnings:
                print_line(self.console, f"{PROGRAM}: warning: {printable(warning)}", style="yellow")

    def note(self, message: str) -> None:
        """A message about the run itself (model download, loading, files left out), not about one image."""
        if self.chatty:
            print_line(self.console, printable(message), style="dim")

    def summary(self, seconds: float, *, interrupted: bool) -> None:
        if self.chatty or (self.human and interrupted):
            print_summary(self.console, self.outcomes, seconds=seconds)
        elif self.human and any(o.status is Status.FAILED for o in self.outcomes):
            failed = sum(o.status is Status.FAILED for o in self.outcomes)
            print_line(self.console, f"{failed} of {len(self.outcomes)} images failed", style="bold")
        if interrupted and self.human:
            print_line(self.console, RESUME_HINT, style="bold")


def _sizes(outcome: Outcome) -> str:
    if outcome.input_size is None or outcome.size is None:
        return ""
    (w, h), (ow, oh) = outcome.input_size, outcome.size
    return f" ({w}x{h} -> {ow}x{oh})"


def outcome_of_plan(job: Job) -> Outcome:
    """What the plan alone says about a job: planned, skipped, or failed with its reason."""
    status = {Action.UPSCALE: Status.PLANNED, Action.SKIP: Status.SKIPPED, Action.FAIL: Status.FAILED}[job.action]
    output = None if job.source is None else job.destination_label
    return Outcome(job.label, output, status, error=job.reason or None, exists=job.exists)


@dataclasses.dataclass(frozen=True)
class ModelChoice:
    """What the user asked to run the images with."""

    model: str
    device: str
    dtype: Precision
    offline: bool
    compile: bool = False


@dataclasses.dataclass(frozen=True)
class WriteChoice:
    """How results are written."""

    quality: int | None
    skip_existing: bool
    overwrite: bool
    output_folder: Path | None
    """The --output folder of this run, which gets a run marker; None: files, stdout or beside inputs."""


class Batch:
    """Runs the planned jobs on a backend of stablesr_cli/batch/ and reports every image."""

    def __init__(
        self, jobs: list[Job], options: UpscaleOptions, report: Report, model: ModelChoice, write: WriteChoice,
        *, max_pixels: int | None, stdout: BinaryIO, backend: Backend | None = None,
    ) -> None:  # fmt: skip
        from ..batch.runner import Backend
        from ..batch.work import WorkerSettings

        self.jobs = jobs
        self.report = report
        self.stdout = stdout
        self.backend = backend or Backend()
        terminal = report.console.is_terminal
        report.live = report.chatty and terminal
        self.settings = WorkerSettings(
            model=model.model, device=model.device, dtype=model.dtype.value, offline=model.offline, compile=model.compile,
            options=options,
            quality=write.quality, max_pixels=max_pixels, skip_existing=write.skip_existing, overwrite=write.overwrite,
            output_folder=write.output_folder, progress=report.chatty,
        )  # fmt: skip
        self.progress = RunProgress(
            report.console, total_images=sum(j.action is Action.UPSCALE for j in jobs), bars=report.live,
            lines=report.chatty and not terminal, interval=progress_interval(),
        )  # fmt: skip

    def run(self) -> int:
        from ..batch.runner import BatchRunner
        from ..batch.work import RunAborted

        started = time.perf_counter()
        stop: KeyboardInterrupt | None = None
        try:
            remove_temporaries_of_killed_runs(j.destination.parent for j in self.jobs if j.destination is not None)
            with self.progress.shown():
                BatchRunner(self.jobs, self.settings, self, self.backend, streams=self).run()
        except KeyboardInterrupt as interruption:  # Ctrl-C, or SIGTERM (signals.Terminated)
            # The images in flight are lost; their temporary files were removed by the atomic writer.
            stop = interruption
        except ReaderGone:
            return EXIT_CLOSED_PIPE  # like shell tools: no message, the reader asked for no more
        except RunAborted as aborted:
            print_line(self.report.console, error_line(aborted.subject, aborted.problem), style="red")
            return aborted.exit_code
        except LogWriteError as error:  # the run's record is incomplete: stop rather than go on unrecorded
            print_line(self.report.console, error_line("", str(error)), style="red")
            return EXIT_FAILED
        self.report.summary(time.perf_counter() - started, interrupted=stop is not None)
        if stop is not None:
            return exit_code_of(stop)
        return EXIT_FAILED if any(o.status is Status.FAILED for o in self.report.outcomes) else 0

    # batch.runner.BatchSink
    def add(self, outcome: Outcome) -> None:
        self.report.add(outcome)

    def note(self, message: str) -> None:
        self.report.note(message)

    def start_image(self, label: str) -> None:
        self.progress.start_image(label)

    def on_event(self, event: ProgressEvent) -> None:
        self.progress.on_event(event)

    def finish_image(self) -> None:
        self.progress.finish_image()

    def weights_view(self) -> DownloadView:
        from .downloads import DownloadView

        return DownloadView(self.report.console, enabled=self.report.chatty, style="dim")

    # batch.work.StandardStreams
    def read_stdin(self) -> bytes:
        # Read when the command runs, never at import (a CliRunner test swaps stdin in late).
        return binary_stream("stdin").read()

    def write_stdout(self, data: bytes) -> None:
        write_image_bytes(self.stdout, data)


def model_label(argument: str, name: str) -> str:
    """How the run's header names the model: `model turbo` for a name; for a path, the path as
    given, and the official model the weights say they are (`weights in ckpt/ (turbo)`)."""
    path = Path(argument).expanduser()
    if not path.exists():
        return f"model {argument}"
    shown = argument + ("/" if path.is_dir() and not argument.endswith(("/", os.sep)) else "")
    known = name and name not in (path.name, path.stem)
    return f"weights in {shown}" + (f" ({name})" if known else "")


def binary_stream(name: str) -> BinaryIO:
    """The byte stream under sys.stdin / sys.stdout, read at call time (so tests' replacements count)."""
    stream = getattr(sys, name)
    return getattr(stream, "buffer", stream)
