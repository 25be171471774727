"""Stopping a run from outside: Ctrl-C, SIGTERM, and what a SIGKILLed run left behind.

SIGTERM is what `kill`, systemd, Kubernetes and SLURM send before they resort to SIGKILL. It is
turned into an exception raised wherever the program is, exactly like Ctrl-C's KeyboardInterrupt,
so the same unwinding runs: the temporary file of the image in flight is removed, the summary is
printed, and the exit code tells the two apart (128 + the signal number, as shells report it).
A SIGKILLed run cannot clean up; its pid-stamped temporaries are removed by the next run that
writes into the same folder.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from ..atomic import remove_stale_temporaries

EXIT_INTERRUPTED = 128 + signal.SIGINT  # 130: Ctrl-C
EXIT_TERMINATED = 128 + signal.SIGTERM  # 143: kill, systemd, Kubernetes, SLURM


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the program happens to be. A KeyboardInterrupt, so every cleanup that
    Ctrl-C triggers (atomic writes, the run's summary) runs for it too."""


def exit_code_of(stop: KeyboardInterrupt) -> int:
    return EXIT_TERMINATED if isinstance(stop, Terminated) else EXIT_INTERRUPTED


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM raises `Terminated`; the previous handler comes back afterwards.

    Signal handlers can only be set from the main thread; elsewhere (a test runner's worker
    thread) SIGTERM keeps its previous behaviour.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def raise_terminated(signum: int, frame: object) -> None:
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def remove_temporaries_of_killed_runs(folders: Iterable[Path]) -> list[Path]:
    """Delete temporaries that earlier, killed runs left in the folders this run writes to."""
    removed: list[Path] = []
    for folder in sorted(set(folders)):
        removed.extend(remove_stale_temporaries(folder))
    return removed
