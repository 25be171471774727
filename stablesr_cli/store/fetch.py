"""Put an official weights file on this machine and prove it is the published one.

Files are fetched with `huggingface_hub.hf_hub_download` into the shared Hugging Face cache
(`HF_ENDPOINT` mirrors, tokens, proxies, resumable and locked downloads all come from there), or
taken from a folder the user filled by hand. Each is checked, in this order, against the SHA-256
and size in our manifest, else against the SHA-256 the Hub publishes for LFS files, else (no hash
anywhere) accepted and reported as unverified.
"""

from __future__ import annotations

import logging
import socket
import urllib.request
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ..errors import ChecksumError, WeightsNotFoundError
from ..hashing import require_regular_file, sha256_file
from .events import WeightsCallback, WeightsEvent, silent
from .manifest import FileSpec, load_manifest
from .places import endpoint, file_url, hub_cache_dir, is_offline, usable_hub_cache_dir

CONNECT_TIMEOUT_S = 5.0
"""How long the reachability check waits for the server (or proxy) to accept a connection."""


@dataclass(frozen=True)
class FetchedFile:
    spec: FileSpec
    path: Path
    sha256: str
    verified_by: str | None
    """'manifest' (our recorded SHA-256), 'hub' (the Hub's LFS SHA-256) or None (nothing to compare with)."""


class HubUnreachableError(WeightsNotFoundError):
    """The download server (or the proxy in front of it) does not accept connections."""


def _model_of(spec: FileSpec) -> str:
    names = load_manifest().models_using(spec)
    return names[0] if names else "<model>"


def download_command(spec: FileSpec) -> str:
    return f"stablesr weights download {_model_of(spec)}"


# ---------------------------------------------------------------------------------------------- reachability


def _connect_target(url: str) -> tuple[str, int]:
    """The host and port a request for `url` connects to first: its proxy when one is configured."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    proxy = urllib.request.getproxies().get(parts.scheme)
    if proxy and not urllib.request.proxy_bypass(host):
        proxied = urlsplit(proxy if "://" in proxy else f"http://{proxy}")
        return proxied.hostname or "", proxied.port or (443 if proxied.scheme == "https" else 80)
    return host, parts.port or (443 if parts.scheme == "https" else 80)


def unreachable_reason(url: str, timeout: float = CONNECT_TIMEOUT_S) -> str | None:
    """Why no connection can be opened for `url` (refused, no such host, timed out), or None if it can.

    One TCP connect instead of huggingface_hub's five retries with backoff (24 s of warnings)."""
    host, port = _connect_target(url)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return None
    except socket.gaierror:
        return f"cannot resolve the host name {host}"
    except TimeoutError:
        return f"{host}:{port} did not answer within {timeout:g} s"
    except ConnectionRefusedError:
        return f"{host}:{port} refused the connection"
    except OSError as exc:
        return f"{host}:{port}: {exc.strerror or exc}"


def require_reachable(specs: Iterable[FileSpec], model: str) -> None:
    """Fail at once, in one line, when files must be downloaded and the server cannot be reached."""
    specs = list(specs)
    if not specs:
        return
    url = file_url(specs[0])
    reason = unreachable_reason(url)
    if reason is None:
        return
    known = sum(s.size or 0 for s in specs)
    unknown = any(s.size is None for s in specs)
    size = f"{'more than ' if unknown else ''}{known / 1e9:.1f} GB" if known else "size unknown"
    host = urlsplit(url).hostname
    raise HubUnreachableError(
        f"cannot reach {host} ({reason}) to download {', '.join(s.filename for s in specs)} ({size}); "
        f"copy them from a machine with Internet access into a folder DIR and run "
        f"`stablesr weights download {model} --from-dir DIR`, or set HF_ENDPOINT to a mirror"
    )


# ---------------------------------------------------------------------------------------------- verification


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


def remove_cached(path: Path) -> None:
    """Remove a bad download (the snapshot link and its blob) so the next attempt fetches it again."""
    blob = path.resolve()
    for p in (path, blob):
        try:
            p.unlink()
        except OSError:
            pass


def source_problem(spec: FileSpec, path: Path, *, downloaded: bool) -> tuple[str, str | None, str | None]:
    """(actual SHA-256, how it was verified, what is wrong or None) for one official file."""
    actual = sha256_file(path)
    if spec.sha256:
        expected, where, by = spec.sha256, "our manifest", "manifest"
    else:
        expected, where, by = (_hub_lfs_sha256(path) if downloaded else None), "the Hub's published LFS hash", "hub"
    if expected is None:
        return actual, None, None
    if actual != expected:
        return actual, by, f"SHA-256 {actual} does not match {expected} from {where} for {spec.filename}"
    return actual, by, None


def verify_source(spec: FileSpec, path: Path, *, downloaded: bool, on_event: WeightsCallback) -> FetchedFile:
    """Check one official file; a mismatch raises ChecksumError (and a bad download is removed)."""
    size = require_regular_file(path)
    if spec.size is not None and size != spec.size:
        problem = f"{size} bytes, our manifest records {spec.size} for {spec.filename}"
        actual = None
    else:
        on_event(WeightsEvent("verify", f"checking the SHA-256 of {spec.filename}", file=spec.filename, total=size))
        actual, by, problem = source_problem(spec, path, downloaded=downloaded)
    if problem is None:
        if by is None:
            on_event(WeightsEvent("note", f"{spec.filename}: no published SHA-256 to check it against; used unverified", file=spec.filename))
        elif by == "hub":
            on_event(WeightsEvent("note", f"{spec.filename}: our manifest records no SHA-256; checked against the Hub's hash only", file=spec.filename))
        return FetchedFile(spec, path, actual, by)
    if downloaded:
        remove_cached(path)
        action = "it was removed from the cache; download again, or report it if this repeats"
    else:
        action = "it was not used; replace the file with an intact copy"
    raise ChecksumError(f"{path}: {problem}; {action}")


# ---------------------------------------------------------------------------------------------- download


class _ProgressBar:
    """Stands in for the tqdm bar huggingface_hub drives, forwarding byte counts to `on_event`.

    huggingface_hub accepts any class that "mimics" tqdm: it is constructed with total/initial/desc,
    used as a context manager and fed through update(n). Its creation means a real transfer starts.
    """

    on_event: WeightsCallback = silent
    spec: FileSpec  # set by _bar_class on each per-download subclass

    def __init__(self, *args: Any, total: int | None = None, initial: int = 0, **kwargs: Any) -> None:
        self.total = total
        self.n = initial
        spec = self.spec
        self.on_event(WeightsEvent(
            "fetch", f"downloading {spec.filename} from {file_url(spec)} into {hub_cache_dir()}",
            file=spec.filename, done=initial, total=total,
        ))  # fmt: skip

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


@contextmanager
def _hub_warnings_silenced() -> Iterator[None]:
    """huggingface_hub logs each retry as a warning; our own error line says what went wrong."""
    logger = logging.getLogger("huggingface_hub")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def cached_download(spec: FileSpec) -> Path | None:
    """The file in the Hugging Face cache, if there (a pure file-system lookup)."""
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(spec.hf_repo, spec.filename, cache_dir=str(hub_cache_dir()), revision=spec.hf_revision)
    return Path(found) if isinstance(found, str) else None


def _from_folder(spec: FileSpec, folder: str | Path, on_event: WeightsCallback) -> FetchedFile:
    path = Path(folder).expanduser() / spec.filename
    if not path.exists():
        where = spec.urls[0] if spec.urls else spec.hf_repo
        raise WeightsNotFoundError(f"{path}: not found; copy {spec.filename} there (from {where}) or drop --from-dir")
    size = require_regular_file(path)
    on_event(WeightsEvent("found", f"using {path}", file=spec.filename, total=size))
    return verify_source(spec, path, downloaded=False, on_event=on_event)


def fetch_file(
    spec: FileSpec, *, from_dir: str | Path | None = None, offline: bool = False, on_event: WeightsCallback | None = None
) -> FetchedFile:
    """Put one official file on this machine and check it: from `from_dir`, the HF cache or the Hub.

    A file whose SHA-256 does not match raises ChecksumError and is never returned.
    """
    on_event = on_event or silent
    if from_dir is not None:
        return _from_folder(spec, from_dir, on_event)
    # A pure file-system lookup first: even hf_hub_download(local_files_only=True) may touch the
    # network, and a file already here is checked against our hashes all the same.
    cached = cached_download(spec)
    if cached is not None:
        on_event(WeightsEvent("found", f"using {cached}", file=spec.filename, total=cached.stat().st_size))
        return verify_source(spec, cached, downloaded=True, on_event=on_event)
    if is_offline(offline):
        raise WeightsNotFoundError(
            f"{spec.filename} is not on this machine and offline mode is on; fetch it with `{download_command(spec)}` "
            f"(online), or copy it into a folder DIR and run `{download_command(spec)} --from-dir DIR`"
        )
    usable_hub_cache_dir()
    require_reachable([spec], _model_of(spec))
    return verify_source(spec, _hub_download(spec, on_event), downloaded=True, on_event=on_event)


def _hub_download(spec: FileSpec, on_event: WeightsCallback) -> Path:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        GatedRepoError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    url = file_url(spec)
    retry = f"run `{download_command(spec)}` again to resume"
    try:
        with _hub_warnings_silenced():
            local = hf_hub_download(
                repo_id=spec.hf_repo, filename=spec.filename, revision=spec.hf_revision,
                cache_dir=str(hub_cache_dir()), endpoint=endpoint(), tqdm_class=_bar_class(spec, on_event),
            )  # fmt: skip
    except LocalEntryNotFoundError:
        raise WeightsNotFoundError(
            f"{spec.filename}: cannot reach {url}; check the connection (or set HF_ENDPOINT to a mirror), "
            f"or copy the file into a folder DIR and run `{download_command(spec)} --from-dir DIR`"
        ) from None
    except GatedRepoError:
        raise WeightsNotFoundError(f"{spec.filename}: {spec.hf_repo} needs access rights; log in with `hf auth login`") from None
    except (RepositoryNotFoundError, RevisionNotFoundError, EntryNotFoundError):
        raise WeightsNotFoundError(
            f"{spec.filename}: not found at {url}; the file may have moved (see {', '.join(spec.mirror_pages) or spec.hf_repo}) "
            f"- download it by hand and run `{download_command(spec)} --from-dir DIR`"
        ) from None
    except (OSError, ValueError) as exc:  # network failures after retries, full disk, size mismatch
        raise WeightsNotFoundError(f"{spec.filename}: download from {url} failed ({exc}); {retry}") from None
    except Exception as exc:  # httpx errors (proxy, TLS, protocol) have no common base we can name without importing httpx
        raise WeightsNotFoundError(f"{spec.filename}: download from {url} failed ({type(exc).__name__}: {exc}); {retry}") from None
    return Path(local)
