"""Every command example in README.md (and in `stablesr upscale --help`) runs as written.

Each example runs in a fresh folder holding the files the examples name (photo.jpg, photos/, ...),
through the real Typer app, with the tiny test model and few steps added at the end of an
`upscale` command (the README's examples use the default model, whose weights are not here).
A file the example's comment promises (`# -> photo_x4.png`) must appear.

Skipped, each for the reason listed in SKIPPED: what needs the network or another host, the real
weights (the Python API blocks, `weights download/convert` of official files), or is the test
suite or a full-size benchmark itself.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import torch

from cli_helpers import crop_fixture, gradient, invoke
from stablesr_cli.cli.upscale import EPILOG

README = Path(__file__).resolve().parent.parent / "README.md"
TINY_RUN = ["--steps", "1", "--tile-size", "128", "--tile-overlap", "0"]  # one step, two tiles per image

SKIPPED = {
    "pip install": "installs packages from the network",
    "curl ": "downloads from the network",
    "ssh ": "needs another host",
    "stablesr weights download": "downloads the official weights (network, or the official .ckpt files)",
    "stablesr weights convert my.ckpt": "needs an official checkpoint (real weights)",
    "python -m pytest": "the test suite itself",
    "STABLESR_GOLDEN_DIR": "the test suite itself",
    "python bench/": "a full-size benchmark (minutes; a GPU for the second line)",
}


def shell_examples() -> list[str]:
    """Command lines from the README's plain code blocks, then from the --help epilog."""
    found: list[str] = []
    for block in re.findall(r"^```(\w*)\n(.*?)^```", README.read_text(), flags=re.S | re.M):
        language, body = block
        if language:  # ```python: the API examples (need the real weights, listed in SKIPPED's spirit)
            continue
        found.extend(line.strip() for line in body.splitlines() if line.strip() and not line.lstrip().startswith("{"))
    epilog = EPILOG.split("Examples:", 1)[1]
    found.extend(re.split(r"\s{2,}", line.strip())[0] for line in epilog.splitlines() if line.strip().startswith("stablesr "))
    return found


def skip_reason(line: str) -> str | None:
    return next((reason for marker, reason in SKIPPED.items() if marker in line), None)


def test_examples_are_found_and_every_skip_is_listed():
    examples = shell_examples()
    assert len(examples) > 20
    ran = [line for line in examples if skip_reason(line) is None]
    assert len(ran) >= 15 and all(line.startswith("stablesr ") for line in ran), ran


@pytest.fixture(scope="module")
def tiny(tiny_model_dir) -> Path:
    return tiny_model_dir


@pytest.fixture(autouse=True)
def offline(isolated, monkeypatch):
    monkeypatch.setenv("STABLESR_OFFLINE", "1")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def example_files(folder: Path) -> None:
    """The files the examples name, small and real."""
    crop_fixture("0014.jpg", folder / "photo.jpg")
    crop_fixture("0030.jpg", folder / "photo.png", format="PNG")
    gradient(40, 32).save(folder / "scan.tif", format="TIFF")
    gradient(32, 40).save(folder / "small.png")
    gradient(36, 36).save(folder / "extra.png")
    crop_fixture("0014.jpg", folder / "photos" / "a.jpg")
    gradient(40, 32).save(folder / "photos" / "b.png")
    (folder / "photos" / "trip").mkdir()
    gradient(40, 32).save(folder / "photos" / "trip" / "c.png")
    (folder / "shoot").mkdir()
    gradient(40, 32).save(folder / "shoot" / "1.jpg")


def split_redirections(words: list[str]) -> tuple[list[str], str | None, str | None]:
    arguments, stdin, stdout = [], None, None
    iterator = iter(words)
    for word in iterator:
        if word == "<":
            stdin = next(iterator)
        elif word == ">":
            stdout = next(iterator)
        else:
            arguments.append(word)
    return arguments, stdin, stdout


@pytest.mark.parametrize("line", shell_examples())
def test_example_runs_as_written(line, tmp_path, tiny, monkeypatch):
    reason = skip_reason(line)
    if reason:
        pytest.skip(reason)
    command, _, comment = line.partition("#")
    example_files(tmp_path)
    monkeypatch.chdir(tmp_path)
    words = shlex.split(command)
    assert words[0] == "stablesr", line
    arguments, stdin, stdout = split_redirections(words[1:])
    if arguments[0] == "upscale":
        arguments += ["--model", str(tiny), *TINY_RUN]
    result = invoke(arguments, input=Path(stdin).read_bytes() if stdin else None)
    assert result.exit_code == 0, (line, result.stderr)
    if stdout:
        Path(stdout).write_bytes(result.stdout_bytes)
        assert result.stdout_bytes[:8] == b"\x89PNG\r\n\x1a\n", line
    for promised in re.findall(r"[\w./]+_x\d+(?:\.\d+)?\.\w+", comment):
        assert (tmp_path / promised).is_file(), (line, promised)
