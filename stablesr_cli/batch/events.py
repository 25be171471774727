"""What workers tell the runner, as small picklable records (they cross process boundaries)."""

from __future__ import annotations

from dataclasses import dataclass

from ..cli.console import Outcome
from ..progress import ProgressEvent


@dataclass(frozen=True)
class Started:
    """A worker began computing job `index` (its input is decoded)."""

    index: int
    label: str


@dataclass(frozen=True)
class Computed:
    """The model is done with job `index`; what is left is writing its file."""

    index: int


@dataclass(frozen=True)
class Stepped:
    """Progress within job `index`."""

    index: int
    event: ProgressEvent


@dataclass(frozen=True)
class Finished:
    """Job `index` is done, skipped or failed; its output (if any) is complete on disk."""

    index: int
    outcome: Outcome


@dataclass(frozen=True)
class Note:
    """A message about the run itself (model download, model loaded)."""

    message: str


@dataclass(frozen=True)
class Loaded:
    """A worker process has its model and takes jobs."""

    worker: int


@dataclass(frozen=True)
class Aborted:
    """A worker cannot load the model: the whole run ends with this error."""

    subject: str
    problem: str
    exit_code: int


@dataclass(frozen=True)
class Crashed:
    """A worker met an unexpected error (a bug); the run ends and shows its traceback."""

    label: str
    traceback: str


Event = Started | Computed | Stepped | Finished | Note | Loaded | Aborted | Crashed
