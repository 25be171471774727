"""Carrying out a planned `stablesr upscale` run (its --dry-run twin is cli/preflight.py).

`Report` says what happened to each image (human lines and/or JSON lines); `Batch` runs the
jobs with one model, loaded when the first image needs it. torch is imported only then.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from rich.console import Console

from ..budget import is_out_of_memory
from ..errors import OptionError, OutputPathError, PromptTruncatedWarning, StableSRError
from ..options import Precision, Sampler, UpscaleOptions
from .console import (
    PROGRAM,
    JsonLines,
    describe,
    printable,
    Outcome,
    RunProgress,
    Status,
    cli_message,
    error_line,
    format_seconds,
    print_line,
    print_summary,
    progress_interval,
)
from .plan import Action, Job, decide, input_identities
from .signals import exit_code_of, remove_temporaries_of_killed_runs
from .streams import EXIT_CLOSED_PIPE, LogWriteError, ReaderGone, write_image_bytes
from .scan import write_run_marker

if TYPE_CHECKING:
    from ..api import Upscaler
    from ..imaging.io import Picture

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


@dataclasses.dataclass(frozen=True)
class WriteChoice:
    """How results are written."""

    quality: int | None
    skip_existing: bool
    overwrite: bool
    output_folder: Path | None
    """The --output folder of this run, which gets a run marker; None: files, stdout or beside inputs."""


class Batch:
    """Runs the planned jobs in order with one model, loaded when the first image needs it."""

    def __init__(
        self, jobs: list[Job], options: UpscaleOptions, report: Report, model: ModelChoice, write: WriteChoice,
        *, max_pixels: int | None, stdout: BinaryIO,
    ) -> None:  # fmt: skip
        self.jobs = jobs
        self.options = options
        self.report = report
        self.choice = model
        self.write = write
        self.max_pixels = max_pixels
        self.stdout = stdout
        self.inputs = input_identities(j.source for j in jobs if j.source is not None)
        self.upscaler: Upscaler | None = None
        self.marked = False
        terminal = report.console.is_terminal
        report.live = report.chatty and terminal
        self.progress = RunProgress(
            report.console, total_images=sum(j.action is Action.UPSCALE for j in jobs), bars=report.live,
            lines=report.chatty and not terminal, interval=progress_interval(),
        )  # fmt: skip

    def run(self) -> int:
        started = time.perf_counter()
        stop: KeyboardInterrupt | None = None
        try:
            remove_temporaries_of_killed_runs(j.destination.parent for j in self.jobs if j.destination is not None)
            with self.progress.shown():
                for job in self.jobs:
                    if job.action is not Action.UPSCALE:
                        self.report.add(outcome_of_plan(job))
                        continue
                    self.progress.start_image(job.label)
                    self.report.add(self._upscale(job))
                    self.progress.finish_image()
        except KeyboardInterrupt as interruption:  # Ctrl-C, or SIGTERM (signals.Terminated)
            # The image in flight is lost; its temporary file was removed by the atomic writer.
            stop = interruption
        except ReaderGone:
            return EXIT_CLOSED_PIPE  # like shell tools: no message, the reader asked for no more
        except _RunAborted as aborted:
            print_line(self.report.console, error_line(aborted.subject, aborted.problem), style="red")
            return aborted.exit_code
        except LogWriteError as error:  # the run's record is incomplete: stop rather than go on unrecorded
            print_line(self.report.console, error_line("", str(error)), style="red")
            return EXIT_FAILED
        self.report.summary(time.perf_counter() - started, interrupted=stop is not None)
        if stop is not None:
            return exit_code_of(stop)
        return EXIT_FAILED if any(o.status is Status.FAILED for o in self.report.outcomes) else 0

    def _upscale(self, job: Job) -> Outcome:
        from ..imaging.io import read_picture

        started = time.perf_counter()
        source = job.source
        assert source is not None  # planned UPSCALE jobs always have a source
        try:
            if source.is_stdin:
                # Read when the command runs, never at import (a CliRunner test swaps stdin in late).
                picture = read_picture(binary_stream("stdin").read(), max_pixels=self.max_pixels)
            else:
                picture = read_picture(source.path, max_pixels=self.max_pixels)
            result = self._run_model(picture)
            skipped = self._write(job, result)
        except StableSRError as error:
            return self._failed(job, cli_message(error), started)
        except (RuntimeError, MemoryError) as error:
            if not is_out_of_memory(error):
                raise  # a real bug: let it show its traceback
            hint = "out of memory; try a smaller --tile-size or --vae-tile-size, --tile-batch 1, or --dtype fp16"
            return self._failed(job, hint, started)
        if skipped is not None:
            return Outcome(job.label, job.destination_label, Status.SKIPPED, error=skipped)
        return Outcome(
            job.label, job.destination_label, Status.DONE, seconds=time.perf_counter() - started,
            size=(result.width, result.height), input_size=(picture.width, picture.height),
            warnings=picture.warnings,
        )  # fmt: skip

    def _failed(self, job: Job, problem: str, started: float) -> Outcome:
        return Outcome(job.label, job.destination_label, Status.FAILED, time.perf_counter() - started, error=problem)

    def _run_model(self, picture: Picture) -> Picture:
        from ..imaging.tensor_bridge import upscale_picture

        upscaler = self._model()
        draw = self.progress.on_event if self.report.chatty else None

        def progress(event) -> None:
            if event.stage == "retry":  # out of memory on an accelerator
                self.report.note(event.message)
            elif draw is not None:
                draw(event)

        with warnings.catch_warnings():  # the run already warned once about a long prompt
            warnings.simplefilter("ignore", PromptTruncatedWarning)
            return upscale_picture(picture, lambda img_lq: upscaler.upscale_tensor(img_lq, self.options, progress=progress))

    def _model(self) -> Upscaler:
        if self.upscaler is not None:
            return self.upscaler
        from ..api import Upscaler
        from .downloads import DownloadView

        choice = self.choice
        try:
            with DownloadView(self.report.console, enabled=self.report.chatty, style="dim") as view:
                self.upscaler = Upscaler.from_pretrained(
                    choice.model, device=choice.device, dtype=choice.dtype.value,
                    offline=True if choice.offline else None, on_weights_event=view,
                )  # fmt: skip
        except OptionError as error:
            raise _RunAborted("", cli_message(error), EXIT_USAGE) from error
        except StableSRError as error:
            raise _RunAborted(choice.model, str(error), EXIT_FAILED) from error
        try:  # what only the loaded model can judge (tile sizes its UNet can halve, say) is a usage error
            self.options = self.upscaler.resolve_options(self.options)
        except OptionError as error:
            raise _RunAborted("", cli_message(error), EXIT_USAGE) from error
        label = model_label(choice.model, self.upscaler.facts.name)
        sampler = "" if self.options.sampler is Sampler.DDPM else f" {self.options.sampler.value}"
        self.report.note(f"{label} on {self.upscaler.device}, {self.options.steps}{sampler} steps, w {self.options.w:g}")
        return self.upscaler

    def _write(self, job: Job, result: Picture) -> str | None:
        """Write the result; returns why it was skipped instead, or None once written."""
        from ..imaging.io import encode_picture, write_picture

        fmt = job.format.value if job.format is not None else None
        if job.destination is None:
            data = encode_picture(result, fmt, self.write.quality)  # type: ignore[arg-type]  # None: the input's format
            write_image_bytes(self.stdout, data)
            return None
        # The run may have been long: look again, in case another process wrote the file meanwhile.
        action, reason = decide(
            job.destination, inputs=self.inputs, skip_existing=self.write.skip_existing, overwrite=self.write.overwrite
        )
        if action is Action.SKIP:
            return reason
        if action is Action.FAIL:
            raise OutputPathError(reason)
        try:
            job.destination.parent.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise OutputPathError(f"cannot create output folder {job.destination.parent} ({error.strerror or error})") from error
        if self.write.output_folder is not None and not self.marked:
            write_run_marker(self.write.output_folder)
            self.marked = True
        write_picture(result, job.destination, format=fmt, quality=self.write.quality)
        return None


def model_label(argument: str, name: str) -> str:
    """How the run's header names the model: `model turbo` for a name; for a path, the path as
    given, and the official model the weights say they are (`weights in ckpt/ (turbo)`)."""
    path = Path(argument).expanduser()
    if not path.exists():
        return f"model {argument}"
    shown = argument + ("/" if path.is_dir() and not argument.endswith(("/", os.sep)) else "")
    known = name and name not in (path.name, path.stem)
    return f"weights in {shown}" + (f" ({name})" if known else "")


class _RunAborted(Exception):
    """A failure that ends the whole run (the model cannot be loaded), not just one image."""

    def __init__(self, subject: str, problem: str, exit_code: int) -> None:
        super().__init__(problem)
        self.subject = subject
        self.problem = problem
        self.exit_code = exit_code


def binary_stream(name: str) -> BinaryIO:
    """The byte stream under sys.stdin / sys.stdout, read at call time (so tests' replacements count)."""
    stream = getattr(sys, name)
    return getattr(stream, "buffer", stream)
