"""One worker's part of a batch: read an image, run the model on it, write the result.

The same `ImageWorker` runs in the CLI's own process, in each local worker process and in each
Ray actor, so an image's output cannot depend on where it ran. Everything a worker needs travels
in `WorkerSettings`, a small picklable dataclass. torch is imported only when the model loads.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, ContextManager, Optional, Protocol

from ..errors import OptionError, OutputPathError, PromptTruncatedWarning, StableSRError
from ..options import Sampler, UpscaleOptions
from ..progress import ProgressEvent
from ..budget import is_out_of_memory
from ..cli.console import Outcome, Status, cli_message
from ..cli.plan import Action, FileIdentity, Job, decide

if TYPE_CHECKING:
    from ..api import Upscaler
    from ..imaging.io import Picture

OUT_OF_MEMORY_HINT = "out of memory; try a smaller --tile-size or --vae-tile-size, --tile-batch 1, or --dtype fp16"

CRASH_HOOK = "STABLESR_TEST_CRASH_ON"
"""Test-only: a worker process that meets an input of this file name exits at once, as a process
killed by the kernel would. Only separate worker processes honour it, never the CLI's own."""
CRASH_ONCE_MARKER = "STABLESR_TEST_CRASH_MARKER"
"""Test-only: with CRASH_HOOK, crash only while this file does not exist yet (it is created first),
so a retried image succeeds the second time."""


@dataclass(frozen=True)
class WorkerSettings:
    """What every worker of a run shares: the model, the options and the output policy."""

    model: str
    device: str = "auto"
    dtype: str = "auto"
    offline: bool = False
    compile: bool = False
    """Wrap the networks in torch.compile (Upscaler.compile)."""
    options: UpscaleOptions = UpscaleOptions()
    """As the user gave them; what is None (w, steps) is filled from the model's facts once loaded."""
    quality: int | None = None
    max_pixels: int | None = None
    skip_existing: bool = False
    overwrite: bool = False
    output_folder: Path | None = None
    """The run's --output folder, which gets a run marker with the first image written into it."""
    inputs: frozenset[FileIdentity] = frozenset()
    """Identities of every input of the run: an output path that turns out to be one is refused."""
    threads: int | None = None
    """torch CPU threads for this worker; None leaves torch's default (all cores)."""
    progress: bool = False
    """Report per-step progress events (only worth it when someone watches a progress bar)."""
    may_crash: bool = False
    """Honour the test-only CRASH_HOOK (true in separate worker processes only)."""

    def for_worker(self, device: str, threads: int | None) -> WorkerSettings:
        return dataclasses.replace(self, device=device, threads=threads, may_crash=True)


class RunAborted(Exception):
    """A failure that ends the whole run (the model cannot be loaded), not just one image."""

    def __init__(self, subject: str, problem: str, exit_code: int) -> None:
        super().__init__(problem)
        self.subject = subject
        self.problem = problem
        self.exit_code = exit_code


WeightsView = Callable[[], ContextManager[Optional[Callable[[object], None]]]]
"""Makes the callback that shows the weights store at work while a model loads (downloads)."""


class StandardStreams(Protocol):
    """The CLI's standard input and output, for the one image that comes from or goes to a pipe."""

    def read_stdin(self) -> bytes: ...

    def write_stdout(self, data: bytes) -> None:
        """Raises OutputPathError when the reader went away."""


@dataclass
class Stage:
    """The result of one stage of one image: what it produced, or why it failed, and how long it took."""

    value: object = None
    error: str | None = None
    seconds: float = 0.0


class ImageWorker:
    """Holds one loaded model and turns jobs into outcomes; read, compute and write are separate
    steps so that a pipeline can overlap one image's decoding and another's encoding with compute."""

    def __init__(
        self,
        settings: WorkerSettings,
        *,
        note: Callable[[str], None] | None = None,
        streams: StandardStreams | None = None,
        weights_view: WeightsView | None = None,
    ) -> None:
        self.settings = settings
        self.options = settings.options
        self.note = note or (lambda message: None)
        self.streams = streams
        self.weights_view = weights_view or self._weights_as_notes
        self.upscaler: Upscaler | None = None
        self.marked = False

    # ------------------------------------------------------------ model

    def load(self) -> Upscaler:
        """Load the model (once); raises RunAborted when it cannot be loaded."""
        if self.upscaler is not None:
            return self.upscaler
        from ..api import Upscaler

        if self.settings.threads:
            import torch

            torch.set_num_threads(self.settings.threads)
        try:
            with self.weights_view() as view:
                self.upscaler = Upscaler.from_pretrained(
                    self.settings.model, device=self.settings.device, dtype=self.settings.dtype,
                    offline=True if self.settings.offline else None, on_weights_event=view,
                    compile=self.settings.compile,
                )  # fmt: skip
        except OptionError as error:
            raise RunAborted("", cli_message(error), 2) from error
        except StableSRError as error:
            raise RunAborted(self.settings.model, str(error), 1) from error
        try:  # what only the loaded model can judge (tile sizes its UNet can halve, say) is a usage error
            self.options = self.upscaler.resolve_options(self.options)
        except OptionError as error:
            raise RunAborted("", cli_message(error), 2) from error
        from ..cli.batch import model_label

        threads = f" ({self.settings.threads} threads)" if self.settings.threads else ""
        label = model_label(self.settings.model, self.upscaler.facts.name)
        sampler = "" if self.options.sampler is Sampler.DDPM else f" {self.options.sampler.value}"
        self.note(f"{label} on {self.upscaler.device}{threads}, {self.options.steps}{sampler} steps, w {self.options.w:g}")
        return self.upscaler

    @contextlib.contextmanager
    def _weights_as_notes(self) -> Iterator[Callable[[object], None]]:
        """Where no progress bar can be drawn (a worker process): the store's steps as notes."""

        def forward(event: object) -> None:
            if getattr(event, "kind", "") != "progress":
                self.note(getattr(event, "message", str(event)))

        yield forward

    # ------------------------------------------------------------ the three stages

    def read(self, job: Job) -> Stage:
        from ..imaging.io import read_picture

        started = time.perf_counter()
        source = job.source
        assert source is not None  # planned UPSCALE jobs always have a source
        try:
            if source.is_stdin:
                if self.streams is None:
                    raise OutputPathError("standard input can only be read by the CLI's own process")
                picture = read_picture(self.streams.read_stdin(), max_pixels=self.settings.max_pixels)
            else:
                picture = read_picture(source.path, max_pixels=self.settings.max_pixels)
        except StableSRError as error:
            return Stage(error=cli_message(error), seconds=time.perf_counter() - started)
        return Stage(picture, seconds=time.perf_counter() - started)

    def compute(self, job: Job, picture: Picture, progress: Callable[[ProgressEvent], None] | None) -> Stage:
        from ..imaging.tensor_bridge import upscale_picture

        self._maybe_crash(job)
        upscaler = self.load()
        started = time.perf_counter()

        def on_event(event: ProgressEvent) -> None:
            if event.stage == "retry":  # out of memory on an accelerator: said once, not drawn
                self.note(event.message)
            elif progress is not None:
                progress(event)

        try:
            with warnings.catch_warnings():  # the run already warned once about a long prompt
                warnings.simplefilter("ignore", PromptTruncatedWarning)
                result = upscale_picture(picture, lambda img_lq: upscaler.upscale_tensor(img_lq, self.options, progress=on_event))
        except StableSRError as error:
            return Stage(error=cli_message(error), seconds=time.perf_counter() - started)
        except (RuntimeError, MemoryError) as error:
            if not is_out_of_memory(error):
                raise  # a real bug: let it show its traceback
            return Stage(error=OUT_OF_MEMORY_HINT, seconds=time.perf_counter() - started)
        return Stage(result, seconds=time.perf_counter() - started)

    def write(self, job: Job, result: Picture) -> Stage:
        """Stage.value is why the image was skipped after all, or None once written."""
        started = time.perf_counter()
        try:
            skipped = self._write(job, result)
        except StableSRError as error:
            return Stage(error=cli_message(error), seconds=time.perf_counter() - started)
        return Stage(skipped, seconds=time.perf_counter() - started)

    def process(self, job: Job, progress: Callable[[ProgressEvent], None] | None = None) -> Outcome:
        """All three stages in a row (for callers that do not pipeline)."""
        read = self.read(job)
        if read.error is not None:
            return outcome_of(job, [read])
        computed = self.compute(job, read.value, progress)  # type: ignore[arg-type]
        if computed.error is not None:
            return outcome_of(job, [read, computed])
        return outcome_of(job, [read, computed, self.write(job, computed.value)])  # type: ignore[arg-type]

    # ------------------------------------------------------------ details

    def _write(self, job: Job, result: Picture) -> str | None:
        from ..imaging.io import encode_picture, write_picture

        fmt = job.format.value if job.format is not None else None
        if job.destination is None:
            if self.streams is None:
                raise OutputPathError("standard output can only be written by the CLI's own process")
            self.streams.write_stdout(encode_picture(result, fmt, self.settings.quality))  # type: ignore[arg-type]
            return None
        # The run may have been long: look again, in case another process wrote the file meanwhile.
        action, reason = decide(
            job.destination, inputs=self.settings.inputs,
            skip_existing=self.settings.skip_existing, overwrite=self.settings.overwrite,
        )  # fmt: skip
        if action is Action.SKIP:
            return reason
        if action is Action.FAIL:
            raise OutputPathError(reason)
        try:
            job.destination.parent.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise OutputPathError(
                f"cannot create output folder {job.destination.parent} ({error.strerror or error})"
            ) from error
        if self.settings.output_folder is not None and not self.marked:
            from ..cli.scan import write_run_marker

            write_run_marker(self.settings.output_folder)
            self.marked = True
        write_picture(result, job.destination, format=fmt, quality=self.settings.quality)
        return None

    def _maybe_crash(self, job: Job) -> None:
        name = os.environ.get(CRASH_HOOK)
        if not (self.settings.may_crash and name and job.source and job.source.path and job.source.path.name == name):
            return
        marker = os.environ.get(CRASH_ONCE_MARKER)
        if marker:
            try:
                os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            except FileExistsError:
                return
        os._exit(137)


def outcome_of(job: Job, stages: list[Stage]) -> Outcome:
    """One image's outcome from its stages (read, compute, write; up to the one that failed).
    Seconds is the work spent on it, not the wall time of a pipeline that overlapped it with others."""
    seconds = sum(stage.seconds for stage in stages)
    last = stages[-1]
    if last.error is not None:
        return Outcome(job.label, job.destination_label, Status.FAILED, seconds, error=last.error)
    if isinstance(last.value, str):
        return Outcome(job.label, job.destination_label, Status.SKIPPED, error=last.value)
    picture, result = stages[0].value, stages[1].value
    return Outcome(
        job.label, job.destination_label, Status.DONE, seconds=seconds,
        size=(result.width, result.height), input_size=(picture.width, picture.height),  # type: ignore[union-attr]
        warnings=picture.warnings,  # type: ignore[union-attr]
    )  # fmt: skip


