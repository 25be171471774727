"""Run a planned batch on a backend and report every image to a sink.

The plan (cli/plan.py) stays pure data; this module hands its UPSCALE jobs to workers and turns
what they report into the CLI's per-image outcomes and progress. Backends, chosen by options:
- this process, one model, reading ahead and writing behind (the default, and any run with a
  single image or a pipe);
- one worker process per device on this machine (`--devices`, `--workers`), see local_pool.py;
- a Ray cluster (`--ray`), see ray_backend.py.
Images the plan already skips or fails are reported in their place in the plan's order.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Callable
from typing import ContextManager, Protocol

from ..atomic import remove_stale_temporaries
from ..cli.console import Outcome
from ..cli.batch import outcome_of_plan
from ..cli.plan import Action, Job, input_identities
from ..progress import ProgressEvent
from .devices import WorkerPlan
from .events import Event, Finished, Note, Started, Stepped
from .prefetch import IndexedJob, ListFeed, run_pipelined
from .work import ImageWorker, StandardStreams, WorkerSettings


class BatchSink(Protocol):
    """Where a run's reports go: the CLI's messages, JSON lines and progress bars."""

    def add(self, outcome: Outcome) -> None: ...

    def note(self, message: str) -> None: ...

    def start_image(self, label: str) -> None: ...

    def on_event(self, event: ProgressEvent) -> None: ...

    def finish_image(self) -> None: ...

    def weights_view(self) -> ContextManager[Callable[[object], None] | None]:
        """Shows downloads while the model loads in this process (first use)."""


@dataclass(frozen=True)
class Backend:
    workers: WorkerPlan = WorkerPlan(("auto",), (None,))
    ray_address: str | None = None
    """None: this machine; `local`, `auto` or `ray://host:port`: Ray."""
    ray_workers: int | None = None
    """Ray actors to start; None: one per GPU of the cluster, else one per node."""


class BatchRunner:
    def __init__(
        self,
        jobs: list[Job],
        settings: WorkerSettings,
        sink: BatchSink,
        backend: Backend = Backend(),
        streams: StandardStreams | None = None,
    ) -> None:
        self.jobs = jobs
        self.settings = dataclasses.replace(
            settings, inputs=input_identities(job.source for job in jobs if job.source is not None)
        )
        self.sink = sink
        self.backend = backend
        self.streams = streams
        self._reported_plan = 0
        """Jobs before this index whose plan-only outcome (skip, fail) has been reported."""

    def run(self) -> None:
        """Every job reported once. Raises KeyboardInterrupt (after stopping the workers),
        work.RunAborted when the model cannot be loaded, local_pool.WorkerCrashed on a worker's bug."""
        work = [(index, job) for index, job in enumerate(self.jobs) if job.action is Action.UPSCALE]
        try:
            if not work:
                pass
            elif self.backend.ray_address is not None:
                from .ray_backend import run_on_ray

                run_on_ray(largest_first(work), self.settings, self.backend, self.handle)
            elif self.backend.workers.count > 1 and len(work) > 1:
                from .local_pool import LocalPool

                LocalPool(self.backend.workers, self.settings, self.handle).run(largest_first(work))
            else:
                self._run_here(work)
        except KeyboardInterrupt:
            if self.backend.ray_address == "local" or self.backend.workers.count > 1:
                self._remove_temporaries(work)
            raise
        self._report_plan_until(len(self.jobs))

    def handle(self, event: Event) -> None:
        if isinstance(event, Started):
            self.sink.start_image(event.label)
        elif isinstance(event, Stepped):
            self.sink.on_event(event.event)
        elif isinstance(event, Finished):
            self._report_plan_until(event.index)
            self.sink.add(event.outcome)
            self.sink.finish_image()
        elif isinstance(event, Note):
            self.sink.note(event.message)

    def _run_here(self, work: list[IndexedJob]) -> None:
        # One image for several workers runs here too, with every core.
        plan = self.backend.workers
        settings = dataclasses.replace(self.settings, device=plan.devices[0], threads=plan.threads[0] if plan.count == 1 else None)
        worker = ImageWorker(settings, note=self.sink.note, streams=self.streams, weights_view=self.sink.weights_view)
        run_pipelined(ListFeed(work), worker, self.handle)

    def _report_plan_until(self, end: int) -> None:
        for job in self.jobs[self._reported_plan : end]:
            if job.action is not Action.UPSCALE:
                self.sink.add(outcome_of_plan(job))
        self._reported_plan = max(self._reported_plan, end)

    def _remove_temporaries(self, work: list[IndexedJob]) -> None:
        """Temporaries of workers killed while writing (their pids are gone). Only for workers on
        this machine: a process id says nothing about a writer on another node."""
        folders = {job.destination.parent for _, job in work if job.destination is not None}
        for folder in folders:
            remove_stale_temporaries(folder)


def largest_first(work: list[IndexedJob]) -> list[IndexedJob]:
    """Biggest images first, so a batch does not end with every worker idle but one."""
    return sorted(work, key=lambda item: -_pixels(item[1].source.path if item[1].source else None))


def _pixels(path: Path | None) -> int:
    """Width x height from the file's header (no decoding); 0 when unreadable (it fails fast anyway)."""
    if path is None:
        return 0
    from PIL import Image

    try:
        with Image.open(path) as image:
            return image.width * image.height
    except Exception:  # noqa: BLE001 - any unreadable file just sorts last
        return 0
