"""The batch runner's parts without a model: shards, worker plans, the read-ahead/write-behind pipeline."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from stablesr_cli.batch.devices import plan_workers
from stablesr_cli.batch.events import Finished, Started
from stablesr_cli.batch.prefetch import ListFeed, run_pipelined
from stablesr_cli.batch.ray_backend import parse_ray_address
from stablesr_cli.batch.runner import largest_first
from stablesr_cli.batch.shard import Shard, parse_shard, select_shard
from stablesr_cli.batch.work import Stage, WorkerSettings
from stablesr_cli.cli.console import Status
from stablesr_cli.cli.plan import Action, Job, OutputRequest, expand_inputs, plan_jobs
from stablesr_cli.errors import OptionError

from cli_helpers import gradient


# ------------------------------------------------------------------ shards


def _tree(root: Path) -> list[Path]:
    names = ["a.png", "b.png", "c.png", "sub/a.png", "sub/d.png", "sub/deeper/e.png", "z10.png", "z9.png"]
    for name in names:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"")
    return [root / name for name in names]


@pytest.mark.parametrize("count", [1, 2, 3, 5, 8, 11])
def test_shards_cover_every_input_exactly_once_and_differ_by_one_at_most(tmp_path, count):
    files = _tree(tmp_path / "in")
    jobs = plan_jobs(expand_inputs([str(tmp_path / "in")], recursive=True), OutputRequest(output=str(tmp_path / "out")))
    shards = [select_shard(jobs, Shard(k, count)) for k in range(1, count + 1)]
    taken = [job.source.path for shard in shards for job in shard]
    assert sorted(taken) == sorted(files)
    sizes = [len(shard) for shard in shards]
    assert max(sizes) - min(sizes) <= 1


def test_a_shard_does_not_depend_on_the_order_of_the_arguments(tmp_path):
    _tree(tmp_path / "x")
    _tree(tmp_path / "y")
    request = OutputRequest(output=str(tmp_path / "out"))
    forward = plan_jobs(expand_inputs([str(tmp_path / "x"), str(tmp_path / "y")], recursive=True), request)
    backward = plan_jobs(expand_inputs([str(tmp_path / "y"), str(tmp_path / "x")], recursive=True), request)
    for k in (1, 2, 3):
        mine = {job.source.path for job in select_shard(forward, Shard(k, 3))}
        assert mine == {job.source.path for job in select_shard(backward, Shard(k, 3))}


def test_missing_inputs_are_reported_by_every_shard(tmp_path):
    _tree(tmp_path / "in")
    jobs = plan_jobs(expand_inputs([str(tmp_path / "in"), "nothing.png"], recursive=False), OutputRequest(output=str(tmp_path / "o")))
    for k in (1, 2):
        assert [job.label for job in select_shard(jobs, Shard(k, 2)) if job.source is None] == ["nothing.png"]


@pytest.mark.parametrize("text", ["0/3", "4/3", "1/0", "x/2", "2", "1/2/3", ""])
def test_bad_shards_are_usage_errors(text):
    with pytest.raises(OptionError, match="--shard"):
        parse_shard(text)


def test_good_shard():
    assert parse_shard(" 2 / 8 ") == Shard(2, 8)


# ------------------------------------------------------------------ workers and addresses


def test_worker_plans(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "8")
    assert plan_workers(devices=None, workers=None, device="auto").devices == ("auto",)
    assert plan_workers(devices=None, workers=None, device="auto").threads == (None,)
    two = plan_workers(devices="cpu, cpu", workers=None, device="auto")
    assert two.devices == ("cpu", "cpu") and two.threads == (4, 4)
    assert plan_workers(devices=None, workers=3, device="cpu").threads == (2, 2, 2)
    gpus = plan_workers(devices="cuda:0,cuda:1", workers=None, device="auto")
    assert gpus.devices == ("cuda:0", "cuda:1") and gpus.threads == (None, None)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"devices": "cpu,cpu", "workers": 2, "device": "auto"}, "contradict"),
        ({"devices": "cuda:0", "workers": None, "device": "cpu"}, "contradict"),
        ({"devices": "gpu0", "workers": None, "device": "auto"}, "comma-separated"),
        ({"devices": ",", "workers": None, "device": "auto"}, "comma-separated"),
        ({"devices": None, "workers": 0, "device": "auto"}, "at least 1"),
    ],
)
def test_bad_worker_plans_are_usage_errors(kwargs, message):
    with pytest.raises(OptionError, match=message):
        plan_workers(**kwargs)


def test_ray_addresses():
    assert parse_ray_address("auto") == "auto"
    assert parse_ray_address("ray://head:10001") == "ray://head:10001"
    assert parse_ray_address("10.0.0.1:6379") == "10.0.0.1:6379"
    with pytest.raises(OptionError, match="not a Ray address"):
        parse_ray_address("photos/")


def test_largest_images_are_handed_out_first(tmp_path):
    for name, size in [("small.png", (8, 8)), ("big.png", (64, 48)), ("mid.png", (20, 20))]:
        gradient(*size).save(tmp_path / name)
    (tmp_path / "broken.png").write_bytes(b"nope")
    jobs = plan_jobs(expand_inputs([str(tmp_path)], recursive=False), OutputRequest(output=str(tmp_path / "out")))
    order = [job.source.path.name for _, job in largest_first(list(enumerate(jobs)))]
    assert order == ["big.png", "mid.png", "small.png", "broken.png"]


# ------------------------------------------------------------------ the pipeline


class _FakeWorker:
    """Stands in for ImageWorker: records when each stage runs; compute of the first job waits
    until the second job's read has begun, which only a read-ahead pipeline can satisfy."""

    def __init__(self, fail_read: str = "", interrupt_at: str = "") -> None:
        self.settings = WorkerSettings(model="none")
        self.log: list[str] = []
        self.second_read = threading.Event()
        self.fail_read = fail_read
        self.interrupt_at = interrupt_at
        self.lock = threading.Lock()

    def _note(self, entry: str) -> None:
        with self.lock:
            self.log.append(entry)

    def read(self, job: Job) -> Stage:
        self._note(f"read {job.label}")
        if job.label == "b":
            self.second_read.set()
        if job.label == self.fail_read:
            return Stage(error=f"{job.label}: not an image")
        return Stage(value=_Result())

    def compute(self, job: Job, picture: object, progress) -> Stage:
        if job.label == "a":
            assert self.second_read.wait(10), "the next image was not read ahead"
        if job.label == self.interrupt_at:
            raise KeyboardInterrupt
        self._note(f"compute {job.label}")
        return Stage(value=_Result())

    def write(self, job: Job, result: object) -> Stage:
        self._note(f"write {job.label}")
        return Stage(value=None)


class _Result:
    width = height = 2
    warnings = ()


def _jobs(*labels: str) -> list[tuple[int, Job]]:
    return [(i, Job(None, Path(f"/out/{name}.png"), None, Action.UPSCALE, label=name)) for i, name in enumerate(labels)]


def test_the_pipeline_reads_ahead_and_reports_every_job_in_order():
    worker = _FakeWorker(fail_read="c")
    events = []
    run_pipelined(ListFeed(_jobs("a", "b", "c", "d")), worker, events.append)  # type: ignore[arg-type]
    finished = [e for e in events if isinstance(e, Finished)]
    assert [f.outcome.input for f in finished] == ["a", "b", "c", "d"]
    assert [f.outcome.status for f in finished] == [Status.DONE, Status.DONE, Status.FAILED, Status.DONE]
    assert finished[2].outcome.error == "c: not an image"
    assert [e.label for e in events if isinstance(e, Started)] == ["a", "b", "d"]  # c never reached the model
    assert worker.log.index("read b") < worker.log.index("compute a")


def test_an_interrupt_finishes_the_writes_under_way_and_reports_them():
    worker = _FakeWorker(interrupt_at="c")
    events = []
    with pytest.raises(KeyboardInterrupt):
        run_pipelined(ListFeed(_jobs("a", "b", "c", "d")), worker, events.append)  # type: ignore[arg-type]
    assert [e.outcome.input for e in events if isinstance(e, Finished)] == ["a", "b"]
    assert "write b" in worker.log and "compute d" not in worker.log
