"""Where weights live and whether the network may be used, read from the environment at call time.

* Official `.ckpt` files go to the shared Hugging Face cache (HF_HUB_CACHE, HF_HOME), so a file
  another tool already fetched is reused.
* Converted safetensors live in our own cache, STABLESR_CACHE_DIR (default ~/.cache/stablesr), in
  `converted/<file stem>/`.

huggingface_hub reads its variables once, when it is imported; reading them at call time keeps a
changed environment (a long-lived process, tests) honoured.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from ..errors import StableSRError
from .manifest import FileSpec

CACHE_VARIABLE = "STABLESR_CACHE_DIR"


def cache_dir() -> Path:
    """Our cache of converted weights: $STABLESR_CACHE_DIR, else ~/.cache/stablesr."""
    env = os.environ.get(CACHE_VARIABLE)
    return Path(env).expanduser() if env else Path("~/.cache/stablesr").expanduser()


def _hub_cache_setting() -> tuple[Path, str]:
    """The Hugging Face hub cache and the variable it came from."""
    env = os.environ
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if env.get(var):
            return Path(os.path.expandvars(env[var])).expanduser(), var
    if env.get("HF_HOME"):
        return Path(os.path.expandvars(env["HF_HOME"])).expanduser() / "hub", "HF_HOME"
    home = os.path.join(env.get("XDG_CACHE_HOME") or "~/.cache", "huggingface")
    return Path(os.path.expandvars(home)).expanduser() / "hub", "XDG_CACHE_HOME" if env.get("XDG_CACHE_HOME") else "HF_HOME"


def hub_cache_dir() -> Path:
    """The Hugging Face hub cache, resolved the way huggingface_hub does it."""
    return _hub_cache_setting()[0]


def _unusable_because(folder: Path) -> str | None:
    """Why `folder` cannot hold our files (after trying to create it), or None when it can."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        pass  # something that is not a folder is there: said below
    except NotADirectoryError:
        above = next((p for p in folder.parents if p.exists() and not p.is_dir()), None)
        return f"{above} is a file, not a folder" if above else "a part of the path is not a folder"
    except OSError as exc:
        return exc.strerror or str(exc)
    try:
        mode = folder.stat().st_mode
    except OSError as exc:
        return exc.strerror or str(exc)
    if not stat.S_ISDIR(mode):
        return "it is a device, not a folder" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "it is a file, not a folder"
    if not os.access(folder, os.W_OK | os.X_OK):
        return "permission denied"
    return None


def usable_cache_dir() -> Path:
    """`cache_dir()`, created if needed; a one-line StableSRError naming the variable when it cannot be used."""
    folder = cache_dir()
    problem = _unusable_because(folder)
    if problem is not None:
        if os.environ.get(CACHE_VARIABLE):
            where = f"{CACHE_VARIABLE}={os.environ[CACHE_VARIABLE]}"
        else:
            where = f"the weights cache {folder} ({CACHE_VARIABLE} is not set)"
        raise StableSRError(
            f"{where}: cannot hold converted weights ({problem}); set {CACHE_VARIABLE} to a folder you can write to"
        )
    return folder


def usable_hub_cache_dir() -> Path:
    """`hub_cache_dir()`, created if needed; a one-line StableSRError naming its variable when unusable."""
    folder, variable = _hub_cache_setting()
    problem = _unusable_because(folder)
    if problem is not None:
        value = os.environ.get(variable)
        where = f"{variable}={value}" if value else f"the download cache {folder}"
        raise StableSRError(f"{where}: cannot hold downloads ({problem}); set {variable} to a folder you can write to")
    return folder


def converted_dir(spec: FileSpec) -> Path:
    return cache_dir() / "converted" / spec.stem


def file_lock(name: str):
    """A lock across processes, so that one converter works on a file while the others wait."""
    from filelock import FileLock  # a huggingface_hub dependency

    locks = usable_cache_dir() / ".locks"
    try:
        locks.mkdir(exist_ok=True)
    except OSError as exc:
        raise StableSRError(f"{locks}: cannot create the lock folder ({exc.strerror or exc}); check {CACHE_VARIABLE}") from None
    return FileLock(str(locks / f"{name}.lock"))


def _env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def is_offline(offline: bool = False) -> bool:
    """Offline when asked, or when STABLESR_OFFLINE or HF_HUB_OFFLINE is set."""
    return offline or _env_true("STABLESR_OFFLINE") or _env_true("HF_HUB_OFFLINE")


def endpoint() -> str | None:
    """HF_ENDPOINT (a mirror of the Hub), when set."""
    value = os.environ.get("HF_ENDPOINT", "").strip().rstrip("/")
    return value or None


def file_url(spec: FileSpec) -> str:
    """Where `spec` is fetched from now (honours HF_ENDPOINT)."""
    base = endpoint() or "https://huggingface.co"
    return f"{base}/{spec.hf_repo}/resolve/{spec.hf_revision}/{spec.filename}"
