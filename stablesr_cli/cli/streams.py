"""Writing to standard output, standard error and the --json-file when they fail.

A reader that goes away (`stablesr upscale - < a.png | head -c 10`) is not an error to report:
shell tools then stop quietly, and the shell reports 141 (128 + SIGPIPE) for them; we exit with
the same code and print nothing. Any other write error (a full disk, `> /dev/full`) is one line
naming the stream.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import BinaryIO, NoReturn

from ..errors import OutputPathError, StableSRError

EXIT_CLOSED_PIPE = 128 + signal.SIGPIPE  # 141


class ReaderGone(Exception):
    """The reader of standard output (or standard error) closed its end of the pipe."""


class LogWriteError(StableSRError):
    """The --json lines cannot be written: the run's record would be incomplete, so it stops."""


def write_image_bytes(stream: BinaryIO, data: bytes) -> None:
    """Write an encoded image to standard output; `ReaderGone` or a one-line `OutputPathError`."""
    try:
        remaining = memoryview(data)
        while remaining:
            # A large write into a pipe can return short (when the reader closes, the kernel reports
            # what it took before EPIPE, and BufferedWriter passes that on): write the rest, which
            # then fails properly instead of leaving a silently truncated image.
            written = stream.write(remaining)
            remaining = remaining[len(remaining) if written is None else written :]
        stream.flush()
    except BrokenPipeError as error:
        silence_standard_streams()
        raise ReaderGone() from error
    except OSError as error:
        silence_standard_streams(stderr=False)  # what is left in the buffer must not fail again at exit
        raise OutputPathError(f"standard output: cannot write the image ({error.strerror or error})") from error


def stop_quietly() -> NoReturn:
    """A reader of standard output or error went away: end the command as shell tools do."""
    silence_standard_streams()
    raise SystemExit(EXIT_CLOSED_PIPE)


def log_write_error(name: str, error: OSError) -> LogWriteError:
    return LogWriteError(f"{name}: cannot write the JSON lines ({error.strerror or error}); stopping the run")


@contextmanager
def quiet_when_reader_gone() -> Iterator[None]:
    """Around the whole command: a closed pipe anywhere (stdout or stderr) ends it quietly with 141."""
    try:
        yield
    except BrokenPipeError:
        silence_standard_streams()
        sys.exit(EXIT_CLOSED_PIPE)
    except ReaderGone:
        sys.exit(EXIT_CLOSED_PIPE)


def silence_standard_streams(*, stderr: bool = True) -> None:
    """Point standard output (and error) at /dev/null, so the interpreter's final flush of what is
    still buffered does not raise a second, confusing error."""
    targets = [(sys.stdout, 1)] + ([(sys.stderr, 2)] if stderr else [])
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        for stream, descriptor in targets:
            if not _has_fileno(stream):  # a test runner's in-memory stream: nothing to silence
                continue
            try:
                os.dup2(devnull, descriptor)
            except OSError:
                pass
    finally:
        os.close(devnull)


def _has_fileno(stream: object) -> bool:
    try:
        stream.fileno()  # type: ignore[attr-defined]
    except (AttributeError, OSError, ValueError):
        return False
    return True
