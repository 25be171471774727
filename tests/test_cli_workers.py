"""`stablesr upscale` over several worker processes and shards, with a tiny random-weight model on CPU."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from PIL import Image

from cli_helpers import error_lines, finished_outputs, gradient, interrupt_after_first_output, invoke, leftovers, run_stablesr
from stablesr_cli.batch.work import CRASH_HOOK

IMAGES = 6


pytestmark = pytest.mark.usefixtures("offline", "one_torch_thread")


def _folder(root: Path, *, broken: bool = False) -> Path:
    """Images of different sizes (so largest-first reorders them), in a sub-folder too."""
    root.mkdir(parents=True, exist_ok=True)
    for index in range(IMAGES):
        target = root / ("nested" if index % 3 == 0 else ".") / f"img{index}.png"
        target.parent.mkdir(exist_ok=True)
        gradient(24 + 6 * index, 20 + 2 * index).save(target)
    if broken:
        (root / "broken.png").write_bytes(b"not a png")
    return root


def _outputs(folder: Path) -> dict[str, bytes]:
    """Output files by relative path (not the hidden run marker)."""
    files = [p for p in sorted(folder.rglob("*")) if p.is_file() and not p.name.startswith(".")]
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in files}


def _json_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_two_workers_and_three_shards_write_the_same_bytes_as_one_process(tmp_path, model):
    inputs = _folder(tmp_path / "in", broken=True)
    one = invoke(["upscale", str(inputs), "-r", "-o", str(tmp_path / "one"), "--json-file", str(tmp_path / "one.jsonl"), *model])
    assert one.exit_code == 1, one.stderr  # the broken file
    expected = _outputs(tmp_path / "one")
    assert len(expected) == IMAGES

    two = invoke(["upscale", str(inputs), "-r", "-o", str(tmp_path / "two"), "--workers", "2", "--json-file", str(tmp_path / "two.jsonl"), *model])
    assert two.exit_code == 1, two.stderr
    assert _outputs(tmp_path / "two") == expected
    [line] = error_lines(two.stderr)
    assert "broken.png" in line
    assert "6 upscaled, 0 skipped, 1 failed" in two.stderr
    by_input = lambda lines: sorted((d["input"], d["status"], d["size"]) for d in lines)  # noqa: E731
    assert by_input(_json_lines(tmp_path / "two.jsonl")) == by_input(_json_lines(tmp_path / "one.jsonl"))
    assert not leftovers(tmp_path / "two")

    shard_log = tmp_path / "shards.jsonl"
    for k in (1, 2, 3):
        result = invoke(["upscale", str(inputs), "-r", "-o", str(tmp_path / "shards"), "--shard", f"{k}/3", "--json-file", str(shard_log), *model])
        assert result.exit_code in (0, 1), result.stderr
    assert _outputs(tmp_path / "shards") == expected
    seen = sorted(d["input"] for d in _json_lines(shard_log))
    assert seen == sorted(d["input"] for d in _json_lines(tmp_path / "one.jsonl"))  # each input exactly once


def test_a_killed_worker_fails_only_its_image_and_the_batch_goes_on(tmp_path, model, monkeypatch):
    inputs = _folder(tmp_path / "in")
    monkeypatch.setenv(CRASH_HOOK, "img4.png")  # that worker process exits as if killed
    result = invoke(["upscale", str(inputs), "-r", "-o", str(tmp_path / "out"), "--workers", "2", *model])
    assert result.exit_code == 1, result.stderr
    [line] = error_lines(result.stderr)
    assert "img4.png" in line and "died" in line, line
    assert "5 upscaled, 0 skipped, 1 failed" in result.stderr
    written = _outputs(tmp_path / "out")
    assert sorted(written) == sorted(f"{'nested/' if i % 3 == 0 else ''}img{i}.png" for i in range(IMAGES) if i != 4)
    assert not leftovers(tmp_path / "out")


def test_workers_that_cannot_load_the_model_end_the_run_with_one_line(tmp_path):
    inputs = _folder(tmp_path / "in")
    result = invoke(["upscale", str(inputs), "-r", "-o", str(tmp_path / "out"), "--workers", "2", "--model", str(tmp_path / "nothing.ckpt")])
    assert result.exit_code in (1, 2), result.stderr
    [line] = error_lines(result.stderr)
    assert "nothing.ckpt" in line
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["--devices", "cpu,cpu", "--workers", "2"], "contradict"),
        (["--devices", "tpu"], "comma-separated"),
        (["--shard", "4/3"], "--shard"),
        (["--workers", "0"], "--workers"),
    ],
)
def test_worker_usage_errors(tmp_path, arguments, message):
    _folder(tmp_path / "in")
    result = invoke(["upscale", str(tmp_path / "in"), "-o", str(tmp_path / "out"), *arguments])
    assert result.exit_code == 2
    assert message in result.stderr


def test_ctrl_c_stops_every_worker_leaves_no_temporary_and_skip_existing_finishes(tmp_path, model):
    inputs, outputs = tmp_path / "in", tmp_path / "out"
    count = 10
    inputs.mkdir()
    for index in range(count):
        gradient(40 + index, 32).save(inputs / f"img{index}.png")
    command = [sys.executable, "-m", "stablesr_cli", "upscale", str(inputs), "-o", str(outputs), "--workers", "2", *model]
    returncode, said = interrupt_after_first_output(command, outputs, tmp_path)
    assert returncode == 130, said
    assert "interrupted" in said and "--skip-existing" in said
    assert "Traceback" not in said
    first = finished_outputs(outputs)
    assert 1 <= len(first) < count, said
    assert not leftovers(outputs)
    for path in first:
        Image.open(path).load()

    resumed = run_stablesr(["upscale", str(inputs), "-o", str(outputs), "--skip-existing", "--workers", "2", *model], tmp_path)
    assert resumed.returncode == 0, resumed.stderr.decode()
    assert f"{count - len(first)} upscaled, {len(first)} skipped, 0 failed" in resumed.stderr.decode()
    assert len(finished_outputs(outputs)) == count
    assert not leftovers(outputs)
