"""`stablesr upscale --ray` on a Ray instance this module starts on 127.0.0.1 with 2 CPUs.

Marked `ray` (deselect with -m "not ray"); needs the `ray` extra, which CI installs. One Ray
instance serves every test here, since starting one takes seconds.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from cli_helpers import error_lines, gradient, invoke, leftovers
from stablesr_cli.batch.work import CRASH_HOOK, CRASH_ONCE_MARKER

IMAGES = 4


pytestmark = pytest.mark.usefixtures("offline", "one_torch_thread")


@pytest.fixture(scope="module")
def local_ray():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False)
    yield ray
    ray.shutdown()


def _folder(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for index in range(IMAGES):
        gradient(24 + 6 * index, 20 + 2 * index).save(root / f"img{index}.png")
    return root


def _outputs(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file() and not p.name.startswith(".")}


@pytest.mark.ray
def test_ray_writes_the_same_bytes_as_one_process_and_streams_json_lines(tmp_path, model, local_ray):
    inputs = _folder(tmp_path / "in")
    one = invoke(["upscale", str(inputs), "-o", str(tmp_path / "one"), *model])
    assert one.exit_code == 0, one.stderr

    result = invoke(["upscale", str(inputs), "-o", str(tmp_path / "ray"), "--json", *model, "--ray", "--workers", "2"])
    assert result.exit_code == 0, result.stderr
    assert _outputs(tmp_path / "ray") == _outputs(tmp_path / "one")
    records = [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]
    assert sorted(r["input"] for r in records) == sorted(str(inputs / f"img{i}.png") for i in range(IMAGES))
    assert {r["status"] for r in records} == {"done"}
    assert all(r["output"].startswith(str(tmp_path / "ray")) for r in records)
    assert not leftovers(tmp_path / "ray")


@pytest.mark.ray
def test_a_killed_actor_is_retried_once_then_its_image_is_reported(tmp_path, model, local_ray, monkeypatch):
    inputs = _folder(tmp_path / "in")
    monkeypatch.setenv(CRASH_HOOK, "img2.png")
    monkeypatch.setenv(CRASH_ONCE_MARKER, str(tmp_path / "crashed-once"))
    once = invoke(["upscale", str(inputs), "-o", str(tmp_path / "once"), *model, "--ray"])
    assert once.exit_code == 0, once.stderr
    assert (tmp_path / "crashed-once").exists()  # it did die once; the retry made the image
    assert len(_outputs(tmp_path / "once")) == IMAGES

    monkeypatch.delenv(CRASH_ONCE_MARKER)
    always = invoke(["upscale", str(inputs), "-o", str(tmp_path / "always"), *model, "--ray"])
    assert always.exit_code == 1, always.stderr
    [line] = error_lines(always.stderr)
    assert "img2.png" in line and "died" in line, line
    assert sorted(_outputs(tmp_path / "always")) == sorted(f"img{i}.png" for i in range(IMAGES) if i != 2)
    assert not leftovers(tmp_path / "always")


def test_ray_not_installed_is_one_line_saying_how_to_install_it(tmp_path, monkeypatch):
    _folder(tmp_path / "in")
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ImportError
    result = invoke(["upscale", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--ray"])
    assert result.exit_code == 2
    [line] = error_lines(result.stderr)
    assert 'pip install "stablesr[ray]"' in line
    assert not (tmp_path / "out").exists()


def test_a_ray_address_after_the_inputs_is_not_taken_for_an_input(tmp_path, monkeypatch):
    _folder(tmp_path / "in")
    monkeypatch.setitem(sys.modules, "ray", None)
    result = invoke(["upscale", "--ray", "ray://head:10001", str(tmp_path / "in"), "-o", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert "head" not in result.stderr  # not reported as a missing input; Ray is missing instead
    assert "stablesr[ray]" in result.stderr
