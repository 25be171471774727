"""From what a user names with `--model` (a model name, an official `.ckpt`, a converted folder)
to the converted component files an upscale loads.

Every folder, whether in our cache or given by path, goes through `resolve_folder`: the files it
needs must be there, whole (sizes and headers checked, no hashing), and what the shapes cannot
tell (which model, how it predicts) comes from the manifest or the files' metadata.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from ..checkpoints.layout import COMPONENT_FILES, REQUIRED_COMPONENTS, SR_COMPONENTS, find_converted
from ..errors import CheckpointError, WeightsNotFoundError
from .cache import ensure_converted, needs_download
from .events import WeightsCallback, WeightsEvent, silent
from .fetch import require_reachable
from .integrity import HeaderError, file_problem, metadata
from .manifest import ModelSpec, load_manifest
from .places import is_offline, usable_cache_dir
from .record import read_stamp

SR_PARTS = (*SR_COMPONENTS, "context_empty")
REQUIRED_PARTS = REQUIRED_COMPONENTS


@dataclass(frozen=True)
class ResolvedModel:
    """Everything an upscale needs to load a model."""

    spec: ModelSpec | None
    """The manifest's model, or None for a converted folder of a model the manifest does not know."""
    components: dict[str, Path]
    """'unet', 'time_encoder', 'vae', 'context_empty', 'cfw' (and 'text_encoder' when converted)."""
    source: str = ""
    """What was resolved: the model name or the path given."""
    metadata: dict[str, str] = field(default_factory=dict)
    """The UNet file's metadata (model, prediction, source, ...)."""


def _convert_command(folder: Path, *, cfw_only: bool = False) -> str:
    if cfw_only:
        return f"stablesr weights convert --cfw CFW_CKPT -o {folder}"
    return f"stablesr weights convert CKPT --cfw CFW_CKPT -o {folder}"


def _check_whole(folder: Path, components: dict[str, Path]) -> None:
    """Refuse a folder with a truncated or damaged file, naming it (sizes and headers only)."""
    stamp = read_stamp(folder)
    recorded = stamp.files if stamp else {}
    for path in components.values():
        entry = recorded.get(path.name)
        problem = file_problem(path, entry.size if entry else None)
        if problem is not None:
            raise CheckpointError(f"{path}: {problem}; convert the checkpoint again (`{_convert_command(folder)}`)")


def resolve_folder(
    folder: Path, *, offline: bool = False, on_event: WeightsCallback | None = None, text_heads: int | None = None,
    source: str = "",
) -> ResolvedModel:
    """The components of a folder of converted files; a missing CFW file of an official model is fetched."""
    on_event = on_event or silent
    components = find_converted(folder)
    _check_whole(folder, components)
    missing = [p for p in REQUIRED_PARTS if p not in components and p != "cfw"]
    if missing:
        names = ", ".join(COMPONENT_FILES[p] for p in missing)
        raise WeightsNotFoundError(f"{folder}: no {names}; convert the checkpoint into it again (`{_convert_command(folder)}`)")
    try:
        meta = metadata(components["unet"])
    except HeaderError as exc:  # already checked above; kept for a file replaced in between
        raise CheckpointError(f"{components['unet']}: {exc}") from None
    manifest = load_manifest()
    spec = manifest.models.get(meta.get("model", "")) or manifest.model_for_file(meta.get("source", ""))
    if "cfw" not in components:
        if spec is None:
            raise WeightsNotFoundError(
                f"{folder}: no cfw.safetensors (the CFW autoencoder the model decodes with); add it with "
                f"`{_convert_command(folder, cfw_only=True)}`"
            )
        cfw = ensure_converted(spec.cfw_file, None, from_dir=None, offline=offline, on_event=on_event, text_heads=text_heads)
        components["cfw"] = find_converted(cfw)["cfw"]
    return ResolvedModel(spec=spec, components=components, source=source or str(folder), metadata=meta)


def _resolve_name(
    name: str, *, from_dir: str | Path | None, cfw_from_dir: str | Path | None, offline: bool,
    on_event: WeightsCallback, text_heads: int | None, source: str = "",
) -> ResolvedModel:
    spec = load_manifest().model(name)
    usable_cache_dir()
    if not is_offline(offline):
        # One quick check before anything starts, naming everything that would be downloaded.
        wanted = [(spec.file, from_dir), (spec.cfw_file, cfw_from_dir)]
        require_reachable([f for f, local in wanted if local is None and needs_download(f)], name)
    sr = ensure_converted(spec.file, spec, from_dir=from_dir, offline=offline, on_event=on_event, text_heads=text_heads)
    cfw = ensure_converted(spec.cfw_file, None, from_dir=cfw_from_dir, offline=offline, on_event=on_event, text_heads=text_heads)
    components = {k: v for k, v in find_converted(sr).items() if k in SR_PARTS or k == "unet_ema"}
    components["cfw"] = find_converted(cfw)["cfw"]
    meta = metadata(components["unet"])
    on_event(WeightsEvent("ready", f"model '{name}' ready", file=spec.file.filename))
    return ResolvedModel(spec=spec, components=components, source=source or name, metadata=meta)


def _resolve_ckpt(path: Path, *, offline: bool, on_event: WeightsCallback, text_heads: int | None) -> ResolvedModel:
    spec = load_manifest().model_for_file(path.name)
    if spec is None:
        raise CheckpointError(
            f"{path}: not an official file name, so the model (eps or v, tile size) is unknown; convert it with "
            "`stablesr weights convert CKPT --cfw CFW -o DIR --model NAME` and pass DIR"
        )
    # a local copy of an official file: convert it from where it is, checked like a download; its CFW
    # partner is used from the same folder when it sits there, else fetched like any other file
    cfw_local = path.parent if (path.parent / spec.cfw_file.filename).exists() else None
    return _resolve_name(
        spec.name, from_dir=path.parent, cfw_from_dir=cfw_local, offline=offline, on_event=on_event,
        text_heads=text_heads, source=str(path),
    )


def ensure_model(
    name_or_path: str | Path,
    offline: bool = False,
    on_event: WeightsCallback | None = None,
    *,
    from_dir: str | Path | None = None,
    text_heads: int | None = None,
) -> ResolvedModel:
    """Converted component files (+ the manifest's model, when known) for a model name, a `.ckpt`
    path or a folder of converted files.

    On first use of a name the official files are downloaded (or taken from `from_dir`), verified
    and converted, with each step announced through `on_event`. With `offline=True`,
    STABLESR_OFFLINE=1 or HF_HUB_OFFLINE=1 nothing is fetched and a missing file raises
    WeightsNotFoundError naming the command that fetches it. `text_heads` is only for non-standard
    (test) text towers whose width is not a multiple of 64.
    """
    on_event = on_event or silent
    text = str(name_or_path)
    manifest = load_manifest()
    if text in manifest.models and not Path(text).exists():
        return _resolve_name(text, from_dir=from_dir, cfw_from_dir=from_dir, offline=offline, on_event=on_event, text_heads=text_heads)
    path = Path(text).expanduser()
    if path.is_dir():
        return resolve_folder(path, offline=offline, on_event=on_event, text_heads=text_heads)
    if path.exists():
        from ..hashing import require_regular_file

        require_regular_file(path)
        return _resolve_ckpt(path, offline=offline, on_event=on_event, text_heads=text_heads)
    raise WeightsNotFoundError(
        f"'{text}' is neither a model name ({', '.join(manifest.models)}) nor an existing file or folder"
    )


def download(
    names: Iterable[str],
    *,
    from_dir: str | Path | None = None,
    offline: bool = False,
    on_event: WeightsCallback | None = None,
    text_heads: int | None = None,
) -> list[ResolvedModel]:
    """Fetch (or take from `from_dir`), verify and convert the named models; files shared between
    models (the CFW autoencoder) are handled once."""
    manifest = load_manifest()
    wanted = list(dict.fromkeys(names))
    for name in wanted:
        manifest.model(name)  # fail on a typo before any transfer starts
    return [
        _resolve_name(name, from_dir=from_dir, cfw_from_dir=from_dir, offline=offline, on_event=on_event or silent, text_heads=text_heads)
        for name in wanted
    ]

