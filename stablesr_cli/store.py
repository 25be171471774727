"""Where the weights come from and where they live: the manifest, the caches, download, verification.

* The manifest (`stablesr_cli/data/manifest.json`, package data) names every official file and model.
* Official `.ckpt` files are fetched with `huggingface_hub.hf_hub_download` into the shared Hugging
  Face cache (so a file another tool already fetched is reused; `HF_ENDPOINT` mirrors,
  `HF_HUB_OFFLINE`, tokens, proxies, resumable and locked downloads all come from there).
* Converted per-component safetensors live under our own cache dir (`STABLESR_CACHE_DIR`, default
  `~/.cache/stablesr`) in `converted/<file stem>/`, finished by a `stamp.json` written last.

No torch and no huggingface_hub at import time: `stablesr --help` and `weights list` stay fast.
Progress and announcements go through an `on_event` callback; this module never prints.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

from .atomic import atomic_write
from .model_facts import ModelFacts
from .errors import ChecksumError, CheckpointError, StableSRError, WeightsNotFoundError

MANIFEST_FORMAT = "stablesr-manifest/1"
STAMP_NAME = "stamp.json"
STAMP_FORMAT = "stablesr/1"  # keep in step with checkpoints.convert.FORMAT (not imported: it pulls in torch)
SR_PARTS = ("unet", "time_encoder", "vae", "text_encoder", "context_empty")
REQUIRED_PARTS = ("unet", "time_encoder", "vae", "context_empty", "cfw")
"""What an upscale needs; the text encoder is converted too but the default path never loads it."""


# ----------------------------------------------------------------------------------------------
# manifest


@dataclass(frozen=True)
class FileSpec:
    """One released weights file."""

    filename: str
    kind: str
    """'sr' (diffusion model) or 'cfw' (CFW autoencoder)."""
    hf_repo: str
    hf_revision: str
    urls: tuple[str, ...]
    mirror_pages: tuple[str, ...]
    size: int | None
    """Bytes, when recorded; None means unknown until the server says."""
    sha256: str | None
    """Published SHA-256 (lower-case hex), None when nobody has published one."""
    note: str = ""

    @property
    def stem(self) -> str:
        return Path(self.filename).stem


@dataclass(frozen=True)
class ModelSpec:
    """A model users name with `--model`: a diffusion checkpoint plus the CFW autoencoder it pairs with."""

    facts: ModelFacts
    """Prediction, native tile, default steps and w: everything the weights cannot tell."""
    file: FileSpec
    cfw_file: FileSpec
    licence: str
    upstream_config: str = ""

    @property
    def name(self) -> str:
        return self.facts.name

    @property
    def files(self) -> tuple[FileSpec, FileSpec]:
        return (self.file, self.cfw_file)


@dataclass(frozen=True)
class Manifest:
    models: dict[str, ModelSpec]
    files: dict[str, FileSpec]
    licence: dict[str, str]
    notes: tuple[str, ...] = ()

    def model(self, name: str) -> ModelSpec:
        try:
            return self.models[name]
        except KeyError:
            raise WeightsNotFoundError(
                f"unknown model '{name}'; choose one of {', '.join(self.models)} or give the path of a .ckpt "
                "or of a folder of converted weights"
            ) from None

    def model_for_file(self, filename: str) -> ModelSpec | None:
        """The model whose diffusion checkpoint has this file name, if any."""
        return next((m for m in self.models.values() if m.file.filename == filename), None)


def _file_spec(filename: str, raw: dict[str, Any]) -> FileSpec:
    sha = raw.get("sha256")
    return FileSpec(
        filename=filename,
        kind=raw["kind"],
        hf_repo=raw["hf_repo"],
        hf_revision=raw.get("hf_revision", "main"),
        urls=tuple(raw.get("urls", ())),
        mirror_pages=tuple(raw.get("mirror_pages", ())),
        size=raw.get("size"),
        sha256=sha.lower() if sha else None,
        note=raw.get("note", ""),
    )


def parse_manifest(data: dict[str, Any]) -> Manifest:
    """A Manifest from the JSON object; raises StableSRError naming what is wrong."""
    if data.get("format") != MANIFEST_FORMAT:
        raise StableSRError(f"weights manifest: format {data.get('format')!r}, expected {MANIFEST_FORMAT!r}; reinstall stablesr")
    try:
        files = {name: _file_spec(name, raw) for name, raw in data["files"].items()}
        models = {
            name: ModelSpec(
                facts=ModelFacts(
                    name=name,
                    prediction=raw["prediction"],
                    native_tile=int(raw["tile_latent"]),
                    default_steps=int(raw["default_steps"]),
                    default_w=float(raw["default_w"]),
                    summary=raw.get("description", ""),
                ),
                file=files[raw["file"]],
                cfw_file=files[raw["cfw_file"]],
                licence=raw["licence"],
                upstream_config=raw.get("upstream_config", ""),
            )
            for name, raw in data["models"].items()
        }
    except (KeyError, TypeError, ValueError) as exc:
        raise StableSRError(f"weights manifest: malformed entry ({type(exc).__name__}: {exc}); reinstall stablesr") from None
    return Manifest(models=models, files=files, licence=dict(data.get("licence", {})), notes=tuple(data.get("notes", ())))


@lru_cache(maxsize=1)
def load_manifest() -> Manifest:
    """The manifest shipped inside the package (works from a wheel as well as from a checkout)."""
    text = resources.files("stablesr_cli").joinpath("data", "manifest.json").read_text(encoding="utf-8")
    return parse_manifest(json.loads(text))


# ----------------------------------------------------------------------------------------------
# events


@dataclass(frozen=True)
class WeightsEvent:
    """What the store is doing, for the CLI (or any caller) to show."""

    kind: str
    """'fetch' (a download starts), 'progress' (bytes), 'found' (already on disk), 'verify', 'convert', 'ready'."""
    message: str
    file: str = ""
    done: int = 0
    """Bytes received so far ('progress')."""
    total: int | None = None
    """Bytes expected, when known."""


WeightsCallback = Callable[[WeightsEvent], None]


def _silent(_: WeightsEvent) -> None:
    pass


def human_size(n: int | None) -> str:
    if n is None:
        return "size unknown"
    value = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{n} B"


# ----------------------------------------------------------------------------------------------
# locations and modes


def cache_dir() -> Path:
    """Our cache of converted weights: $STABLESR_CACHE_DIR, else ~/.cache/stablesr."""
    env = os.environ.get("STABLESR_CACHE_DIR")
    return Path(env).expanduser() if env else Path("~/.cache/stablesr").expanduser()


def hub_cache_dir() -> Path:
    """The Hugging Face hub cache, resolved the way huggingface_hub does it.

    huggingface_hub reads these variables once, when it is imported; reading them at call time
    keeps a changed environment (a long-lived process, tests) honoured.
    """
    env = os.environ
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if env.get(var):
            return Path(os.path.expandvars(env[var])).expanduser()
    home = env.get("HF_HOME") or os.path.join(env.get("XDG_CACHE_HOME") or "~/.cache", "huggingface")
    return Path(os.path.expandvars(home)).expanduser() / "hub"


def _env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def is_offline(offline: bool = False) -> bool:
    """Offline when asked, or when STABLESR_OFFLINE or HF_HUB_OFFLINE is set."""
    return offline or _env_true("STABLESR_OFFLINE") or _env_true("HF_HUB_OFFLINE")


def _endpoint() -> str | None:
    value = os.environ.get("HF_ENDPOINT", "").strip().rstrip("/")
    return value or None


def file_url(spec: FileSpec) -> str:
    """Where `spec` is fetched from now (honours HF_ENDPOINT)."""
    base = _endpoint() or "https://huggingface.co"
    return f"{base}/{spec.hf_repo}/resolve/{spec.hf_revision}/{spec.filename}"


def converted_dir(spec: FileSpec) -> Path:
    return cache_dir() / "converted" / spec.stem


def _lock(name: str):
    from filelock import FileLock  # a huggingface_hub dependency

    locks = cache_dir() / ".locks"
    locks.mkdir(parents=True, exist_ok=True)
    return FileLock(str(locks / f"{name}.lock"))


# ----------------------------------------------------------------------------------------------
# fetching and verifying


@dataclass(frozen=True)
class FetchedFile:
    spec: FileSpec
    path: Path
    sha256: str
    verified_by: str | None
    """'manifest' (published SHA-256), 'hub' (the Hub's LFS SHA-256) or None (nothing to compare with)."""


def _hub_lfs_sha256(path: Path) -> str | None:
    """The Hub names LFS blobs by their SHA-256 (the ETag); a 64-hex blob name is that published hash."""
    try:
        blob = path.resolve()
    except OSError:
        return None
    name = blob.name.lower()
    if blob.parent.name == "blobs" and len(name) == 64 and all(c in "0123456789abcdef" for c in name):
        return name
    return None


def _remove_cached(path: Path) -> None:
    """Remove a bad download (the snapshot link and its blob) so the next attempt fetches it again."""
    blob = path.resolve()
    for p in (path, blob):
        try:
            p.unlink()
        except OSError:
            pass


def _verify(spec: FileSpec, path: Path, *, downloaded: bool, on_event: WeightsCallback) -> FetchedFile:
    from .checkpoints.convert import sha256_file

    size = path.stat().st_size
    on_event(WeightsEvent("verify", f"checking the SHA-256 of {spec.filename} ({human_size(size)})", file=spec.filename, total=size))
    actual = sha256_file(path)
    expected, by = (spec.sha256, "manifest") if spec.sha256 else (_hub_lfs_sha256(path) if downloaded else None, "hub")
    if expected is None:
        return FetchedFile(spec, path, actual, None)
    if actual != expected:
        where = "the manifest" if by == "manifest" else "the Hub's published LFS hash"
        if downloaded:
            _remove_cached(path)
            action = "it was removed from the cache; download again, or report it if this repeats"
        else:
            action = "it was not used; replace the file with an intact copy"
        raise ChecksumError(
            f"{path}: SHA-256 {actual} does not match {expected} from {where} for {spec.filename}; {action}"
        )
    return FetchedFile(spec, path, actual, by)


class _ProgressBar:
    """Stands in for the tqdm bar huggingface_hub drives, forwarding byte counts to `on_event`.

    huggingface_hub accepts any class that "mimics" tqdm: it is constructed with total/initial/desc,
    used as a context manager and fed through update(n). Its creation means a real transfer starts.
    """

    on_event: WeightsCallback = _silent
    spec: FileSpec  # set by _bar_class on each per-download subclass

    def __init__(self, *args: Any, total: int | None = None, initial: int = 0, **kwargs: Any) -> None:
        self.total = total
        self.n = initial
        spec = self.spec
        self.on_event(
            WeightsEvent(
                "fetch",
                f"downloading {spec.filename} ({human_size(total)}) from {file_url(spec)} into {hub_cache_dir()}",
                file=spec.filename,
                done=initial,
                total=total,
            )
        )

    def update(self, n: int | float = 1) -> None:
        self.n += int(n)
        self.on_event(WeightsEvent("progress", "", file=self.spec.filename, done=self.n, total=self.total))

    def close(self) -> None:
        pass

    def __enter__(self) -> "_ProgressBar":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _bar_class(spec: FileSpec, on_event: WeightsCallback) -> type[_ProgressBar]:
    return type("StableSRDownloadBar", (_ProgressBar,), {"on_event": staticmethod(on_event), "spec": spec})


def _download_command(spec: FileSpec) -> str:
    manifest = load_manifest()
    names = [m.name for m in manifest.models.values() if spec in m.files]
    return f"stablesr weights download {names[0] if names else '<model>'}"


def fetch_file(
    spec: FileSpec, *, from_dir: str | Path | None = None, offline: bool = False, on_event: WeightsCallback | None = None
) -> FetchedFile:
    """Put one official file on this machine and check it: from `from_dir`, the HF cache or the Hub.

    A file whose SHA-256 does not match raises ChecksumError and is never returned.
    """
    on_event = on_event or _silent
    if from_dir is not None:
        path = Path(from_dir).expanduser() / spec.filename
        if not path.is_file():
            raise WeightsNotFoundError(f"{path}: not found; copy {spec.filename} there (from {spec.urls[0] if spec.urls else spec.hf_repo}) or drop --from-dir")
        on_event(WeightsEvent("found", f"using {path}", file=spec.filename, total=path.stat().st_size))
        return _verify(spec, path, downloaded=False, on_event=on_event)

    if is_offline(offline):
        # a pure file-system lookup: even hf_hub_download(local_files_only=True) may touch the network
        cached = _cached_download(spec)
        if cached is None:
            raise WeightsNotFoundError(
                f"{spec.filename} is not on this machine and offline mode is on; fetch it with `{_download_command(spec)}` "
                "(online) or pass --from-dir DIR"
            )
        on_event(WeightsEvent("found", f"using {cached}", file=spec.filename, total=cached.stat().st_size))
        return _verify(spec, cached, downloaded=True, on_event=on_event)

    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        GatedRepoError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    bar = _bar_class(spec, on_event)
    try:
        local = hf_hub_download(
            repo_id=spec.hf_repo,
            filename=spec.filename,
            revision=spec.hf_revision,
            cache_dir=str(hub_cache_dir()),
            endpoint=_endpoint(),
            tqdm_class=bar,
        )
    except LocalEntryNotFoundError:
        raise WeightsNotFoundError(
            f"{spec.filename}: cannot reach {file_url(spec)}; check the connection (or set HF_ENDPOINT to a mirror), "
            "or copy the file by hand and pass --from-dir DIR"
        ) from None
    except GatedRepoError:
        raise WeightsNotFoundError(f"{spec.filename}: {spec.hf_repo} needs access rights; log in with `hf auth login`") from None
    except (RepositoryNotFoundError, RevisionNotFoundError, EntryNotFoundError):
        raise WeightsNotFoundError(
            f"{spec.filename}: not found at {file_url(spec)}; the file may have moved (see {', '.join(spec.mirror_pages) or spec.hf_repo}) "
            "- download it by hand and pass --from-dir DIR"
        ) from None
    except (OSError, ValueError) as exc:  # network failures after retries, full disk, size mismatch
        raise WeightsNotFoundError(f"{spec.filename}: download from {file_url(spec)} failed ({exc}); run the command again to retry") from None
    except Exception as exc:  # httpx errors (proxy, TLS, protocol) have no common base we can name without importing httpx
        raise WeightsNotFoundError(f"{spec.filename}: download from {file_url(spec)} failed ({type(exc).__name__}: {exc}); run the command again to retry") from None
    path = Path(local)
    return _verify(spec, path, downloaded=True, on_event=on_event)


# ----------------------------------------------------------------------------------------------
# conversion stamps


def _read_stamp(folder: Path) -> dict[str, Any] | None:
    try:
        stamp = json.loads((folder / STAMP_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return stamp if isinstance(stamp, dict) and stamp.get("format") == STAMP_FORMAT else None


def _stamp_is_current(folder: Path, spec: FileSpec) -> bool:
    """Converted, complete, and (when a hash is published) converted from the published file."""
    stamp = _read_stamp(folder)
    if stamp is None or stamp.get("source") != spec.filename:
        return False
    if spec.sha256 and stamp.get("source_sha256") != spec.sha256:
        return False
    return all((folder / name).is_file() for name in stamp.get("files", ()))


def _write_stamp(folder: Path, fetched: FetchedFile, files: Iterable[Path]) -> None:
    stamp = {
        "format": STAMP_FORMAT,
        "source": fetched.spec.filename,
        "source_path": str(fetched.path),
        "source_sha256": fetched.sha256,
        "verified_by": fetched.verified_by,
        "files": sorted(p.name for p in files),
    }
    text = json.dumps(stamp, indent=2).encode("utf-8")
    atomic_write(folder / STAMP_NAME, lambda stream: stream.write(text), what="cache stamp")


def _ensure_converted(
    spec: FileSpec, model: ModelSpec | None, *, from_dir: str | Path | None, offline: bool,
    on_event: WeightsCallback, text_heads: int | None,
) -> Path:
    """The folder of converted files for one official file, fetching and converting it if needed.

    `from_dir`: take the file from this folder instead of the Hub (it is verified all the same).
    """
    folder = converted_dir(spec)
    with _lock(spec.stem):  # one converter per file, across processes; the others wait, then reuse
        if _stamp_is_current(folder, spec):
            on_event(WeightsEvent("found", f"{spec.filename}: converted weights in {folder}", file=spec.filename))
            return folder
        fetched = fetch_file(spec, from_dir=from_dir, offline=offline, on_event=on_event)
        from .checkpoints.convert import convert_cfw_checkpoint, convert_sr_checkpoint

        def note(line: str) -> None:
            on_event(WeightsEvent("convert", f"{spec.filename}: {line}", file=spec.filename))

        on_event(WeightsEvent("convert", f"converting {spec.filename} to safetensors in {folder}", file=spec.filename))
        if spec.kind == "cfw":
            files = [convert_cfw_checkpoint(fetched.path, folder, source_sha256=fetched.sha256, note=note)]
        else:
            written = convert_sr_checkpoint(
                fetched.path, folder, model=model.name if model else None,
                prediction=model.facts.prediction if model else None, source_sha256=fetched.sha256,
                text_heads=text_heads, note=note,
            )
            files = list(written.values())
        _write_stamp(folder, fetched, files)
    return folder


# ----------------------------------------------------------------------------------------------
# models


@dataclass(frozen=True)
class ResolvedModel:
    """Everything an upscale needs to load a model."""

    spec: ModelSpec | None
    """The manifest's entry; None for a folder of converted weights of a model not in the manifest."""
    components: dict[str, Path]
    """'unet', 'time_encoder', 'vae', 'context_empty', 'cfw' (and 'text_encoder' when converted)."""
    source: str = ""
    """What was resolved: the model name or the path given."""


def _components_in(folder: Path) -> dict[str, Path]:
    from .checkpoints.convert import find_converted  # imports torch, so only when needed

    return find_converted(folder)


def _resolve_name(
    name: str, *, from_dir: str | Path | None, cfw_from_dir: str | Path | None, offline: bool,
    on_event: WeightsCallback, text_heads: int | None, source: str = "",
) -> ResolvedModel:
    spec = load_manifest().model(name)
    sr = _ensure_converted(spec.file, spec, from_dir=from_dir, offline=offline, on_event=on_event, text_heads=text_heads)
    cfw = _ensure_converted(spec.cfw_file, None, from_dir=cfw_from_dir, offline=offline, on_event=on_event, text_heads=text_heads)
    components = {k: v for k, v in _components_in(sr).items() if k in SR_PARTS or k == "unet_ema"}
    components["cfw"] = _components_in(cfw)["cfw"]
    on_event(WeightsEvent("ready", f"model '{name}' ready", file=spec.file.filename))
    return ResolvedModel(spec=spec, components=components, source=source or name)


def _resolve_folder(folder: Path, *, offline: bool, on_event: WeightsCallback, text_heads) -> ResolvedModel:
    from .checkpoints.io import read_safetensors_metadata

    components = _components_in(folder)
    if "unet" not in components:
        raise WeightsNotFoundError(f"{folder}: no unet.safetensors; convert a checkpoint there with `stablesr weights convert CKPT --cfw CFW -o {folder}`")
    meta = read_safetensors_metadata(components["unet"])
    manifest = load_manifest()
    name = meta.get("model") or ""
    spec = manifest.models.get(name) or manifest.model_for_file(meta.get("source", ""))
    if "cfw" not in components and spec is not None:
        cfw = _ensure_converted(spec.cfw_file, None, from_dir=None, offline=offline, on_event=on_event, text_heads=text_heads)
        components["cfw"] = _components_in(cfw)["cfw"]
    missing = [p for p in REQUIRED_PARTS if p not in components]
    if missing:
        raise WeightsNotFoundError(
            f"{folder}: missing {', '.join(f'{p}.safetensors' for p in missing)}; convert into it with "
            f"`stablesr weights convert CKPT --cfw CFW_CKPT -o {folder}`"
        )
    return ResolvedModel(spec=spec, components=components, source=str(folder))


def _resolve_ckpt(path: Path, *, offline: bool, on_event: WeightsCallback, text_heads) -> ResolvedModel:
    manifest = load_manifest()
    spec = manifest.model_for_file(path.name)
    if spec is None:
        raise CheckpointError(
            f"{path}: not an official file name, so the model (eps or v, tile size) is unknown; convert it with "
            "`stablesr weights convert CKPT --cfw CFW -o DIR --model NAME` and pass DIR"
        )
    # a local copy of an official file: convert it from where it is, checked like a download; its CFW
    # partner is used from the same folder when it sits there, else fetched like any other file
    cfw_local = path.parent if (path.parent / spec.cfw_file.filename).is_file() else None
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
    """Converted component files + spec for a model name, a `.ckpt` path or a folder of converted files.

    On first use of a name the official files are downloaded (or taken from `from_dir`), verified
    and converted, with each step announced through `on_event`. With `offline=True`,
    STABLESR_OFFLINE=1 or HF_HUB_OFFLINE=1 nothing is fetched and a missing file raises
    WeightsNotFoundError naming the command that fetches it. `text_heads` is only for non-standard
    (test) text towers whose width is not a multiple of 64.
    """
    on_event = on_event or _silent
    text = str(name_or_path)
    manifest = load_manifest()
    if text in manifest.models and not Path(text).exists():
        return _resolve_name(text, from_dir=from_dir, cfw_from_dir=from_dir, offline=offline, on_event=on_event, text_heads=text_heads)
    path = Path(text).expanduser()
    if path.is_dir():
        return _resolve_folder(path, offline=offline, on_event=on_event, text_heads=text_heads)
    if path.is_file():
        return _resolve_ckpt(path, offline=offline, on_event=on_event, text_heads=text_heads)
    if text in manifest.models:
        return _resolve_name(text, from_dir=from_dir, cfw_from_dir=from_dir, offline=offline, on_event=on_event, text_heads=text_heads)
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
        _resolve_name(name, from_dir=from_dir, cfw_from_dir=from_dir, offline=offline, on_event=on_event or _silent, text_heads=text_heads)
        for name in wanted
    ]


# ----------------------------------------------------------------------------------------------
# status (for `stablesr weights list`)


@dataclass(frozen=True)
class FileStatus:
    spec: FileSpec
    downloaded: Path | None
    """The file in the Hugging Face cache, if there."""
    converted: Path | None
    """The folder of converted files, if complete."""
    source_sha256: str | None = None
    verified_by: str | None = None
    source_path: str | None = None


@dataclass(frozen=True)
class ModelStatus:
    spec: ModelSpec
    files: tuple[FileStatus, ...] = field(default_factory=tuple)

    @property
    def ready(self) -> bool:
        return all(f.converted is not None for f in self.files)


def _cached_download(spec: FileSpec) -> Path | None:
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(spec.hf_repo, spec.filename, cache_dir=str(hub_cache_dir()), revision=spec.hf_revision)
    return Path(found) if isinstance(found, str) else None


def file_status(spec: FileSpec) -> FileStatus:
    folder = converted_dir(spec)
    stamp = _read_stamp(folder) if _stamp_is_current(folder, spec) else None
    return FileStatus(
        spec=spec,
        downloaded=_cached_download(spec),
        converted=folder if stamp else None,
        source_sha256=stamp.get("source_sha256") if stamp else None,
        verified_by=stamp.get("verified_by") if stamp else None,
        source_path=stamp.get("source_path") if stamp else None,
    )


def model_status() -> list[ModelStatus]:
    """Every manifest model with what is present, converted and verified, and where."""
    manifest = load_manifest()
    by_file = {name: file_status(spec) for name, spec in manifest.files.items()}
    return [ModelStatus(m, (by_file[m.file.filename], by_file[m.cfw_file.filename])) for m in manifest.models.values()]
