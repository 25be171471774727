"""What the store reports while it works; it never prints, callers decide how to show it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class WeightsEvent:
    """What the store is doing, for the CLI (or any caller) to show."""

    kind: str
    """'fetch' (a download starts), 'progress' (bytes), 'found' (already on disk), 'verify', 'convert',
    'ready', 'note' (something worth knowing, such as a file with no published hash)."""
    message: str
    file: str = ""
    done: int = 0
    """Bytes received so far ('progress')."""
    total: int | None = None
    """Bytes expected, when known ('fetch', 'progress', 'verify', 'found')."""


WeightsCallback = Callable[[WeightsEvent], None]


def silent(_: WeightsEvent) -> None:
    pass
