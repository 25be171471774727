"""`stablesr upscale`: files, folders, globs or a pipe in; files, a folder or a pipe out.

The command validates every option and plans the whole run (cli/scan.py, cli/plan.py) before
touching the model, then hands the plan to cli/batch.py, which runs it on a backend of
stablesr_cli/batch/ (this process by default: the model loaded once, when a first image needs it)
and keeps going past a failed image. Exit codes: 0 all done, 1 some
images failed, 2 usage errors, 130 interrupted (Ctrl-C), 141 standard output closed by its reader, 143
terminated (SIGTERM). torch is never imported at start-up.

Options are declared in help-panel order; each names its panel (`rich_help_panel=`), so a new
option joins a panel by naming it. Hidden options at the end accept what Real-ESRGAN users type.
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from ..errors import OptionError
from ..options import DEFAULT_CFG, ColorFix, Precision, Sampler, UpscaleOptions, VaeTiling
from .batch import EXIT_USAGE, Batch, ModelChoice, Report, WriteChoice, binary_stream
from .console import JsonLines, cli_message, error_line, make_console, print_line, stderr_json_lines
from .plan import (
    Action,
    Job,
    OutputRequest,
    expand_inputs,
    left_out_as_earlier_outputs,
    output_folder_of,
    parse_format,
    plan_jobs,
)
from .preflight import check_device, check_model_argument
from .preflight import dry_run as run_dry
from .scan import describe_left_out, holds_inputs
from .option_values import RealEsrganAliases, choose, input_pixel_limit, open_json_file, parse_tile_batch, prompts_over_limit
from .signals import sigterm_as_interrupt

if TYPE_CHECKING:
    from ..batch.runner import Backend

DEFAULTS = UpscaleOptions()

# Help panels, in the order `--help` shows them.
OUTPUT = "Output"
QUALITY = "Quality"
HARDWARE = "Model and hardware"
TILING = "Tiling and memory"
RUN = "Batch and reporting"
WORKERS = "Several devices and clusters"

EPILOG = """\b
Examples:
  stablesr upscale photo.jpg                  writes photo_x4.jpg beside it
  stablesr upscale photo.jpg -o big.png -s 2  a chosen name and scale
  stablesr upscale photos/ -r -o big/         a folder tree into big/
  stablesr upscale photos/ -o big/ --dry-run  what would happen, and sizes
  stablesr upscale photos/ -o big/ --skip-existing  resume after Ctrl-C
  stablesr upscale - < small.png > big.png    a pipe

Weights: `stablesr weights --help`. Installed models and devices: `stablesr info`.
"""


def _choices(kind: type[Enum]) -> str:
    return "|".join(str(member.value) for member in kind)


def upscale(
    inputs: Annotated[
        Optional[list[str]],
        typer.Argument(
            metavar="INPUT...",
            help="Image files, folders (see --recursive), glob patterns such as 'photos/*.jpg', or - for one image on standard input.",
            show_default=False,
        ),
    ] = None,
    # ------------------------------------------------------------------ Output
    output: Annotated[
        Optional[str],
        typer.Option(
            "--output", "-o", metavar="PATH", rich_help_panel=OUTPUT, show_default=False,
            help="Output file, with an image extension, for one input; a folder (a name ending in /) for several "
            "inputs or a folder or glob input; - for standard output. Default: beside each input, with --suffix; "
            "standard output for input -.",
        ),
    ] = None,
    suffix: Annotated[
        Optional[str],
        typer.Option(
            metavar="TEXT", rich_help_panel=OUTPUT, show_default=False,
            help="Appended to each output's name exactly as written (--suffix out gives photoout.png); {scale} "
            "becomes the scale. Default: _x{scale} beside the inputs, nothing in an --output folder.",
        ),
    ] = None,
    output_format: Annotated[
        Optional[str],
        typer.Option(
            "--format", metavar="png|jpg|webp|tiff|bmp", rich_help_panel=OUTPUT, show_default=False,
            help="Output format (also jpeg, tif; any case). Default: the input's; PNG for formats stablesr cannot write.",
        ),
    ] = None,
    quality: Annotated[
        Optional[int],
        typer.Option(metavar="1-100", help="JPEG and WebP quality (default 95); ignored by lossless formats.", rich_help_panel=OUTPUT, show_default=False),
    ] = None,
    skip_existing: Annotated[
        bool, typer.Option("--skip-existing", help="Leave outputs that already exist alone (resumes an interrupted run).", rich_help_panel=OUTPUT)
    ] = False,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace outputs that already exist. Inputs are never overwritten.", rich_help_panel=OUTPUT)
    ] = False,
    # ------------------------------------------------------------------ Quality
    scale: Annotated[
        float, typer.Option("--scale", "-s", metavar="FLOAT", help="Output size / input size; any number > 0.", rich_help_panel=QUALITY)
    ] = DEFAULTS.scale,
    w: Annotated[
        Optional[float],
        typer.Option(
            "--w", metavar="FLOAT", rich_help_panel=QUALITY, show_default=False,
            help="Fidelity weight, 0 (most generative) to 1 (most faithful). Default: the model's (0.5 for the general models).",
        ),
    ] = None,
    steps: Annotated[
        Optional[int],
        typer.Option(metavar="N", help="Diffusion steps, 1-1000. Default: the model's (4 for turbo, 200 for the others).", rich_help_panel=QUALITY, show_default=False),
    ] = None,
    seed: Annotated[int, typer.Option(metavar="N", help="Random seed; the same seed and options give the same image.", rich_help_panel=QUALITY)] = DEFAULTS.seed,
    color_fix: Annotated[
        str, typer.Option(metavar=_choices(ColorFix), help="Colour correction against the input.", rich_help_panel=QUALITY)
    ] = DEFAULTS.color_fix.value,
    # ------------------------------------------------------------------ Sampler, prompts and guidance
    sampler: Annotated[
        str,
        typer.Option(metavar=_choices(Sampler), help="ddpm: upstream's default path; ddim: its negative-prompt script (default 50 steps instead of 200; turbo keeps 4).", rich_help_panel=QUALITY),
    ] = DEFAULTS.sampler.value,
    eta: Annotated[
        Optional[float], typer.Option(metavar="FLOAT", help="DDIM noise, 0 (deterministic, default) to 1 (upstream's 4K demo). --sampler ddim only.", rich_help_panel=QUALITY, show_default=False)
    ] = None,
    prompt: Annotated[str, typer.Option(metavar="TEXT", help="What the image shows (needs the 'prompts' extra). Default: the empty prompt, as upstream.", rich_help_panel=QUALITY, show_default=False)] = "",
    negative_prompt: Annotated[
        Optional[str], typer.Option(metavar="TEXT", help="What to steer away from; turns on classifier-free guidance (the UNet runs twice per step).", rich_help_panel=QUALITY, show_default=False)
    ] = None,
    cfg: Annotated[
        Optional[float],
        typer.Option(metavar="FLOAT", help=f"Guidance scale (default {DEFAULT_CFG:g} with --negative-prompt); alone, it guides against the empty prompt. 1 = no guidance.", rich_help_panel=QUALITY, show_default=False),
    ] = None,
    # ------------------------------------------------------------------ Model and hardware
    model: Annotated[
        str,
        typer.Option(
            "--model", "-m", metavar="NAME|PATH", rich_help_panel=HARDWARE,
            help="A model name from `stablesr weights list`, or the path of an official .ckpt or of a converted folder.",
        ),
    ] = "turbo",
    device: Annotated[
        str, typer.Option(metavar="auto|cpu|cuda|cuda:N|mps", help="Where to compute; auto: the first GPU if there is one.", rich_help_panel=HARDWARE)
    ] = "auto",
    dtype: Annotated[
        str, typer.Option(metavar=_choices(Precision), help="Compute precision; auto: fp16 on a GPU; on a CPU bf16 where it has bf16 matrix instructions (AMX, AVX512-BF16), else fp32.", rich_help_panel=HARDWARE)
    ] = Precision.AUTO.value,
    offline: Annotated[bool, typer.Option("--offline", help="Never download weights; fail if they are missing.", rich_help_panel=HARDWARE)] = False,
    compile_networks: Annotated[
        bool, typer.Option("--compile", help="torch.compile the networks: each new image size compiles first (minutes on a CPU), then runs faster; kernels are cached for later runs.", rich_help_panel=HARDWARE)
    ] = False,
    # ------------------------------------------------------------------ Tiling and memory
    tile_size: Annotated[
        Optional[int],
        typer.Option(metavar="PX", help="Diffusion tile side in output pixels (multiple of 8). Default: the model's native size (512 or 768).", rich_help_panel=TILING, show_default=False),
    ] = DEFAULTS.tile_size,
    tile_overlap: Annotated[
        Optional[int],
        typer.Option(metavar="PX", help="Overlap of diffusion tiles in pixels (multiple of 8). Default: half a tile.", rich_help_panel=TILING, show_default=False),
    ] = DEFAULTS.tile_overlap,
    tile_batch: Annotated[str, typer.Option(metavar="N|auto", help="Diffusion tiles per model call (more is faster on a GPU, needs more memory); auto: as many as fit in free GPU memory.", rich_help_panel=TILING)] = str(DEFAULTS.tile_batch),
    vae_tiling: Annotated[
        str,
        typer.Option(
            metavar=_choices(VaeTiling), rich_help_panel=TILING,
            help="none: the whole image at once; upstream: overlapping pixel patches, as upstream; lean: one diffusion run, autoencoders in tiles.",
        ),
    ] = DEFAULTS.vae_tiling.value,
    vae_tile_size: Annotated[
        int, typer.Option(metavar="PX", help="Pixel patch side (upstream) or autoencoder tile side (lean), multiple of 32.", rich_help_panel=TILING)
    ] = DEFAULTS.vae_tile_size,
    vae_tile_stride: Annotated[
        Optional[int],
        typer.Option(
            metavar="PX", rich_help_panel=TILING, show_default=False,
            help="Step between pixel patches, --vae-tiling upstream only. Default: follows --vae-tile-size as upstream (1000 per 1280).",
        ),
    ] = DEFAULTS.vae_tile_stride,
    # ------------------------------------------------------------------ Batch and reporting
    recursive: Annotated[bool, typer.Option("--recursive", "-r", help="Descend into sub-folders of folder inputs.", rich_help_panel=RUN)] = False,
    max_pixels: Annotated[
        Optional[int],
        typer.Option(metavar="N", help="Refuse inputs with more pixels than this (a decompression-bomb guard; default about 89 million); 0: no limit.", rich_help_panel=RUN, show_default=False),
    ] = None,
    max_output_pixels: Annotated[
        Optional[int],
        typer.Option(min=0, help="Refuse images whose output (or the enlarged canvas it is worked on) has more pixels than this (default 268,435,456 = 16384x16384); 0 = no limit.", rich_help_panel=RUN, show_default=False),
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Show what each input would become, with sizes, reading every image; loads no model and writes nothing.", rich_help_panel=RUN)
    ] = False,
    json_lines: Annotated[
        bool, typer.Option("--json", help="One JSON line per image on standard error, instead of the human messages.", rich_help_panel=RUN)
    ] = False,
    json_file: Annotated[
        Optional[Path],
        typer.Option(metavar="PATH", help="Append one JSON line per image to this file (with or without --json).", rich_help_panel=RUN, show_default=False, dir_okay=False),
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress, no per-image lines, no summary; errors only.", rich_help_panel=RUN)] = False,
    # ------------------------------------------------------------------ Several devices and clusters
    devices: Annotated[
        Optional[str],
        typer.Option(
            metavar="LIST|all", rich_help_panel=WORKERS, show_default=False,
            help="One worker process per device, each loading the model once: cuda:0,cuda:1, or all (every GPU). "
            "A device named twice gets two workers; cpu,cpu splits the cores between two.",
        ),
    ] = None,
    workers: Annotated[
        Optional[int],
        typer.Option(
            metavar="N", rich_help_panel=WORKERS, show_default=False,
            help="Worker processes on --device (on the CPU they split its cores); with --ray, Ray actors. Default 1.",
        ),
    ] = None,
    shard: Annotated[
        Optional[str],
        typer.Option(
            metavar="K/N", rich_help_panel=WORKERS, show_default=False,
            help="Only shard K of N of the inputs (a stable split by sorted relative path), one per task of a job "
            "array on a shared filesystem; with --skip-existing any shard can be run again.",
        ),
    ] = None,
    ray: Annotated[
        bool,
        typer.Option(
            "--ray", rich_help_panel=WORKERS,
            help="Run on Ray Data (pip install \"stablesr\\[ray]\"): --ray alone starts Ray on this machine; "
            "--ray auto joins this node's cluster, --ray ray://HOST:PORT a remote one. Inputs and outputs must be on "
            "a filesystem every node sees.",
        ),
    ] = False,
    # ------------------------------------------------------------------ hidden: what Real-ESRGAN users type
    esrgan_inputs: Annotated[Optional[list[str]], typer.Option("--input", "-i", hidden=True)] = None,
    esrgan_outscale: Annotated[Optional[float], typer.Option("--outscale", hidden=True)] = None,
    esrgan_ext: Annotated[Optional[str], typer.Option("--ext", "-f", hidden=True)] = None,
    esrgan_fp32: Annotated[bool, typer.Option("--fp32", hidden=True)] = False,
    esrgan_gpu: Annotated[Optional[int], typer.Option("--gpu-id", "-g", hidden=True)] = None,
    esrgan_tile: Annotated[Optional[int], typer.Option("--tile", "-t", hidden=True)] = None,
) -> None:
    """Upscale images with StableSR.

    Each INPUT becomes an image SCALE times larger: beside it as NAME_x4.EXT, in an --output folder
    under its own name, or on standard output. Existing outputs are never replaced silently.
    """
    console = make_console()
    json_sinks: list[JsonLines] = []
    try:
        aliases = RealEsrganAliases(esrgan_outscale, esrgan_ext, esrgan_fp32, esrgan_gpu, esrgan_tile)
        all_inputs = [*(inputs or []), *(esrgan_inputs or [])]
        ray_address = None
        if ray:
            from ..batch.ray_backend import split_ray_address  # batch/ imports cli types: imported late

            all_inputs, ray_address = split_ray_address(all_inputs)
        if not all_inputs:
            raise OptionError("no INPUT given; name image files, folders or globs, or - for standard input")
        scale = aliases.scale(scale)
        output_format = aliases.format(output_format)
        precision = aliases.dtype(choose(Precision, dtype, "--dtype"))
        device = aliases.device(device)
        patches = aliases.vae_tiling(choose(VaeTiling, vae_tiling, "--vae-tiling"))
        if quality is not None and not 1 <= quality <= 100:
            raise OptionError(f"--quality must be between 1 and 100, got {quality}")
        if max_pixels is not None and max_pixels < 0:
            raise OptionError(f"--max-pixels must be 0 (no limit) or more, got {max_pixels}")
        options = UpscaleOptions(
            scale=scale, w=w, steps=steps, seed=seed,
            color_fix=choose(ColorFix, color_fix, "--color-fix"), tile_size=tile_size, tile_overlap=tile_overlap,
            tile_batch=parse_tile_batch(tile_batch), vae_tiling=patches, vae_tile_size=vae_tile_size, vae_tile_stride=vae_tile_stride,
            max_output_pixels=DEFAULTS.max_output_pixels if max_output_pixels is None else (max_output_pixels or None),
            sampler=choose(Sampler, sampler, "--sampler"), eta=eta, prompt=prompt, negative_prompt=negative_prompt, cfg=cfg,
        )  # fmt: skip
        request = OutputRequest(
            output=output, suffix=suffix, format=parse_format(output_format) if output_format else None, scale=scale,
            skip_existing=skip_existing, overwrite=overwrite,
        )  # fmt: skip
        expansion = expand_inputs(all_inputs, recursive=recursive)
        jobs = plan_jobs(expansion, request)
        backend = _backend(devices=devices, workers=workers, device=device, ray_address=ray_address, jobs=jobs)
        if shard is not None:
            from ..batch.shard import parse_shard, select_shard

            jobs = select_shard(jobs, parse_shard(shard))
        earlier = left_out_as_earlier_outputs(expansion, request)
        stdout = binary_stream("stdout")
        if not dry_run and any(j.action is Action.UPSCALE and j.destination is None for j in jobs) and stdout.isatty():
            raise OptionError("refusing to write image bytes to a terminal; redirect standard output (> big.png) or pass -o FILE")
        if any(j.source is not None and j.source.is_stdin for j in jobs) and binary_stream("stdin").isatty():
            raise OptionError("no image piped in; use: stablesr upscale - < photo.png > big.png")
        long_prompts = prompts_over_limit(options)
        check_model_argument(model)
        if any(j.action is Action.UPSCALE for j in jobs):
            check_device(device, precision)
        if json_lines:
            json_sinks.append(stderr_json_lines())
        if json_file is not None:
            json_sinks.append(open_json_file(json_file))
    except OptionError as error:
        for sink in json_sinks:
            sink.close()
        print_line(console, error_line("", cli_message(error)))
        raise typer.Exit(EXIT_USAGE) from None

    report = Report(console, json_sinks, human=not json_lines, quiet=quiet)
    if expansion.not_images:
        report.note(describe_left_out(expansion.not_images, "skipped (not images by extension)"))
    if earlier:
        paths = [s.path for s in earlier if s.path is not None]
        report.note(describe_left_out(paths, "left out as earlier stablesr outputs (name them to upscale them again)"))
    images = sum(j.action is Action.UPSCALE for j in jobs)
    for option, tokens in long_prompts:  # once per run, not per image (the API warns per prompt)
        if report.chatty and images:
            print_line(console, f"warning: {option} is {tokens} tokens long; the text encoder reads 77 and ignores the rest "
                                f"(applies to {'the image' if images == 1 else f'all {images} images'})", style="yellow")
    try:
        if dry_run:
            exit_code = run_dry(report, jobs, scale=scale, max_pixels=input_pixel_limit(max_pixels))
        else:
            batch = Batch(
                jobs, options, report,
                ModelChoice(model, device, precision, offline, compile_networks),
                WriteChoice(quality, skip_existing, overwrite, _marked_folder(output_folder_of(request, expansion), jobs)),
                max_pixels=input_pixel_limit(max_pixels), stdout=stdout, backend=backend,
            )  # fmt: skip
            with sigterm_as_interrupt():
                exit_code = batch.run()
    finally:
        for sink in json_sinks:
            sink.close()
    raise typer.Exit(exit_code)


def _backend(*, devices: str | None, workers: int | None, device: str, ray_address: str | None, jobs: list[Job]) -> Backend:
    """Where the batch runs: this process, worker processes (--devices, --workers), or Ray (--ray)."""
    from ..batch.devices import plan_workers
    from ..batch.ray_backend import require_ray
    from ..batch.runner import Backend

    if workers is not None and workers < 1:
        raise OptionError(f"--workers {workers}: give at least 1")
    if ray_address is None:
        return Backend(plan_workers(devices=devices, workers=workers, device=device))
    if devices is not None:
        raise OptionError("--ray and --devices contradict each other: Ray gives each actor one GPU of the cluster")
    if any(job.destination is None or (job.source is not None and job.source.is_stdin) for job in jobs):
        raise OptionError("--ray reads and writes files on a shared filesystem; it cannot use standard input or output")
    require_ray()
    return Backend(plan_workers(devices=None, workers=None, device=device), ray_address=ray_address, ray_workers=workers)


def _marked_folder(output_folder: Path | None, jobs: list[Job]) -> Path | None:
    """The output folder that gets a run marker: not one that holds inputs (`photos/ -o photos/`),
    or a later scan of a folder above it would leave the originals out."""
    sources = [j.source for j in jobs if j.source is not None]
    return None if output_folder is None or holds_inputs(output_folder, sources) else output_folder
