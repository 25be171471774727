"""Real processes with real pipes: `python -m stablesr_cli upscale - < in > out`, and Ctrl-C + resume.

CliRunner hands commands a Python object as stdin; only a subprocess shows what a shell pipeline
sees (binary file descriptors, isatty, signals).
"""

from __future__ import annotations

import os
import pty
import struct
import subprocess
import sys
from io import BytesIO

import pytest
from PIL import Image

from cli_helpers import (
    FAST,
    crop_fixture,
    error_lines,
    finished_outputs,
    gradient,
    interrupt_after_first_output,
    leftovers,
    png_bytes,
    run_stablesr,
    subprocess_env,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def model(tiny_model_dir) -> list[str]:
    return ["--model", str(tiny_model_dir), *FAST]


def png_length(data: bytes) -> int:
    """Bytes up to and including the IEND chunk, walking the chunk structure."""
    assert data.startswith(PNG_SIGNATURE)
    position = len(PNG_SIGNATURE)
    while True:
        (length,) = struct.unpack(">I", data[position : position + 4])
        kind = data[position + 4 : position + 8]
        position += 12 + length  # length, type, data, CRC
        if kind == b"IEND":
            return position


def test_png_from_stdin_to_stdout_and_nothing_else(tmp_path, model):
    source = png_bytes(gradient(40, 32))
    result = run_stablesr(["upscale", "-", *model], tmp_path, input=source)
    assert result.returncode == 0, result.stderr.decode()
    assert png_length(result.stdout) == len(result.stdout)  # one PNG, not a byte more
    image = Image.open(BytesIO(result.stdout))
    image.load()
    assert (image.format, image.size) == ("PNG", (80, 64))
    assert PNG_SIGNATURE not in result.stderr
    assert list(tmp_path.glob("*.png")) == []  # nothing written next to the working directory


def test_file_to_stdout_as_jpeg(tmp_path, model):
    source = crop_fixture("00017_gray.png", tmp_path / "grey.png")
    result = run_stablesr(["upscale", str(source), "-o", "-", "--format", "jpg", "--quality", "90", *model], tmp_path)
    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout.startswith(b"\xff\xd8") and result.stdout.endswith(b"\xff\xd9")
    image = Image.open(BytesIO(result.stdout))
    assert (image.format, image.mode, image.size) == ("JPEG", "L", (80, 64))


@pytest.mark.parametrize(("data", "cause"), [(b"", "empty file"), (b"definitely not an image", "not an image")])
def test_bad_stdin_is_one_error_line_and_empty_stdout(tmp_path, data, cause):
    result = run_stablesr(["upscale", "-"], tmp_path, input=data)
    assert result.returncode == 1
    assert result.stdout == b""
    [line] = error_lines(result.stderr.decode())
    assert line.startswith("stablesr: <stdin>: ") and cause in line


def test_refuses_to_write_image_bytes_to_a_terminal(tmp_path):
    primary, replica = pty.openpty()
    try:
        result = subprocess.run(
            [sys.executable, "-m", "stablesr_cli", "upscale", "-"],
            input=png_bytes(gradient()), stdout=replica, stderr=subprocess.PIPE,
            env=subprocess_env(tmp_path), cwd=tmp_path, timeout=120,
        )  # fmt: skip
    finally:
        os.close(replica)
        os.close(primary)
    assert result.returncode == 2
    [line] = error_lines(result.stderr.decode())
    assert "terminal" in line


def test_help_starts_without_importing_torch(tmp_path):
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "stablesr_cli", "upscale", "--help"],
        capture_output=True, env=subprocess_env(tmp_path), cwd=tmp_path, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0
    imported = [line.rsplit("|", 1)[-1].strip() for line in result.stderr.decode().splitlines() if "|" in line]
    assert "typer" in imported
    assert not [name for name in imported if name == "torch" or name.startswith("torch.")]


def test_ctrl_c_leaves_no_partial_file_and_skip_existing_resumes(tmp_path, model):
    inputs, outputs = tmp_path / "in", tmp_path / "out"
    count = 8
    inputs.mkdir()
    for index in range(count):
        gradient(40 + index, 32).save(inputs / f"img{index}.png")
    command = [sys.executable, "-m", "stablesr_cli", "upscale", str(inputs), "-o", str(outputs), *model]
    returncode, said = interrupt_after_first_output(command, outputs, tmp_path)
    assert returncode == 130, said
    assert said.count("interrupted") == 1 and "--skip-existing" in said
    first = finished_outputs(outputs)
    assert 1 <= len(first) < count, said
    assert not leftovers(outputs)
    for path in first:
        Image.open(path).load()  # complete files only
    stamps = {path.name: path.stat().st_mtime_ns for path in first}

    resumed = run_stablesr(["upscale", str(inputs), "-o", str(outputs), "--skip-existing", *model], tmp_path)
    assert resumed.returncode == 0, resumed.stderr.decode()
    assert f"{count - len(first)} upscaled, {len(first)} skipped, 0 failed" in resumed.stderr.decode()
    final = finished_outputs(outputs)
    assert sorted(p.name for p in final) == sorted(f"img{i}.png" for i in range(count))
    assert {name: (outputs / name).stat().st_mtime_ns for name in stamps} == stamps  # kept, not redone
    assert not leftovers(outputs)
