"""One way to write a file so that readers see the old file or the whole new one, never a part.

Every file we produce (images, converted weights, cache stamps) goes through `atomic_write`: a hidden
temporary beside the target, written, flushed and fsynced, renamed over the target, then the folder
fsynced so the rename itself survives a power cut. On any failure (encoder error, full disk,
Ctrl-C, SIGTERM) the temporary is removed. A run killed with SIGKILL cannot clean up, so temporaries
carry the writer's process id, and `remove_stale_temporaries` deletes those whose process is gone.

Standard library only: the CLI imports this without torch.
"""

from __future__ import annotations

import errno
import os
import re
import secrets
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from .errors import OutputPathError

_TEMPORARY = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)-[0-9a-f]{8}\.stablesr\.tmp$")


def atomic_write(path: Path, write: Callable[[BinaryIO], None], *, what: str = "file") -> None:
    """Write `path` through `write(stream)`, atomically; errors become one-line `OutputPathError`s."""
    with _replacing(Path(path), what) as (temporary, descriptor):
        with os.fdopen(descriptor, "wb") as stream:
            write(stream)
            stream.flush()
            os.fsync(stream.fileno())


def atomic_write_via_path(path: Path, write_to: Callable[[Path], None], *, what: str = "file") -> None:
    """Like `atomic_write`, for writers that insist on a file name (safetensors' `save_file`).

    The temporary is created first with the usual permissions (0666 minus umask), and those are put
    back after `write_to`, which may recreate the file with its own (safetensors uses 0600).
    """
    with _replacing(Path(path), what) as (temporary, descriptor):
        os.close(descriptor)
        mode = temporary.stat().st_mode & 0o7777
        write_to(temporary)
        os.chmod(temporary, mode)
        with open(temporary, "rb+") as stream:
            os.fsync(stream.fileno())


@contextmanager
def _replacing(path: Path, what: str) -> Iterator[tuple[Path, int]]:
    """A fresh temporary beside `path` for the block to fill; renamed over `path` when the block
    ends, removed when it fails (OSErrors become one-line `OutputPathError`s)."""
    if path.is_dir():
        raise OutputPathError(f"{path}: is a folder; give an output file name")
    temporary, descriptor = _create_temporary(path, what)
    try:
        yield temporary, descriptor
        os.replace(temporary, path)
    except BaseException as error:
        _unlink_quietly(temporary)
        if isinstance(error, OSError):
            raise output_error(path, error, what) from error
        raise
    sync_folder(path.parent)


def is_temporary_name(name: str) -> bool:
    """Whether `name` is one of our in-progress temporaries (never an input, never an output)."""
    return _TEMPORARY.match(name) is not None


def remove_stale_temporaries(folder: Path) -> list[Path]:
    """Delete temporaries in `folder` left by writers that no longer run (killed with SIGKILL, say).

    Temporaries of a live process, this one included, are left alone; returns what was removed.
    """
    removed: list[Path] = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        match = _TEMPORARY.match(entry.name)
        if match is None or not entry.is_file(follow_symlinks=False):
            continue
        if _process_alive(int(match["pid"])):
            continue
        try:
            os.unlink(entry.path)
            removed.append(Path(entry.path))
        except OSError:
            pass
    return removed


def sync_folder(folder: Path) -> None:
    """Make a rename in `folder` durable; best effort (not possible on every OS and filesystem)."""
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


def output_error(path: Path, error: OSError, what: str = "file") -> OutputPathError:
    """A one-line, actionable message for an OSError met while writing `path`."""
    folder = path.parent
    if isinstance(error, FileNotFoundError) and not folder.exists():
        return OutputPathError(f"{path}: folder {folder} does not exist; create it or choose another output")
    if isinstance(error, NotADirectoryError) or error.errno == errno.ENOTDIR:
        return OutputPathError(f"{path}: {folder} is not a folder; choose another output path")
    if isinstance(error, PermissionError):
        return OutputPathError(f"{path}: permission denied in {folder}; choose a folder you can write to")
    if isinstance(error, IsADirectoryError):
        return OutputPathError(f"{path}: is a folder; give an output file name")
    if error.errno == errno.ENOSPC:
        return OutputPathError(f"{path}: no space left on the device; free some space and run again")
    reason = error.strerror or str(error) or type(error).__name__
    return OutputPathError(f"{path}: cannot write {what} ({reason})")


def _create_temporary(path: Path, what: str) -> tuple[Path, int]:
    """A new hidden file beside `path`, created with the usual permissions (0666 minus umask).

    Not tempfile.mkstemp: that creates 0600 files, and the output would keep those permissions.
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    while True:
        temporary = path.parent / f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.stablesr.tmp"
        try:
            return temporary, os.open(temporary, flags, 0o666)
        except FileExistsError:
            continue
        except OSError as error:
            raise output_error(path, error, what) from error


def _unlink_quietly(path: Path) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def _process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True  # someone else's live process (or an absurd number): not ours to judge
    except OSError:
        return True
    return True
