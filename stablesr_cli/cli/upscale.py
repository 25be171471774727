"""`stablesr upscale`: files, folders, globs or a pipe in; files, a folder or a pipe out.

The command validates every option and plans the whole run (cli/plan.py) before touching the
model, loads the model once and only when a first image needs it, and keeps going past a failed
image. Exit codes: 0 all done, 1 some images failed, 2 usage errors, 130 interrupted (Ctrl-C).
torch is imported only inside `_Batch`, never at CLI start-up.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, BinaryIO, Optional

import typer
from rich.console import Console

from ..errors import OptionError, OutputPathError, PromptTruncatedWarning, StableSRError
from ..options import DEFAULT_CFG, ColorFix, OutputFormat, Precision, Sampler, UpscaleOptions, VaeTiling
from .console import (
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
from .plan import STDIO, Action, Job, OutputRequest, decide, expand_inputs, input_identities, plan_jobs

if TYPE_CHECKING:
    from ..api import Upscaler
    from ..imaging.io import Picture

DEFAULTS = UpscaleOptions()
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what shells report for Ctrl-C

OUTPUT = "Output"
QUALITY = "Quality"
TILING = "Tiling and memory"
HARDWARE = "Model and hardware"
RUN = "Run"


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
    # -- sampler, prompts and guidance (one block)
    sampler: Annotated[
        Sampler,
        typer.Option(case_sensitive=False, help="ddpm: upstream's default path; ddim: its negative-prompt script (default 50 steps instead of 200; turbo keeps 4).", rich_help_panel=QUALITY),
    ] = DEFAULTS.sampler,
    eta: Annotated[
        Optional[float], typer.Option(help="DDIM noise, 0 (deterministic, default) to 1 (upstream's 4K demo). --sampler ddim only.", rich_help_panel=QUALITY, show_default=False)
    ] = None,
    prompt: Annotated[str, typer.Option(help="What the image shows (needs the 'prompts' extra). Default: the empty prompt, as upstream.", rich_help_panel=QUALITY, show_default=False)] = "",
    negative_prompt: Annotated[
        Optional[str], typer.Option(help="What to steer away from; turns on classifier-free guidance (the UNet runs twice per step).", rich_help_panel=QUALITY, show_default=False)
    ] = None,
    cfg: Annotated[
        Optional[float],
        typer.Option(help=f"Guidance scale (default {DEFAULT_CFG:g} with --negative-prompt); alone, it guides against the empty prompt. 1 = no guidance.", rich_help_panel=QUALITY, show_default=False),
    ] = None,
    # -- end of the sampler block
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
    tile_batch: Annotated[int, typer.Option(help="Diffusion tiles per model call (more is faster, needs more memory).", rich_help_panel=TILING)] = DEFAULTS.tile_batch,
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
) -> None:
    """Upscale images with StableSR.

    \b
    stablesr upscale photo.png                      -> photo_x4.png
    stablesr upscale photos/ -r -o big/ --skip-existing
    cat small.png | stablesr upscale - > big.png
    """
    console = make_console()
    try:
        options = UpscaleOptions(
            scale=scale, w=DEFAULTS.w if w is None else w, steps=steps, seed=seed, color_fix=color_fix,
            tile_size=tile_size, tile_overlap=tile_overlap, tile_batch=tile_batch, vae_tiling=vae_tiling,
            vae_tile_size=vae_tile_size, vae_tile_stride=vae_tile_stride,
            sampler=sampler, eta=eta, prompt=prompt, negative_prompt=negative_prompt, cfg=cfg,
        )  # fmt: skip
        request = OutputRequest(
            output=output, suffix=suffix, format=output_format, scale=scale,
            skip_existing=skip_existing, overwrite=overwrite,
        )  # fmt: skip
        jobs = plan_jobs(expand_inputs(inputs, recursive=recursive), request)
        stdout = _binary_stream("stdout")
        if not dry_run and any(j.action is Action.UPSCALE and j.destination is None for j in jobs) and stdout.isatty():
            raise OptionError("refusing to write image bytes to a terminal; redirect standard output (> big.png) or pass -o FILE")
        if any(j.source is not None and j.source.is_stdin for j in jobs) and _binary_stream("stdin").isatty():
            raise OptionError("no image piped in; use: stablesr upscale - < photo.png > big.png")
        long_prompts = _long_prompts(options)
        json_sink = _open_json(json_file) if json_file is not None else (stderr_json_lines() if json_lines else None)
    except OptionError as error:
        print_line(console, error_line("", str(error)))
        raise typer.Exit(EXIT_USAGE) from None

    report = _Report(console, json_sink, human=not (json_lines and json_file is None), quiet=quiet)
    images = sum(j.action is Action.UPSCALE for j in jobs)
    for option, tokens in long_prompts:  # once per run, not per image (the API warns per prompt)
        if report.chatty and images:
            print_line(console, f"warning: {option} is {tokens} tokens long; the text encoder reads 77 and ignores the rest "
                                f"(applies to {'the image' if images == 1 else f'all {images} images'})", style="yellow")
    try:
        if dry_run:
            exit_code = report.dry_run(jobs)
        else:
            batch = _Batch(
                jobs, options, report,
                model=model, device=device, dtype=dtype, offline=offline, explicit_w=w is not None,
                quality=quality, max_pixels=_max_pixels(max_pixels), skip_existing=skip_existing,
                overwrite=overwrite, stdout=stdout,
            )  # fmt: skip
            exit_code = batch.run()
    finally:
        if json_sink is not None:
            json_sink.close()
    raise typer.Exit(exit_code)


def _long_prompts(options: UpscaleOptions) -> list[tuple[str, int]]:
    """(option, token count) of the prompts the text encoder will cut; checks the `prompts` extra."""
    given = [("--prompt", options.prompt), ("--negative-prompt", options.negative_prompt or "")]
    if not any(text for _, text in given):
        return []
    from ..api import prompt_token_count  # the tokenizer; torch comes with it, only when prompts are used

    counts = [(option, prompt_token_count(text)) for option, text in given if text]
    return [(option, tokens) for option, tokens in counts if tokens > 77]


def _open_json(path: Path) -> JsonLines:
    try:
        # Appended, so an interrupted run and its --skip-existing resume share one log.
        return JsonLines(path.open("a", encoding="utf-8"), owned=True)
    except OSError as error:
        raise OptionError(f"{path}: cannot open the --json-file ({error.strerror or error})") from error


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

    def note(self, message: str) -> None:
        """A message about the run itself (model download, loading), not about one image."""
        if self.chatty:
            print_line(self.console, message, style="dim")

    def dry_run(self, jobs: list[Job]) -> int:
        """List the plan; return the exit code a real run would have if every upscale succeeded."""
        for job in jobs:
            self.add(_outcome_of_plan(job), listing=True)
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


def _outcome_of_plan(job: Job) -> Outcome:
    """What the plan alone says about a job: planned, skipped, or failed with its reason."""
    status = {Action.UPSCALE: Status.PLANNED, Action.SKIP: Status.SKIPPED, Action.FAIL: Status.FAILED}[job.action]
    return Outcome(job.label, None if job.source is None else job.destination_label, status, error=job.reason or None)


class _Batch:
    """Runs the planned jobs in order with one model, loaded when the first image needs it."""

    def __init__(
        self, jobs: list[Job], options: UpscaleOptions, report: _Report, *, model: str, device: str,
        dtype: Precision, offline: bool, explicit_w: bool, quality: int | None, max_pixels: int | None,
        skip_existing: bool, overwrite: bool, stdout: BinaryIO,
    ) -> None:  # fmt: skip
        self.jobs = jobs
        self.options = options
        self.report = report
        self.model_name = model
        self.device = device
        self.dtype = dtype
        self.offline = offline
        self.explicit_w = explicit_w
        self.quality = quality
        self.max_pixels = max_pixels
        self.skip_existing = skip_existing
        self.overwrite = overwrite
        self.stdout = stdout
        self.inputs = input_identities(j.source for j in jobs if j.source is not None)
        self.upscaler: Upscaler | None = None
        report.live = report.chatty and report.console.is_terminal
        self.progress = RunProgress(
            report.console, total_images=sum(j.action is Action.UPSCALE for j in jobs), enabled=report.live
        )

    def run(self) -> int:
        started = time.perf_counter()
        interrupted = False
        try:
            with self.progress.shown():
                for job in self.jobs:
                    if job.action is not Action.UPSCALE:
                        self.report.add(_outcome_of_plan(job))
                        continue
                    self.progress.start_image(job.label)
                    self.report.add(self._upscale(job))
                    self.progress.finish_image()
        except KeyboardInterrupt:
            # The image in flight is lost; its temporary file was removed by write_picture.
            interrupted = True
        except _RunAborted as aborted:
            print_line(self.report.console, error_line(aborted.subject, aborted.problem), style="red")
            return aborted.exit_code
        self.report.summary(time.perf_counter() - started, interrupted=interrupted)
        if interrupted:
            return EXIT_INTERRUPTED
        return EXIT_FAILED if any(o.status is Status.FAILED for o in self.report.outcomes) else 0

    def _upscale(self, job: Job) -> Outcome:
        from ..imaging.io import read_picture

        started = time.perf_counter()
        source = job.source
        assert source is not None  # planned UPSCALE jobs always have a source
        try:
            if source.is_stdin:
                # Read when the command runs, never at import (a CliRunner test swaps stdin in late).
                picture = read_picture(_binary_stream("stdin").read(), max_pixels=self.max_pixels)
            else:
                picture = read_picture(source.path, max_pixels=self.max_pixels)
            result = self._run_model(picture)
            skipped = self._write(job, result)
        except StableSRError as error:
            return self._failed(job, str(error), started)
        except (RuntimeError, MemoryError) as error:
            if not _is_out_of_memory(error):
                raise  # a real bug: let it show its traceback
            hint = "out of memory; try a smaller --tile-size or --vae-tile-size, --tile-batch 1, or --dtype fp16"
            return self._failed(job, hint, started)
        if skipped is not None:
            return Outcome(job.label, job.destination_label, Status.SKIPPED, error=skipped)
        return Outcome(
            job.label, job.destination_label, Status.DONE, seconds=time.perf_counter() - started,
            size=(result.width, result.height), input_size=(picture.width, picture.height),
        )  # fmt: skip

    def _failed(self, job: Job, problem: str, started: float) -> Outcome:
        return Outcome(job.label, job.destination_label, Status.FAILED, time.perf_counter() - started, error=problem)

    def _run_model(self, picture: Picture) -> Picture:
        from ..imaging.picture import from_model_output, to_model_input

        upscaler = self._model()
        img_lq = to_model_input(picture)  # [1, 3, H, W] in [0, 1]
        progress = self.progress.on_event if self.report.chatty else None
        with warnings.catch_warnings():  # the run already warned once about a long prompt
            warnings.simplefilter("ignore", PromptTruncatedWarning)
            img_sr = upscaler.upscale_tensor(img_lq, self.options, progress=progress)
        return from_model_output(picture, img_sr)

    def _model(self) -> Upscaler:
        if self.upscaler is not None:
            return self.upscaler
        from ..api import Upscaler

        try:
            self.upscaler = Upscaler.from_pretrained(
                self.model_name, device=self.device, dtype=self.dtype.value,
                offline=True if self.offline else None, on_event=self.report.note,
            )  # fmt: skip
        except OptionError as error:
            raise _RunAborted(self.model_name, str(error), EXIT_USAGE) from error
        except StableSRError as error:
            raise _RunAborted(self.model_name, str(error), EXIT_FAILED) from error
        spec = self.upscaler.spec
        if not self.explicit_w:
            self.options = dataclasses.replace(self.options, w=spec.default_w)
        steps = self.upscaler.resolve_options(self.options).steps
        sampler = self.options.sampler.value
        self.report.note(f"model {spec.name} on {self.upscaler.device}, {steps} {sampler} steps, w {self.options.w:g}")
        return self.upscaler

    def _write(self, job: Job, result: Picture) -> str | None:
        """Write the result; returns why it was skipped instead, or None once written."""
        from ..imaging.io import encode_picture, write_picture

        fmt = job.format.value if job.format is not None else None
        if job.destination is None:
            data = encode_picture(result, fmt, self.quality)  # type: ignore[arg-type]  # None: the input's format
            try:
                self.stdout.write(data)
                self.stdout.flush()
            except BrokenPipeError as error:
                _silence_stdout()
                raise OutputPathError("standard output was closed before the image was written") from error
            return None
        # The run may have been long: look again, in case another process wrote the file meanwhile.
        action, reason = decide(job.destination, inputs=self.inputs, skip_existing=self.skip_existing, overwrite=self.overwrite)
        if action is Action.SKIP:
            return reason
        if action is Action.FAIL:
            raise OutputPathError(reason)
        try:
            job.destination.parent.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise OutputPathError(f"cannot create output folder {job.destination.parent} ({error.strerror or error})") from error
        write_picture(result, job.destination, format=fmt, quality=self.quality)
        return None


class _RunAborted(Exception):
    """A failure that ends the whole run (the model cannot be loaded), not just one image."""

    def __init__(self, subject: str, problem: str, exit_code: int) -> None:
        super().__init__(problem)
        self.subject = subject
        self.problem = problem
        self.exit_code = exit_code


def _is_out_of_memory(error: BaseException) -> bool:
    return isinstance(error, MemoryError) or "out of memory" in str(error).lower()


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
