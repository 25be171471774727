"""What a run checks before its first image, and the --dry-run that checks everything a run would.

The model argument and the device are checked before any image is read (usage errors, exit 2);
a dry run then reads every image the run would read (sizes, broken files, --max-pixels) and
lists the plan, without loading a model or writing anything.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from ..errors import OptionError, StableSRError
from ..options import Precision
from .batch import EXIT_FAILED, EXIT_INTERRUPTED, Report, outcome_of_plan
from .console import Status, cli_message, print_line
from .plan import Action, Job


def check_model_argument(model: str) -> None:
    """A usage error unless `model` names a known model or an existing file or folder.

    Cheap on purpose (no weights are read): a dry run checks it, and a real run fails here with
    exit 2 rather than after planning and reading the first image.
    """
    if Path(model).expanduser().exists():
        return
    from ..store import load_manifest

    names = list(load_manifest().models)
    if model not in names:
        raise OptionError(
            f"--model {model}: neither a model name ({', '.join(names)}) nor an existing file or folder; "
            "`stablesr weights list` shows the models"
        )


def check_device(device: str, dtype: Precision) -> None:
    """Resolve --device and --dtype as loading a model would (imports torch), without a model."""
    from ..runtime import resolve_device, resolve_dtype

    resolve_dtype(dtype.value, resolve_device(device))


def output_size(width: int, height: int, scale: float) -> tuple[int, int]:
    """The output's width and height, as the pipeline makes it: int(side * scale)."""
    size = (int(width * scale), int(height * scale))
    if min(size) < 1:
        raise OptionError(
            f"a {width}x{height} image at scale {scale:g} would be {size[0]}x{size[1]} pixels; use a larger scale",
            options=("scale",),
        )
    return size


def dry_run(report: Report, jobs: list[Job], *, scale: float, max_pixels: int | None) -> int:
    """List the plan, reading every image a real run would read; the exit code a real run would
    have if every model run succeeded. Standard input is not consumed (its size stays unknown)."""
    from ..imaging.io import read_picture

    counts = dict.fromkeys(Action, 0)
    interrupted = False
    try:
        for job in jobs:
            outcome = outcome_of_plan(job)
            if job.action is Action.UPSCALE and job.source is not None and job.source.path is not None:
                try:
                    picture = read_picture(job.source.path, max_pixels=max_pixels)
                    size = output_size(picture.width, picture.height, scale)
                    outcome = dataclasses.replace(outcome, input_size=(picture.width, picture.height), size=size)
                except StableSRError as error:
                    outcome = dataclasses.replace(outcome, status=Status.FAILED, error=cli_message(error))
            counts[Action.FAIL if outcome.status is Status.FAILED else job.action] += 1
            report.add(outcome, listing=True)
    except KeyboardInterrupt:
        interrupted = True
    if report.chatty:
        print_line(
            report.console,
            f"dry run: {counts[Action.UPSCALE]} to upscale, {counts[Action.SKIP]} to skip, "
            f"{counts[Action.FAIL]} would fail; nothing was written",
            style="bold",
        )
    if interrupted:
        if report.human:
            print_line(report.console, "interrupted", style="bold")
        return EXIT_INTERRUPTED
    return EXIT_FAILED if counts[Action.FAIL] else 0
