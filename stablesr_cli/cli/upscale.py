"""`stablesr upscale`: files, folders, globs or a pipe in; files, a folder or a pipe out.

The command validates every option and plans the whole run (cli/plan.py) before touching the
model, loads the model once and only when a first image needs it, and keeps going past a failed
image. Exit codes: 0 all done, 1 some images failed, 2 usage errors, 130 interrupted (Ctrl-C).
torch is imported only by the workers (batch/), never at CLI start-up.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, BinaryIO, Optional

import typer
from rich.console import Console

from ..errors import OptionError, OutputPathError
from ..options import ColorFix, OutputFormat, Precision, UpscaleOptions, VaeTiling
from ..progress import ProgressEvent
from .console import (
    PROGRAM,
    JsonLines,
    Outcome,
    RunProgress,
    Status,
    error_line,
    format_seconds,
    make_console,
    print_line,
    print_summary,
    stderr_json_lines,
)
from .plan import Action, Job, OutputRequest, expand_inputs, plan_jobs

if TYPE_CHECKING:
    from ..batch.runner import Backend
    from .downloads import DownloadView
    from ..batch.work import WorkerSettings

DEFAULTS = UpscaleOptions()
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what shells report for Ctrl-C

OUTPUT = "Output"
QUALITY = "Quality"
TILING = "Tiling and memory"
HARDWARE = "Model and hardware"
RUN = "Run"
WORKERS = "Several devices and clusters"


def upscale(
    inputs: Annotated[
        list[str],
        typer.Argument(
            metavar="INPUT...",
            help="Image files, folders (see --recursive), glob patterns such as 'photos/*.jpg', or - for one image on standard input.",
            show_default=False,
        ),
    ],
    output: Annotated[
        Optional[str],
        typer.Option(
            "--output", "-o",
            help="Output file (one input), folder (several inputs, or a folder/glob input, or a name ending in /), "
            "or - for standard output. Default: next to each input, with --suffix; standard output for input -.",
            rich_help_panel=OUTPUT, show_default=False,
        ),
    ] = None,
    suffix: Annotated[
        Optional[str],
        typer.Option(
            help="Added to each output's name; {scale} becomes the scale. Default: _x{scale} next to the inputs, "
            "nothing in an --output folder.",
            rich_help_panel=OUTPUT, show_default=False,
        ),
    ] = None,
    output_format: Annotated[
        Optional[OutputFormat],
        typer.Option("--format", case_sensitive=False, help="Output format. Default: the input's (PNG for formats we cannot write).", rich_help_panel=OUTPUT, show_default=False),
    ] = None,
    quality: Annotated[
        Optional[int],
        typer.Option(min=1, max=100, help="JPEG/WebP quality, 1-100 (default 95); ignored by lossless formats.", rich_help_panel=OUTPUT, show_default=False),
    ] = None,
    skip_existing: Annotated[
        bool, typer.Option("--skip-existing", help="Leave outputs that already exist alone (resumes an interrupted run).", rich_help_panel=OUTPUT)
    ] = False,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace outputs that already exist. Inputs are never overwritten.", rich_help_panel=OUTPUT)
    ] = False,
    scale: Annotated[float, typer.Option("--scale", "-s", help="Output size / input size; any number > 0.", rich_help_panel=QUALITY)] = DEFAULTS.scale,
    w: Annotated[
        Optional[float],
        typer.Option("--w", help="Fidelity weight, 0 (most generative) to 1 (most faithful). Default: the model's (0.5 for the general models).", rich_help_panel=QUALITY, show_default=False),
    ] = None,
    steps: Annotated[
        Optional[int], typer.Option(help="Diffusion steps, 1-1000. Default: the model's (4 for turbo).", rich_help_panel=QUALITY, show_default=False)
    ] = None,
    seed: Annotated[int, typer.Option(help="Random seed; the same seed and options give the same image.", rich_help_panel=QUALITY)] = DEFAULTS.seed,
    color_fix: Annotated[ColorFix, typer.Option(case_sensitive=False, help="Colour correction against the input.", rich_help_panel=QUALITY)] = DEFAULTS.color_fix,
    model: Annotated[
        str,
        typer.Option("--model", "-m", help="A model name from `stablesr weights list`, or a path to an official .ckpt or a converted folder.", rich_help_panel=HARDWARE),
    ] = "turbo",
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.", rich_help_panel=HARDWARE)] = "auto",
    dtype: Annotated[Precision, typer.Option(case_sensitive=False, help="Compute precision; auto = fp16 on CUDA, fp32 on CPU.", rich_help_panel=HARDWARE)] = Precision.AUTO,
    offline: Annotated[bool, typer.Option("--offline", help="Never download weights; fail if they are missing.", rich_help_panel=HARDWARE)] = False,
    tile_size: Annotated[
        Optional[int],
        typer.Option(help="Diffusion tile side in output pixels (multiple of 8). Default: the model's native size (512 or 768).", rich_help_panel=TILING, show_default=False),
    ] = DEFAULTS.tile_size,
    tile_overlap: Annotated[
        Optional[int],
        typer.Option(help="Overlap of diffusion tiles in pixels (multiple of 8). Default: half a tile.", rich_help_panel=TILING, show_default=False),
    ] = DEFAULTS.tile_overlap,
    tile_batch: Annotated[str, typer.Option(metavar="N|auto", help="Diffusion tiles per model call (more is faster on a GPU, needs more memory); auto: as many as fit in free GPU memory.", rich_help_panel=TILING)] = str(DEFAULTS.tile_batch),
    vae_tiling: Annotated[
        VaeTiling,
        typer.Option(case_sensitive=False, help="none: whole image at once; upstream: overlapping pixel patches as upstream does; lean: one diffusion run, VAE in tiles.", rich_help_panel=TILING),
    ] = DEFAULTS.vae_tiling,
    vae_tile_size: Annotated[int, typer.Option(help="Pixel patch (upstream) or VAE tile (lean) side, multiple of 32.", rich_help_panel=TILING)] = DEFAULTS.vae_tile_size,
    vae_tile_stride: Annotated[int, typer.Option(help="Stride between pixel patches for --vae-tiling upstream.", rich_help_panel=TILING)] = DEFAULTS.vae_tile_stride,
    max_pixels: Annotated[
        Optional[int],
        typer.Option(min=0, help="Refuse inputs with more pixels than this (decompression-bomb guard; default about 89 million); 0 = no limit.", rich_help_panel=RUN, show_default=False),
    ] = None,
    recursive: Annotated[bool, typer.Option("--recursive", "-r", help="Descend into sub-folders of folder inputs.", rich_help_panel=RUN)] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="List what would be done; loads no model and writes nothing.", rich_help_panel=RUN)] = False,
    json_lines: Annotated[
        bool, typer.Option("--json", help="One JSON line per image on standard error (replacing the human messages): input, output, size, seconds, status.", rich_help_panel=RUN)
    ] = False,
    json_file: Annotated[
        Optional[Path], typer.Option(help="Append the JSON lines to this file instead (human messages stay on standard error).", rich_help_panel=RUN, show_default=False, dir_okay=False)
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress, no per-image lines, no summary; errors only.", rich_help_panel=RUN)] = False,
    devices: Annotated[
        Optional[str],
        typer.Option(
            metavar="LIST|all",
            help="One worker process per device, each loading the model once: cuda:0,cuda:1, or all (every GPU). "
            "A device named twice gets two workers; cpu,cpu splits the cores between two.",
            rich_help_panel=WORKERS, show_default=False,
        ),
    ] = None,
    workers: Annotated[
        Optional[int],
        typer.Option(
            min=1, help="Worker processes on --device (on the CPU they split its cores); with --ray, Ray actors. Default 1.",
            rich_help_panel=WORKERS, show_default=False,
        ),
    ] = None,
    shard: Annotated[
        Optional[str],
        typer.Option(
            metavar="K/N",
            help="Only shard K of N of the inputs (a stable split by sorted relative path), one per task of a job "
            "array on a shared filesystem; with --skip-existing any shard can be run again.",
            rich_help_panel=WORKERS, show_default=False,
        ),
    ] = None,
    ray: Annotated[
        bool,
        typer.Option(
            "--ray",
            help="Run on Ray Data (pip install \"stablesr[ray]\"): --ray alone starts Ray on this machine; "
            "--ray auto joins this node's cluster, --ray ray://HOST:PORT a remote one. Inputs and outputs must be on "
            "a filesystem every node sees.",
            rich_help_panel=WORKERS,
        ),
    ] = False,
) -> None:
    """Upscale images with StableSR.

    \b
    stablesr upscale photo.png                      -> photo_x4.png
    stablesr upscale photos/ -r -o big/ --skip-existing
    cat small.png | stablesr upscale - > big.png
    """
    # batch/ imports the CLI's console and plan types, so it is imported here, not above.
    from ..batch.shard import parse_shard, select_shard
    from ..batch.work import WorkerSettings

    console = make_console()
    try:
        options = UpscaleOptions(
            scale=scale, w=w, steps=steps, seed=seed, color_fix=color_fix,
            tile_size=tile_size, tile_overlap=tile_overlap, tile_batch=_tile_batch(tile_batch), vae_tiling=vae_tiling,
            vae_tile_size=vae_tile_size, vae_tile_stride=vae_tile_stride,
        )  # fmt: skip
        request = OutputRequest(
            output=output, suffix=suffix, format=output_format, scale=scale,
            skip_existing=skip_existing, overwrite=overwrite,
        )  # fmt: skip
        ray_address = None
        if ray:
            from ..batch.ray_backend import split_ray_address

            inputs, ray_address = split_ray_address(inputs)
        jobs = plan_jobs(expand_inputs(inputs, recursive=recursive), request)
        backend = _backend(devices=devices, workers=workers, device=device, ray_address=ray_address, jobs=jobs)
        if shard is not None:
            jobs = select_shard(jobs, parse_shard(shard))
        stdout = _binary_stream("stdout")
        if not dry_run and any(j.action is Action.UPSCALE and j.destination is None for j in jobs) and stdout.isatty():
            raise OptionError("refusing to write image bytes to a terminal; redirect standard output (> big.png) or pass -o FILE")
        if any(j.source is not None and j.source.is_stdin for j in jobs) and _binary_stream("stdin").isatty():
            raise OptionError("no image piped in; use: stablesr upscale - < photo.png > big.png")
        json_sink = _open_json(json_file) if json_file is not None else (stderr_json_lines() if json_lines else None)
    except OptionError as error:
        print_line(console, error_line("", str(error)))
        raise typer.Exit(EXIT_USAGE) from None

    report = _Report(console, json_sink, human=not (json_lines and json_file is None), quiet=quiet)
    try:
        if dry_run:
            exit_code = report.dry_run(jobs)
        else:
            settings = WorkerSettings(
                model=model, device=device, dtype=dtype.value, offline=offline, options=options,
                quality=quality, max_pixels=_max_pixels(max_pixels),
                skip_existing=skip_existing, overwrite=overwrite,
            )  # fmt: skip
            exit_code = _Batch(jobs, settings, backend, report, stdout).run()
    finally:
        if json_sink is not None:
            json_sink.close()
    raise typer.Exit(exit_code)


def _backend(*, devices: str | None, workers: int | None, device: str, ray_address: str | None, jobs: list[Job]) -> Backend:
    from ..batch.devices import plan_workers
    from ..batch.ray_backend import require_ray
    from ..batch.runner import Backend
    if ray_address is None:
        return Backend(plan_workers(devices=devices, workers=workers, device=device))
    if devices is not None:
        raise OptionError("--ray and --devices contradict each other: Ray gives each actor one GPU of the cluster")
    if any(job.destination is None or (job.source is not None and job.source.is_stdin) for job in jobs):
        raise OptionError("--ray reads and writes files on a shared filesystem; it cannot use standard input or output")
    require_ray()
    return Backend(plan_workers(devices=None, workers=None, device=device), ray_address=ray_address, ray_workers=workers)


def _open_json(path: Path) -> JsonLines:
    try:
        # Appended, so an interrupted run and its --skip-existing resume share one log.
        return JsonLines(path.open("a", encoding="utf-8"), owned=True)
    except OSError as error:
        raise OptionError(f"{path}: cannot open the --json-file ({error.strerror or error})") from error


def _tile_batch(value: str) -> int | None:
    """`--tile-batch`: a whole number, or auto (None: as many as fit)."""
    text = value.strip().lower()
    if text == "auto":
        return None
    try:
        return int(text)
    except ValueError:
        raise OptionError(f"--tile-batch must be a whole number or auto, got {value!r}") from None


def _max_pixels(value: int | None) -> int | None:
    from ..imaging.io import DEFAULT_MAX_PIXELS  # PIL and numpy only; still kept off the --help path

    if value is None:
        return DEFAULT_MAX_PIXELS
    return None if value == 0 else value


class _Report:
    """Per-image messages (human and/or JSON) in the order images finish."""

    def __init__(self, console: Console, json_sink: JsonLines | None, *, human: bool, quiet: bool) -> None:
        self.console = console
        self.json_sink = json_sink
        self.human = human
        self.quiet = quiet
        self.live = False
        """True while progress bars are drawn; they and the summary table replace per-image lines."""
        self.outcomes: list[Outcome] = []

    @property
    def chatty(self) -> bool:
        """Progress, per-image lines and the summary."""
        return self.human and not self.quiet

    def add(self, outcome: Outcome, *, listing: bool = False) -> None:
        """Record one image's fate. Errors always print; a finished image prints a line only when
        no progress bars are drawn (logs, CI); skips print only in a --dry-run listing, so that
        resuming a 10,000-image run does not scroll 10,000 lines."""
        self.outcomes.append(outcome)
        if self.json_sink is not None:
            self.json_sink.write(outcome)
        if not self.human:
            return
        if outcome.status is Status.FAILED:
            print_line(self.console, error_line(outcome.input, outcome.error or "failed"), style="red")
        elif self.quiet:
            return
        elif outcome.status is Status.PLANNED:
            print_line(self.console, f"would upscale {outcome.input} -> {outcome.output}")
        elif outcome.status is Status.SKIPPED and listing:
            print_line(self.console, f"skipped {outcome.input}: {outcome.error}", style="dim")
        elif outcome.status is Status.DONE and not self.live:
            size = f"{outcome.size[0]}x{outcome.size[1]}, " if outcome.size else ""
            print_line(self.console, f"{outcome.input} -> {outcome.output} ({size}{format_seconds(outcome.seconds)})")
        if not self.quiet:
            for warning in outcome.warnings:
                print_line(self.console, f"{PROGRAM}: warning: {warning}", style="yellow")

    def note(self, message: str) -> None:
        """A message about the run itself (model download, loading), not about one image."""
        if self.chatty:
            print_line(self.console, message, style="dim")

    def dry_run(self, jobs: list[Job]) -> int:
        """List the plan; return the exit code a real run would have if every upscale succeeded."""
        from ..batch.runner import outcome_of_plan

        for job in jobs:
            self.add(outcome_of_plan(job), listing=True)
        counts = {action: sum(j.action is action for j in jobs) for action in Action}
        if self.human:
            print_line(
                self.console,
                f"dry run: {counts[Action.UPSCALE]} to upscale, {counts[Action.SKIP]} to skip, "
                f"{counts[Action.FAIL]} would fail; nothing was written",
                style="bold",
            )
        return EXIT_FAILED if counts[Action.FAIL] else 0

    def summary(self, seconds: float, *, interrupted: bool) -> None:
        if self.chatty or (self.human and interrupted):
            print_summary(self.console, self.outcomes, seconds=seconds, interrupted=interrupted)
        elif self.human and any(o.status is Status.FAILED for o in self.outcomes):
            failed = sum(o.status is Status.FAILED for o in self.outcomes)
            print_line(self.console, f"{failed} of {len(self.outcomes)} images failed", style="bold")
        if interrupted and self.human:
            print_line(self.console, "interrupted; run the same command with --skip-existing to resume", style="bold")


class _Batch:
    """Runs the planned jobs on the chosen backend (batch/runner.py) and reports them."""

    def __init__(self, jobs: list[Job], settings: WorkerSettings, backend: Backend, report: _Report, stdout: BinaryIO) -> None:
        self.jobs = jobs
        self.report = report
        self.stdout = stdout
        report.live = report.chatty and report.console.is_terminal
        self.settings = dataclasses.replace(settings, progress=report.live)
        self.backend = backend
        self.progress = RunProgress(
            report.console, total_images=sum(j.action is Action.UPSCALE for j in jobs), enabled=report.live
        )

    def run(self) -> int:
        from ..batch.runner import BatchRunner
        from ..batch.work import RunAborted

        started = time.perf_counter()
        interrupted = False
        try:
            with self.progress.shown():
                BatchRunner(self.jobs, self.settings, self, self.backend, streams=self).run()
        except KeyboardInterrupt:
            # The images in flight are lost; their temporary files were removed by the writer.
            interrupted = True
        except RunAborted as aborted:
            print_line(self.report.console, error_line(aborted.subject, aborted.problem), style="red")
            return aborted.exit_code
        self.report.summary(time.perf_counter() - started, interrupted=interrupted)
        if interrupted:
            return EXIT_INTERRUPTED
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
        return _binary_stream("stdin").read()

    def write_stdout(self, data: bytes) -> None:
        try:
            self.stdout.write(data)
            self.stdout.flush()
        except BrokenPipeError as error:
            _silence_stdout()
            raise OutputPathError("standard output was closed before the image was written") from error


def _binary_stream(name: str) -> BinaryIO:
    """The byte stream under sys.stdin / sys.stdout, read at call time (so tests' replacements count)."""
    stream = getattr(sys, name)
    return getattr(stream, "buffer", stream)


def _silence_stdout() -> None:
    """After a reader closed the pipe (`| head`), point stdout at /dev/null so the interpreter's
    final flush does not print a second, confusing BrokenPipeError."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 1)
    except OSError:
        pass
    finally:
        os.close(devnull)
