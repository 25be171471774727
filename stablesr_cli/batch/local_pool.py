"""One worker process per device on this machine, each holding one loaded model.

Jobs are handed out as workers become free (the runner orders them largest first); a busy worker
also holds the next images so it can decode one while computing the current one, except near the
end of the batch, where no job waits behind a busy worker. A worker that dies (out of memory,
killed) fails only the image it was working on; it is restarted and the batch goes on. Ctrl-C or
SIGTERM stops every worker: each finishes the file it is writing, so no temporary file is left.

Processes are spawned, not forked: a fresh interpreter per worker is the only safe way to get a
CUDA context per device, and the same code path then serves CPU workers.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import time
import traceback
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess

from ..atomic import remove_stale_temporaries
from ..cli.console import Outcome, Status
from .devices import WorkerPlan
from ..cli.plan import Job
from .events import Aborted, Computed, Crashed, Event, Finished, Loaded, Note, Started
from .prefetch import NOT_YET, IndexedJob, NotYet, run_pipelined
from .work import ImageWorker, RunAborted, WorkerSettings

STOP_GRACE_SECONDS = 30.0
"""How long stopped workers get to finish the file they are writing before they are killed."""
WAITING_PER_WORKER = 2
"""Jobs a busy worker holds besides the one it computes: one being decoded, one in its pipe, so
that the next decode can begin as soon as a compute does (a worker learns of a job only between images)."""
FAILED_STARTS_LIMIT = 2
"""A worker that dies this many times in a row before its model is loaded ends the run."""


class WorkerCrashed(RuntimeError):
    """A worker met an unexpected error (a bug): shown with the worker's traceback."""


# ---------------------------------------------------------------- inside a worker process


class _Stopped(BaseException):
    """SIGTERM from the parent: stop after finishing the writes under way."""


def _raise_stopped(signum: int, frame: object) -> None:
    raise _Stopped()


class _ConnectionFeed:
    def __init__(self, connection: Connection) -> None:
        self.connection = connection

    def take(self, *, wait: bool) -> IndexedJob | NotYet | None:
        if not wait and not self.connection.poll():
            return NOT_YET
        return self.connection.recv()  # None: no more jobs


def worker_main(settings: WorkerSettings, connection: Connection) -> None:
    """A worker process: load the model, then run the jobs the parent sends until it sends None."""
    # Ctrl-C in a terminal reaches the whole process group; only the parent decides what to do.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    signal.signal(signal.SIGTERM, _raise_stopped)
    worker = ImageWorker(settings, note=lambda message: connection.send(Note(message)))
    try:
        worker.load()
        connection.send(Loaded(os.getpid()))
        run_pipelined(_ConnectionFeed(connection), worker, connection.send)
    except RunAborted as aborted:
        connection.send(Aborted(aborted.subject, aborted.problem, aborted.exit_code))
    except (_Stopped, EOFError, BrokenPipeError):
        pass  # stopped by the parent, or the parent is gone
    except Exception:
        connection.send(Crashed("", traceback.format_exc()))


# ---------------------------------------------------------------- in the parent


@dataclass
class _Slot:
    number: int
    device: str
    threads: int | None
    process: BaseProcess | None = None
    connection: Connection | None = None
    held: list[int] = field(default_factory=list)
    """Jobs sent to this worker and not finished, in the order sent."""
    started: set[int] = field(default_factory=set)
    computed: set[int] = field(default_factory=set)
    """Started jobs whose compute is done: only their file was being written."""
    sent_at: dict[int, float] = field(default_factory=dict)
    loaded: bool = False
    failed_starts: int = 0

    @property
    def alive(self) -> bool:
        return self.process is not None and self.connection is not None

    @property
    def waiting(self) -> list[int]:
        return [index for index in self.held if index not in self.started]


class LocalPool:
    def __init__(self, plan: WorkerPlan, settings: WorkerSettings, handle: Callable[[Event], None]) -> None:
        self.settings = settings
        self.handle = handle
        self.slots = [_Slot(n, device, threads) for n, (device, threads) in enumerate(zip(plan.devices, plan.threads))]
        self.context = multiprocessing.get_context("spawn")
        self.jobs: dict[int, Job] = {}
        self.queue: deque[IndexedJob] = deque()
        self.remaining: set[int] = set()
        self.retried: set[int] = set()

    def run(self, jobs: list[IndexedJob]) -> None:
        """Run `jobs` in this order of hand-out; returns when every one has a Finished event."""
        self.jobs = dict(jobs)
        self.queue = deque(jobs)
        self.remaining = {index for index, _ in jobs}
        finished_normally = False
        with _sigterm_as_interrupt():
            try:
                # The first worker alone first: if weights must be downloaded, one process does it.
                self._start(self.slots[0])
                while self.remaining:
                    self._dispatch()
                    self._pump(timeout=None)
                finished_normally = True
            finally:
                self._shutdown(graceful=finished_normally)

    # ------------------------------------------------------------ processes

    def _start(self, slot: _Slot) -> None:
        parent_end, child_end = self.context.Pipe()
        settings = self.settings.for_worker(slot.device, slot.threads)
        process = self.context.Process(
            target=worker_main, args=(settings, child_end), name=f"stablesr-worker-{slot.number}", daemon=True
        )
        # Block Ctrl-C while the child is created, so it inherits a blocked SIGINT and cannot be
        # interrupted while it imports; the worker ignores it and unblocks it first thing.
        previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            process.start()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, previous)
        child_end.close()
        slot.process, slot.connection = process, parent_end
        slot.held, slot.started, slot.computed, slot.sent_at, slot.loaded = [], set(), set(), {}, False

    def _dispatch(self) -> None:
        """Keep each worker fed: one job to start with, and while the queue outlasts the workers,
        up to two not yet begun (the one it decodes during the current compute, and the next)."""
        given = True
        while given and self.queue:
            given = False
            for slot in self.slots:
                if not (self.queue and slot.alive and slot.loaded):
                    continue
                if not slot.held or (len(slot.waiting) < WAITING_PER_WORKER and len(self.queue) >= len(self.slots)):
                    index, job = self.queue.popleft()
                    slot.held.append(index)
                    slot.sent_at[index] = time.time()
                    self._send(slot, (index, job))
                    given = True

    def _send(self, slot: _Slot, message: object) -> None:
        try:
            slot.connection.send(message)  # type: ignore[union-attr]
        except (BrokenPipeError, OSError):
            pass  # the worker died; its sentinel tells us next

    def _pump(self, timeout: float | None) -> None:
        live = [slot for slot in self.slots if slot.alive]
        watched: dict[object, tuple[_Slot, str]] = {}
        for slot in live:
            watched[slot.connection] = (slot, "message")
            watched[slot.process.sentinel] = (slot, "exit")  # type: ignore[union-attr]
        for ready in wait(list(watched), timeout):
            slot, what = watched[ready]
            if what == "message":
                self._receive_all(slot)
            elif slot.alive:
                self._on_exit(slot)

    def _receive_all(self, slot: _Slot) -> None:
        connection = slot.connection
        try:
            while connection is not None and slot.connection is connection and connection.poll():
                self._receive(slot, connection.recv())
        except (EOFError, OSError):
            pass  # the worker is gone; its sentinel tells us next

    def _receive(self, slot: _Slot, event: Event) -> None:
        if isinstance(event, Loaded):
            slot.loaded, slot.failed_starts = True, 0
            for other in self.slots:
                if other.process is None and self.remaining:
                    self._start(other)
        elif isinstance(event, Started):
            slot.started.add(event.index)
            self.handle(event)
        elif isinstance(event, Computed):
            slot.computed.add(event.index)
        elif isinstance(event, Finished):
            if event.index in slot.held:
                slot.held.remove(event.index)
            slot.started.discard(event.index)
            self.remaining.discard(event.index)
            self.handle(event)
        elif isinstance(event, Aborted):
            raise RunAborted(event.subject, event.problem, event.exit_code)
        elif isinstance(event, Crashed):
            held = [self.jobs[i].label for i in slot.held if i in slot.started]
            where = f" on {', '.join(held)}" if held else ""
            raise WorkerCrashed(f"worker on {slot.device} failed{where}:\n{event.traceback}")
        else:
            self.handle(event)

    def _on_exit(self, slot: _Slot) -> None:
        """A worker died: fail the image it was computing, settle the ones it was writing, requeue
        those it had not begun, and restart it."""
        self._receive_all(slot)  # results it sent before dying still count
        process = slot.process
        assert process is not None
        process.join(timeout=5)
        cause = _describe_exit(process.exitcode)
        slot.connection.close()  # type: ignore[union-attr]
        slot.process, slot.connection = None, None
        again = [i for i in slot.held if i not in slot.started]
        for index in [i for i in slot.held if i in slot.started]:
            job = self.jobs[index]
            _remove_temporaries_of(job)
            if index not in slot.computed:
                problem = f"the worker on {slot.device} died while upscaling this image ({cause}); the rest of the batch went on"
                self._settle(index, Outcome(job.label, job.destination_label, Status.FAILED, error=problem))
            elif (written := _written_since(job, slot.sent_at.get(index, 0.0))) is not None:
                self._settle(index, written)  # the rename happened; only the report was lost
            elif index not in self.retried:
                self.retried.add(index)
                again.append(index)  # its write was cut short: compute it again
            else:
                problem = f"the worker on {slot.device} died twice while writing this image ({cause})"
                self._settle(index, Outcome(job.label, job.destination_label, Status.FAILED, error=problem))
        for index in reversed(again):
            self.queue.appendleft((index, self.jobs[index]))
        if not slot.loaded:
            slot.failed_starts += 1
            if slot.failed_starts >= FAILED_STARTS_LIMIT:
                raise RunAborted(self.settings.model, f"the worker on {slot.device} died while loading the model ({cause})", 1)
        if self.remaining:
            self._start(slot)

    def _settle(self, index: int, outcome: Outcome) -> None:
        self.remaining.discard(index)
        self.handle(Finished(index, outcome))

    def _shutdown(self, *, graceful: bool) -> None:
        live = [slot for slot in self.slots if slot.alive]
        for slot in live:
            if graceful:
                self._send(slot, None)
            else:
                slot.process.terminate()  # type: ignore[union-attr]  # SIGTERM: finish the write, then exit
        deadline = time.monotonic() + STOP_GRACE_SECONDS
        while any(slot.alive and slot.process.is_alive() for slot in live) and time.monotonic() < deadline:  # type: ignore[union-attr]
            with contextlib.suppress(Exception):
                self._drain(live, timeout=0.2)
        for slot in live:
            if slot.process is not None and slot.process.is_alive():
                slot.process.kill()
            if slot.process is not None:
                slot.process.join(timeout=5)
            for index in slot.held:
                _remove_temporaries_of(self.jobs[index])
            if slot.connection is not None:
                slot.connection.close()
            slot.process, slot.connection = None, None

    def _drain(self, slots: list[_Slot], timeout: float) -> None:
        """While stopping: take in the results of writes that complete (no restarts, no new jobs)."""
        connections = {slot.connection: slot for slot in slots if slot.alive}
        for ready in wait(list(connections), timeout):
            slot = connections[ready]
            try:
                while ready.poll():  # type: ignore[union-attr]
                    event = ready.recv()  # type: ignore[union-attr]
                    if isinstance(event, Finished):
                        self._receive(slot, event)
            except (EOFError, OSError):
                slot.process.join(timeout=1)  # type: ignore[union-attr]


def _describe_exit(code: int | None) -> str:
    if code is not None and code < 0:
        name = signal.Signals(-code).name if -code in signal.Signals._value2member_map_ else str(-code)
        return f"killed by {name}" + (", perhaps out of memory" if name == "SIGKILL" else "")
    return f"exit code {code}" + (", perhaps out of memory" if code == 137 else "")


def _written_since(job: Job, since: float) -> Outcome | None:
    """The outcome of a job whose output file was renamed into place after `since` (writes are
    atomic, so an output that exists is whole), or None when there is no such file."""
    destination = job.destination
    try:
        if destination is None or destination.stat().st_mtime < since - 1.0:
            return None
        from PIL import Image

        with Image.open(destination) as output, Image.open(job.source.path) as source:  # type: ignore[union-attr]
            sizes = output.size, source.size
    except Exception:  # noqa: BLE001 - unreadable: treat as not written, it is done again
        return None
    return Outcome(job.label, job.destination_label, Status.DONE, size=sizes[0], input_size=sizes[1])


def _remove_temporaries_of(job: object) -> None:
    destination = getattr(job, "destination", None)
    if destination is not None:
        remove_stale_temporaries(destination.parent)


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM (a job scheduler's stop) ends the run like Ctrl-C, unless someone already handles it."""
    try:
        previous = signal.getsignal(signal.SIGTERM)
    except ValueError:
        yield
        return
    if previous not in (signal.SIG_DFL, None):
        yield
        return

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    try:
        signal.signal(signal.SIGTERM, interrupt)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
