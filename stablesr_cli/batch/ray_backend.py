"""`--ray [ADDRESS]`: the same plan on a Ray cluster, scheduled, retried and moved by Ray Data.

The dataset is the list of images as paths (one row each, with its planned job); `map_batches`
runs them through a pool of actors, one per GPU (`num_gpus=1`) or, on a cluster without GPUs, one
per node holding that node's cores; each actor loads the model once. Actors read inputs and write
outputs themselves through the same atomic writer, so SRC and DST must be on a filesystem every
node sees (NFS, a shared mount); the driver only receives each image's outcome, streamed back as
images finish, for the progress, the summary and --json. An image that fails is reported, never
retried; an image whose actor died (killed, out of memory) is retried once on a fresh actor.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import pickle
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pathlib import Path

from ..cli.console import Outcome, Status
from ..cli.plan import Job, identity
from ..errors import OptionError
from .events import Event, Finished, Note
from .prefetch import IndexedJob
from .work import CRASH_HOOK, CRASH_ONCE_MARKER, ImageWorker, RunAborted, WorkerSettings

if TYPE_CHECKING:
    from .runner import Backend

INSTALL_HINT = 'pip install "stablesr[ray]"'
LOCAL = "local"
"""--ray with no address: a Ray instance on this machine, started for this run and stopped after."""
ACTOR_RETRIES = 1
"""Times an image is tried again after its actor died under it."""


def parse_ray_address(text: str) -> str:
    """`local`, `auto`, `ray://host:port` or `host:port`; anything else is a usage error."""
    address = text.strip()
    if _looks_like_address(address):
        return address
    raise OptionError(
        f"--ray {text!r} is not a Ray address; use --ray alone (a local Ray), --ray auto, or --ray ray://HOST:PORT "
        "(put the INPUT arguments before --ray)"
    )


def split_ray_address(inputs: list[str]) -> tuple[list[str], str]:
    """`--ray [ADDRESS]`: Typer options cannot take an optional value, so `--ray` is a flag and an
    address typed after it arrives among the INPUT arguments. It is told apart by its form (local,
    auto, ray://HOST:PORT, HOST:PORT) and by not being an existing file. Returns (inputs, address)."""
    addresses = [a for a in inputs if _looks_like_address(a) and not Path(a).exists()]
    if len(addresses) > 1:
        raise OptionError(f"--ray takes one address, got {', '.join(addresses)}")
    if not addresses:
        return inputs, LOCAL
    rest = [a for a in inputs if a != addresses[0]]
    if not rest:
        raise OptionError("no INPUT given; usage: stablesr upscale SRC -o DST --ray [ADDRESS]")
    return rest, parse_ray_address(addresses[0])


def _looks_like_address(text: str) -> bool:
    if text in (LOCAL, "auto") or text.startswith("ray://"):
        return True
    host, _, port = text.rpartition(":")
    return bool(host) and port.isdigit() and "/" not in text


def require_ray() -> Any:
    """The `ray` module, or a one-line error saying how to install it."""
    try:
        import ray
        import ray.data  # noqa: F401 - the extra installs both; a bare `ray` lacks Ray Data
    except ImportError:
        raise OptionError(f"--ray needs Ray Data, which is not installed; install it with: {INSTALL_HINT}") from None
    return ray


def run_on_ray(work: list[IndexedJob], settings: WorkerSettings, backend: Backend, handle: Callable[[Event], None]) -> None:
    ray = require_ray()
    started_here = _connect(ray, backend.ray_address or LOCAL)
    try:
        resources = ray.cluster_resources()
        actors, per_actor, threads = _actor_shape(ray, resources, backend.ray_workers, len(work))
        handle(Note(f"Ray: {actors} actor(s), each with {_describe(per_actor)}"))
        _stream(ray, work, dataclasses.replace(settings, threads=threads, may_crash=True), actors, per_actor, handle)
    finally:
        if started_here:
            ray.shutdown()


def _connect(ray: Any, address: str) -> bool:
    """Join (or start) Ray; True when this run started it and must stop it."""
    if ray.is_initialized():
        return False  # a Python caller (or a test) already holds a Ray session: use it
    # --json consumers read standard error: keep Ray's Python chatter off it. Its C++ core still
    # logs the odd line there, which is why the README suggests --json-file with --ray.
    for name in ("ray", "ray.data"):
        logging.getLogger(name).setLevel(logging.ERROR)
    quiet = {"include_dashboard": False, "log_to_driver": False, "logging_level": logging.ERROR}
    if address == LOCAL:
        ray.init(**quiet)
    else:
        ray.init(address=address, **quiet)
    return True


def _actor_shape(ray: Any, resources: dict[str, float], wanted: int | None, images: int) -> tuple[int, dict[str, float], int | None]:
    gpus = int(resources.get("GPU", 0))
    cpus = int(resources.get("CPU", 1))
    if gpus:
        count = min(wanted or gpus, images)
        return count, {"num_gpus": 1}, None
    nodes = [node for node in ray.nodes() if node.get("Alive")]
    count = min(wanted or max(1, len(nodes)), images)
    share = max(1, cpus // max(1, wanted or len(nodes) or 1))
    return count, {"num_cpus": share}, share


def _describe(per_actor: dict[str, float]) -> str:
    return "1 GPU" if "num_gpus" in per_actor else f"{per_actor['num_cpus']:g} CPU(s)"


def _stream(ray: Any, work: list[IndexedJob], settings: WorkerSettings, actors: int, per_actor: dict[str, float], handle: Callable[[Event], None]) -> None:
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False  # our own progress and summary speak for the run
    context.max_errored_blocks = -1  # a block Ray gives up on is reported below; the rest goes on
    context.execution_options.preserve_order = False  # stream results as images finish

    # Actors run in other folders and on other machines: they get absolute paths.
    # Actors run in other folders and on other machines: they get absolute paths.
    rows = [{"index": i, "path": str(job.source.path.absolute()), "job": pickle.dumps(_absolute(job))} for i, job in work]  # type: ignore[union-attr]
    dataset = ray.data.from_items(rows, override_num_blocks=len(rows))
    env = {name: os.environ[name] for name in (CRASH_HOOK, CRASH_ONCE_MARKER) if name in os.environ}
    # Ray Data restarts a dead actor and retries its task without limit; the ledger makes the
    # limit ours: the third attempt at an image reports it failed instead of running it.
    ledger = ray.remote(num_cpus=0)(_Attempts).remote()
    results = dataset.map_batches(
        UpscaleActor,
        fn_constructor_kwargs={"settings": settings, "inputs": [row["path"] for row in rows], "ledger": ledger},
        batch_size=1,
        compute=ray.data.ActorPoolStrategy(size=actors),
        runtime_env={"env_vars": env} if env else None,
        **per_actor,
    )
    jobs = dict(work)
    unseen = set(jobs)
    for row in results.iter_rows():
        if row.get("aborted"):
            subject, problem, code = pickle.loads(row["aborted"])
            raise RunAborted(subject, problem, code)
        for note in pickle.loads(row["notes"]):
            handle(Note(note))
        index = int(row["index"])
        unseen.discard(index)
        outcome = pickle.loads(row["outcome"])
        handle(Finished(index, dataclasses.replace(outcome, output=jobs[index].destination_label)))
    for index in sorted(unseen):  # lost by Ray itself (never by an image failing: that is an outcome)
        job = jobs[index]
        problem = "Ray returned no result for this image; run again with --skip-existing"
        handle(Finished(index, Outcome(job.label, job.destination_label, Status.FAILED, error=problem)))


class _Attempts:
    """A tiny Ray actor counting how often each image was begun, across actor restarts."""

    def __init__(self) -> None:
        self.counts: dict[int, int] = {}

    def begin(self, index: int) -> int:
        self.counts[index] = self.counts.get(index, 0) + 1
        return self.counts[index]


def _absolute(job: Job) -> Job:
    source = job.source
    assert source is not None and source.path is not None  # Ray runs only file inputs
    source = dataclasses.replace(
        source, path=source.path.absolute(), root=None if source.root is None else source.root.absolute()
    )
    destination = None if job.destination is None else job.destination.absolute()
    return dataclasses.replace(job, source=source, destination=destination)


class UpscaleActor:
    """A Ray Data actor: one loaded model, one image per call."""

    def __init__(self, settings: WorkerSettings, inputs: list[str], ledger: Any) -> None:
        self.ledger = ledger
        # A file's identity (device, inode) differs from node to node on a network filesystem.
        identities = (identity(Path(path)) for path in inputs)
        settings = dataclasses.replace(settings, inputs=frozenset(i for i in identities if i is not None))
        self.notes: list[str] = []
        self.aborted: bytes | None = None
        self.worker = ImageWorker(settings, note=self.notes.append)
        try:
            self.worker.load()
        except RunAborted as error:  # reported through the results: a crash here would be retried forever
            self.aborted = pickle.dumps((error.subject, error.problem, error.exit_code))

    def __call__(self, batch: dict[str, Any]) -> dict[str, list[Any]]:
        out: dict[str, list[Any]] = {"index": [], "outcome": [], "notes": [], "aborted": []}
        for index, blob in zip(batch["index"], batch["job"]):
            out["index"].append(int(index))
            out["aborted"].append(self.aborted)
            out["outcome"].append(pickle.dumps(self._run(int(index), pickle.loads(blob))))
            out["notes"].append(pickle.dumps(self.notes))
            self.notes = []
        return out

    def _run(self, index: int, job: Job) -> Outcome | None:
        if self.aborted is not None:
            return None
        import ray

        attempt = ray.get(self.ledger.begin.remote(index))
        if attempt > 1 + ACTOR_RETRIES:
            problem = f"the Ray actor died {attempt - 1} times while upscaling this image (killed, or out of memory)"
            return Outcome(job.label, job.destination_label, Status.FAILED, error=problem)
        return self.worker.process(job)
