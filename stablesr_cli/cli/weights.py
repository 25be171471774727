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

`stablesr weights verify [NAME|DIR]` reads the weights again and checks every SHA-256.

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
            if fs.damaged:
                verified = f"damaged: {fs.problem}"
            elif fs.converted is None:
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
                "yes" if fs.converted else ("damaged" if fs.damaged else "no"), verified, where,
            )
    out = Console(highlight=False, width=200)
    out.print(table)
    for status in statuses:
        s = status.spec
        damaged = next((f for f in status.files if f.damaged), None)
        if status.ready:
            mark = "ready"
        elif damaged is not None:
            mark = f"damaged ({damaged.problem}); run `stablesr weights download {s.name}` to convert it again"
        else:
            mark = f"run `stablesr weights download {s.name}`"
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
    from .downloads import DownloadView

    console = _stderr()
    try:
        with DownloadView(console) as view:
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
    output: Annotated[Path, typer.Option("-o", "--output", help="Folder to write the .safetensors files into.", show_default=False)],
    ckpt: Annotated[
        Optional[Path],
        typer.Argument(help="Official diffusion checkpoint (.ckpt), e.g. stablesr_turbo.ckpt; leave out to add only --cfw to a folder.",
                       show_default=False),
    ] = None,
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
    """Convert checkpoints to safetensors files, one per component, without running pickled code.

    Writes unet, time_encoder, vae, text_encoder and cfw plus the precomputed empty-prompt context,
    and records each file's SHA-256 in the folder's stamp.json.
    """
    from ..store import convert_checkpoint, load_manifest

    manifest = load_manifest()
    if ckpt is None and cfw is None:
        raise _fail("nothing to convert: give a checkpoint (CKPT), a CFW checkpoint (--cfw), or both", code=2)
    if model is not None and model not in manifest.models:
        raise _fail(f"unknown --model '{model}'; choose from {', '.join(manifest.models)}", code=2)
    spec = manifest.models[model] if model else (manifest.model_for_file(ckpt.name) if ckpt else None)
    if prediction is not None and prediction not in ("eps", "v"):
        raise _fail(f"--prediction must be eps or v, got '{prediction}'", code=2)
    console = _stderr()

    def note(line: str) -> None:
        console.print(line, markup=False, highlight=False, soft_wrap=True)

    try:
        written = convert_checkpoint(
            ckpt, output, cfw=cfw, fp16=fp16, keep_ema=keep_ema,
            model=spec.name if spec else None, prediction=prediction or (spec.facts.prediction if spec else None),
            text_heads=text_heads, unet_head_channels=unet_head_channels, note=note,
        )  # fmt: skip
    except StableSRError as exc:
        raise _fail(str(exc)) from None
    for name, path in written.items():
        note(f"{name}: {path}")
    if ckpt is not None and spec is None and prediction is None:
        note(f"{ckpt.name} is not an official file name: pass --model NAME (or --prediction eps|v) so that "
             "the files record how the model predicts; eps was assumed")
    if ckpt is not None and not (output / "cfw.safetensors").is_file():
        _warn_no_cfw(note, output, spec)


def _warn_no_cfw(note, output: Path, spec) -> None:
    """Upscaling needs the CFW autoencoder: say so now, not at the first upscale."""
    if spec is not None:
        note(f"warning: no --cfw given, so {output} has no cfw.safetensors; the first upscale fetches "
             f"{spec.cfw_file.filename}, or add it now: `stablesr weights convert --cfw {spec.cfw_file.filename} -o {output}`")
    else:
        note(f"warning: no --cfw given, so {output} has no cfw.safetensors, which upscaling needs; add it with "
             f"`stablesr weights convert --cfw CFW_CKPT -o {output}` (CFW_CKPT: vqgan_cfw_00011.ckpt for the 512 and 768v models)")


@app.command()
def verify(
    target: Annotated[
        Optional[str],
        typer.Argument(help="A model name (turbo, v2-512, v2-768v, face) or a folder of converted weights; "
                            "default: every model file on this machine.", show_default=False),
    ] = None,
) -> None:
    """Read the weights again and check every SHA-256; exit 1 naming each damaged file.

    Converted files are compared with the hashes recorded at conversion, downloaded checkpoints
    with our manifest (or the Hub's hash where our manifest has none).
    """
    from ..store import load_manifest, verify_everything, verify_folder, verify_model
    from .downloads import DownloadView

    known = load_manifest().models
    console = _stderr()
    try:
        with DownloadView(console) as view:
            if target is None:
                checks = verify_everything(view)
            elif target in known and not Path(target).is_dir():
                checks = verify_model(target, view)
            elif Path(target).expanduser().is_dir():
                checks = verify_folder(target, view)
            else:
                raise _fail(f"'{target}' is neither a model name ({', '.join(known)}) nor a folder", code=2)
    except StableSRError as exc:
        raise _fail(str(exc)) from None
    out = Console(highlight=False)
    if not checks:
        out.print("no weights on this machine yet; nothing to verify", markup=False, soft_wrap=True)
        return
    bad = [c for c in checks if not c.ok]
    for check in checks:
        if check.ok:
            out.print(f"ok  {check.path}  ({check.how})", markup=False, soft_wrap=True)
    for check in bad:
        console.print(f"{PROGRAM}: {check.path}: {check.problem}", markup=False, highlight=False, soft_wrap=True)
    if bad:
        console.print(
            f"{len(bad)} of {len(checks)} files damaged; convert again with `stablesr weights download NAME` "
            "(or `stablesr weights convert` for your own folder)", markup=False, highlight=False, soft_wrap=True,
        )
        raise typer.Exit(1)
    out.print(f"all {len(checks)} files are as recorded", markup=False, soft_wrap=True)
