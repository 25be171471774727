"""`stablesr weights list | download | convert`: get the official weights onto this machine, checked.

Nothing heavy is imported at module level (no torch, no huggingface_hub): the commands import
what they need when they run, so `stablesr --help` stays instant.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from ..errors import StableSRError

PROGRAM = "stablesr"

HELP = """Get, check and convert the official StableSR weights (S-Lab License 1.0, non-commercial).

From a fresh machine to the first upscaled image:

1. `stablesr weights list` shows the models (turbo, v2-512, v2-768v, face) and what is here.

2. `stablesr weights download turbo` fetches stablesr_turbo.ckpt and vqgan_cfw_00011.ckpt from
Hugging Face (Iceclear/StableSR), checks their SHA-256 and converts them to safetensors once.
Checkpoints are read with a safe loader that refuses to run code.

3. `stablesr upscale photo.jpg -o photo_x4.png --model turbo` upscales. Step 2 also happens by
itself on the first upscale with a model that is not here yet.

No internet on this machine? Copy the two .ckpt files from a machine that has it and run
`stablesr weights download turbo --from-dir DIR`. A mirror of the Hub: set HF_ENDPOINT. Never
touch the network: set STABLESR_OFFLINE=1 (or HF_HUB_OFFLINE=1). Your own checkpoint:
`stablesr weights convert CKPT --cfw CFW_CKPT -o DIR`, then `--model DIR`.

Downloads live in the Hugging Face cache (HF_HOME, default ~/.cache/huggingface); converted
weights in STABLESR_CACHE_DIR (default ~/.cache/stablesr).
"""

app = typer.Typer(help=HELP, no_args_is_help=True, add_completion=False, pretty_exceptions_show_locals=False)


def _stderr() -> Console:
    # built per command so that it binds to the sys.stderr of that moment (CliRunner swaps it)
    return Console(stderr=True, highlight=False)


def _fail(message: str, code: int = 1) -> typer.Exit:
    first = message.strip().splitlines()[0] if message.strip() else "failed"
    _stderr().print(f"{PROGRAM}: {first}", markup=False, highlight=False, soft_wrap=True)
    return typer.Exit(code)


class _EventView:
    """Shows store events on stderr: one line per step, a byte bar per download."""

    def __init__(self, console: Console) -> None:
        from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

        self._console = console
        self._progress = Progress(
            TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
            console=console, transient=True,
        )
        self._tasks: dict[str, int] = {}

    def __enter__(self) -> "_EventView":
        self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.stop()

    def __call__(self, event) -> None:  # store.WeightsEvent
        if event.kind == "progress":
            task = self._tasks.get(event.file)
            if task is None:
                task = self._tasks[event.file] = self._progress.add_task(event.file, total=event.total)
            self._progress.update(task, completed=event.done, total=event.total)
            return
        if event.message:
            self._progress.console.print(event.message, markup=False, highlight=False, soft_wrap=True)


def _known_models() -> list[str]:
    from ..store import load_manifest

    return list(load_manifest().models)


@app.command("list")
def list_models() -> None:
    """Show every model: its files, whether they are downloaded, converted and verified, and where."""
    from rich.table import Table

    from ..store import cache_dir, hub_cache_dir, load_manifest, model_status

    try:
        statuses = model_status()
        manifest = load_manifest()
    except StableSRError as exc:
        raise _fail(str(exc)) from None
    table = Table(show_lines=False)
    for column in ("model", "file", "downloaded", "converted", "verified", "where"):
        table.add_column(column)
    for status in statuses:
        for i, fs in enumerate(status.files):
            if fs.converted is None:
                verified = "-"
            elif fs.verified_by == "manifest":
                verified = "yes (published SHA-256)"
            elif fs.verified_by == "hub":
                verified = "yes (Hub SHA-256)"
            else:
                verified = "no hash to check"
            where = str(fs.converted or fs.downloaded or "-")
            table.add_row(
                status.spec.name if i == 0 else "", fs.spec.filename, "yes" if fs.downloaded else "no",
                "yes" if fs.converted else "no", verified, where,
            )
    out = Console(highlight=False, width=200)
    out.print(table)
    for status in statuses:
        s = status.spec
        mark = "ready" if status.ready else f"run `stablesr weights download {s.name}`"
        out.print(
            f"{s.name}: {s.facts.summary} prediction {s.facts.prediction}, tile {s.facts.native_size} px, "
            f"{s.facts.default_steps} steps, w {s.facts.default_w}; {mark}",
            markup=False, soft_wrap=True,
        )
    out.print(
        f"converted weights: {cache_dir()}; downloads: {hub_cache_dir()}; licence: {manifest.licence.get('name', '')}",
        markup=False, soft_wrap=True,
    )


@app.command()
def download(
    names: Annotated[list[str], typer.Argument(help="Models to fetch: turbo, v2-512, v2-768v, face.", show_default=False)],
    from_dir: Annotated[
        Optional[Path],
        typer.Option("--from-dir", help="Take the .ckpt files from this folder instead of the Internet (they are still verified).",
                     file_okay=False, exists=True),
    ] = None,
) -> None:
    """Fetch the named models, check their SHA-256 and convert them to safetensors (once)."""
    known = _known_models()
    unknown = [n for n in names if n not in known]
    if unknown:
        raise _fail(f"unknown model '{unknown[0]}'; choose from {', '.join(known)}", code=2)
    from ..store import download as download_models

    console = _stderr()
    try:
        with _EventView(console) as view:
            resolved = download_models(names, from_dir=from_dir, on_event=view)
    except StableSRError as exc:
        raise _fail(str(exc)) from None
    for model in resolved:
        console.print(
            f"{model.spec.name}: ready ({model.components['unet'].parent}); upscale with "
            f"`stablesr upscale IMAGE -o OUT --model {model.spec.name}`",
            markup=False, highlight=False, soft_wrap=True,
        )


@app.command()
def convert(
    ckpt: Annotated[Path, typer.Argument(help="Official diffusion checkpoint (.ckpt), e.g. stablesr_turbo.ckpt.", show_default=False)],
    output: Annotated[Path, typer.Option("-o", "--output", help="Folder to write the .safetensors files into.", show_default=False)],
    cfw: Annotated[
        Optional[Path], typer.Option("--cfw", help="The CFW autoencoder checkpoint that pairs with it, e.g. vqgan_cfw_00011.ckpt.")
    ] = None,
    fp16: Annotated[bool, typer.Option("--fp16", help="Store floating-point weights in half precision (half the size).")] = False,
    keep_ema: Annotated[bool, typer.Option("--keep-ema", help="Also write the UNet's EMA copy, if the checkpoint has one.")] = False,
    model: Annotated[
        Optional[str],
        typer.Option("--model", help="Which model this is (turbo, v2-512, v2-768v, face); guessed from official file names."),
    ] = None,
    prediction: Annotated[
        Optional[str],
        typer.Option("--prediction", help="eps or v, for a checkpoint that is not an official model (default: the model's, else eps)."),
    ] = None,
    unet_head_channels: Annotated[
        Optional[int], typer.Option("--unet-head-channels", hidden=True, help="UNet attention head width if not SD 2.x's 64.")
    ] = None,
    text_heads: Annotated[
        Optional[int], typer.Option("--text-heads", hidden=True, help="Text tower heads if not width // 64.")
    ] = None,
) -> None:
    """Split an official checkpoint into one safetensors file per component (unet, time_encoder, vae,
    text_encoder, cfw) plus the precomputed empty-prompt context, without running pickled code."""
    from ..store import load_manifest

    manifest = load_manifest()
    if model is not None and model not in manifest.models:
        raise _fail(f"unknown --model '{model}'; choose from {', '.join(manifest.models)}", code=2)
    spec = manifest.models[model] if model else manifest.model_for_file(ckpt.name)
    if prediction is not None and prediction not in ("eps", "v"):
        raise _fail(f"--prediction must be eps or v, got '{prediction}'", code=2)
    console = _stderr()

    def note(line: str) -> None:
        console.print(line, markup=False, highlight=False, soft_wrap=True)

    from ..checkpoints.convert import convert_checkpoint

    try:
        written = convert_checkpoint(
            ckpt, output, cfw=cfw, fp16=fp16, keep_ema=keep_ema,
            model=spec.name if spec else None, prediction=prediction or (spec.facts.prediction if spec else None),
            text_heads=text_heads, unet_head_channels=unet_head_channels, note=note,
        )
    except StableSRError as exc:
        raise _fail(str(exc)) from None
    for name, path in written.items():
        note(f"{name}: {path}")
    if spec is None and prediction is None:
        note(f"{ckpt.name} is not an official file name: pass --model NAME (or --prediction eps|v) so that "
             "the files record how the model predicts; eps was assumed")
    elif cfw is None:
        note(f"no --cfw given: {spec.cfw_file.filename} will be fetched on first use")
