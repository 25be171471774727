"""Keep the device busy: decode the next image and encode the last one while the current one computes.

One reader thread and one writer thread beside the thread that runs the model. Image decoding and
encoding (Pillow, zlib, libjpeg) release the GIL, so they overlap the model's work; one thread each
keeps outputs written in order and memory bounded to three images (next, current, last).
Used by the CLI's own process and by every local worker process alike.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Protocol

from ..cli.plan import Job
from .events import Computed, Event, Finished, Started, Stepped
from .work import ImageWorker, Stage, outcome_of

IndexedJob = tuple[int, Job]


class NotYet:
    """Returned by a feed that has no job at hand right now but may have one later."""


NOT_YET = NotYet()


class JobFeed(Protocol):
    def take(self, *, wait: bool) -> IndexedJob | NotYet | None:
        """The next job; None once there are no more; NOT_YET when `wait` is false and none is at hand."""


class ListFeed:
    """A feed over a list known in advance (the single-process run)."""

    def __init__(self, jobs: list[IndexedJob]) -> None:
        self._jobs = deque(jobs)

    def take(self, *, wait: bool) -> IndexedJob | NotYet | None:
        return self._jobs.popleft() if self._jobs else None


@dataclass
class _Written:
    """An image on its way out: its outcome is known once the write is done. Images that failed
    earlier wait in the same queue (already resolved), so outcomes keep the order of the jobs."""

    index: int
    job: Job
    stages: list[Stage]
    future: Future[Stage]

    def outcome(self) -> Finished:
        return Finished(self.index, outcome_of(self.job, [*self.stages, self.future.result()]))


def run_pipelined(feed: JobFeed, worker: ImageWorker, emit: Callable[[Event], None]) -> None:
    """Run every job of `feed` through `worker`, emitting Started, Stepped and Finished events.

    Events are emitted from the calling thread only. A job's Finished comes after its file is
    complete. On an exception (Ctrl-C included) the writes already under way are finished and
    reported before it propagates: those outputs are whole, and nothing half-written is left.
    """
    with ThreadPoolExecutor(1, "stablesr-read") as reader, ThreadPoolExecutor(1, "stablesr-write") as writer:
        writes: deque[_Written] = deque()

        def report_writes(*, wait: bool) -> None:
            while writes and (wait or writes[0].future.done()):
                emit(writes.popleft().outcome())

        try:
            current = feed.take(wait=True)
            reading = reader.submit(worker.read, current[1]) if isinstance(current, tuple) else None
            while isinstance(current, tuple):
                index, job = current
                following = feed.take(wait=False)
                next_reading = reader.submit(worker.read, following[1]) if isinstance(following, tuple) else None
                read = reading.result()  # type: ignore[union-attr]
                report_writes(wait=False)
                if read.error is not None:
                    writes.append(_Written(index, job, [], _resolved(read)))  # reported in its turn
                    report_writes(wait=False)
                else:
                    emit(Started(index, job.label))
                    progress = _stepper(index, emit) if worker.settings.progress else None
                    computed = worker.compute(job, read.value, progress)  # type: ignore[arg-type]
                    if computed.error is not None:
                        writes.append(_Written(index, job, [read], _resolved(computed)))
                        report_writes(wait=False)
                    else:
                        emit(Computed(index))
                        future = writer.submit(worker.write, job, computed.value)  # type: ignore[arg-type]
                        writes.append(_Written(index, job, [read, computed], future))
                    del computed
                del read
                if isinstance(following, NotYet):
                    following = feed.take(wait=False)  # it may have come while we computed
                    if isinstance(following, NotYet):
                        # Nothing queued: report what is being written before waiting, or whoever
                        # feeds us would wait for those results while we wait for it.
                        report_writes(wait=True)
                        following = feed.take(wait=True)
                    next_reading = reader.submit(worker.read, following[1]) if isinstance(following, tuple) else None
                current, reading = following, next_reading
            report_writes(wait=True)
        except BaseException:
            _finish_writes(writes, emit)
            raise


def _finish_writes(writes: deque[_Written], emit: Callable[[Event], None]) -> None:
    for written in writes:
        try:
            emit(written.outcome())
        except Exception:  # already failing; the first error is the one to show
            pass


def _resolved(stage: Stage) -> Future[Stage]:
    future: Future[Stage] = Future()
    future.set_result(stage)
    return future


def _stepper(index: int, emit: Callable[[Event], None]) -> Callable:
    return lambda event: emit(Stepped(index, event))
