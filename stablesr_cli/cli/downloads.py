"""How the CLI shows the weights store at work: one line per step, byte progress per download.

Used by `stablesr weights download` and by `stablesr upscale` when a first use fetches a model.
On a terminal each download gets a bar; in a log (no terminal) a line at every tenth of the file.
"""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TaskID, TextColumn, TransferSpeedColumn

from .console import print_line

_SIZED = ("fetch", "verify", "found")
"""Events whose `total` is a file size worth showing next to the message."""
_LOG_STEP_UNKNOWN = 500_000_000
"""Without a terminal and without a known total: a line every this many bytes."""


def human_size(n: int | None) -> str:
    if n is None:
        return "size unknown"
    value = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{n} B"


class DownloadView:
    """A `store.WeightsEvent` callback that shows the events on `console` (standard error).

    `enabled=False` keeps it silent (--quiet); `style` colours the step lines (dim in `upscale`,
    where they are not the command's main output).
    """

    def __init__(self, console: Console, *, enabled: bool = True, style: str | None = None) -> None:
        self._console = console
        self._enabled = enabled
        self._style = style
        self._bars: Progress | None = None
        if enabled and console.is_terminal:
            self._bars = Progress(
                TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                console=console, transient=True,
            )  # fmt: skip
        self._tasks: dict[str, TaskID] = {}
        self._logged: dict[str, int] = {}
        """Without a terminal: file -> the last progress step printed."""

    def __enter__(self) -> "DownloadView":
        if self._bars is not None:
            self._bars.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bars is not None:
            self._bars.stop()

    def __call__(self, event) -> None:  # store.WeightsEvent
        if not self._enabled:
            return
        if event.kind == "progress":
            self._progress(event)
            return
        if event.message:
            size = f" ({human_size(event.total)})" if event.kind in _SIZED and event.total is not None else ""
            self._line(event.message + size)

    def _line(self, text: str) -> None:
        console = self._bars.console if self._bars is not None else self._console
        print_line(console, text, style=self._style)

    def _progress(self, event) -> None:
        if self._bars is not None:
            task = self._tasks.get(event.file)
            if task is None:
                task = self._tasks[event.file] = self._bars.add_task(event.file, total=event.total)
            self._bars.update(task, completed=event.done, total=event.total)
            return
        # a log: a line at each tenth of the file (or each 500 MB when the size is unknown)
        step = max(event.total // 10, 1) if event.total else _LOG_STEP_UNKNOWN
        reached = event.done // step
        if reached > self._logged.get(event.file, 0):
            self._logged[event.file] = reached
            of = f" of {human_size(event.total)} ({100 * event.done // event.total}%)" if event.total else ""
            self._line(f"{event.file}: {human_size(event.done)}{of}")
