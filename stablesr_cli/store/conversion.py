"""Checkpoints -> a folder of converted safetensors files with its record (`stamp.json`).

The tensor work is `checkpoints.convert` (torch, imported on use); this module decides what goes
where, hashes the sources once, and records every written file's size and SHA-256.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from ..hashing import require_regular_file, sha256_file
from .fetch import FetchedFile
from .manifest import ModelSpec
from .record import Source, Stamp, write_stamp

Note = Callable[[str], None]


def _noop(_: str) -> None:
    pass


def convert_fetched(
    fetched: FetchedFile, folder: Path, *, model: ModelSpec | None, text_heads: int | None, note: Note | None = None
) -> Stamp:
    """Convert one verified official file into `folder` (our cache) and stamp it."""
    from ..checkpoints.convert import convert_cfw_checkpoint, convert_sr_checkpoint

    note = note or _noop
    source = Source(fetched.spec.filename, str(fetched.path), fetched.sha256, fetched.verified_by)
    if fetched.spec.kind == "cfw":
        files = [convert_cfw_checkpoint(fetched.path, folder, source_sha256=fetched.sha256, note=note)]
    else:
        written = convert_sr_checkpoint(
            fetched.path, folder, model=model.name if model else None, prediction=model.facts.prediction if model else None,
            source_sha256=fetched.sha256, text_heads=text_heads, note=note,
        )  # fmt: skip
        files = list(written.values())
    note(f"recording the SHA-256 of {len(files)} converted file{'s' if len(files) != 1 else ''}")
    return write_stamp(folder, source, files)


def _hashed(path: Path, note: Note) -> Source:
    require_regular_file(path)
    note(f"hashing {path.name}")
    return Source(path.name, str(path), sha256_file(path))


def convert_checkpoint(
    ckpt: str | Path | None,
    out_dir: str | Path,
    *,
    cfw: str | Path | None = None,
    fp16: bool = False,
    keep_ema: bool = False,
    model: str | None = None,
    prediction: str | None = None,
    text_heads: int | None = None,
    unet_head_channels: int | None = None,
    note: Note | None = None,
) -> dict[str, Path]:
    """`stablesr weights convert`: a diffusion checkpoint and/or its CFW checkpoint into one folder.

    Either may be left out (`ckpt=None` adds only `cfw.safetensors` to a folder converted before).
    Returns component -> written path; `stamp.json` in the folder records each file's SHA-256.
    """
    from ..checkpoints.convert import convert_cfw_checkpoint, convert_sr_checkpoint

    if ckpt is None and cfw is None:
        raise ValueError("nothing to convert: give a checkpoint, a CFW checkpoint, or both")
    out_dir, note = Path(out_dir), note or _noop
    # Both sources are checked before the long diffusion conversion starts.
    sources = {name: _hashed(Path(path), note) for name, path in (("sr", ckpt), ("cfw", cfw)) if path is not None}
    written: dict[str, Path] = {}
    if ckpt is not None:
        written = convert_sr_checkpoint(
            ckpt, out_dir, fp16=fp16, keep_ema=keep_ema, model=model, prediction=prediction,
            source_sha256=sources["sr"].sha256, text_heads=text_heads, unet_head_channels=unet_head_channels, note=note,
        )  # fmt: skip
        write_stamp(out_dir, sources["sr"], written.values(), keep_others=True)
    if cfw is not None:
        written["cfw"] = convert_cfw_checkpoint(cfw, out_dir, fp16=fp16, model=model, source_sha256=sources["cfw"].sha256, note=note)
        write_stamp(out_dir, sources["cfw"], [written["cfw"]], keep_others=True, main=False)
    return written
