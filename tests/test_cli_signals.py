"""Real processes: SIGTERM, temporaries of a SIGKILLed run, and streams that fail (full, closed).

Only a subprocess shows what `kill`, `> /dev/full` and `| head -c 10` do to the command.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from PIL import Image

from cli_helpers import FAST, error_lines, gradient, leftovers, png_bytes, run_stablesr, subprocess_env

DEV_FULL = Path("/dev/full")
needs_dev_full = pytest.mark.skipif(not DEV_FULL.exists(), reason="no /dev/full on this system")


@pytest.fixture(scope="module")
def model(tiny_model_dir) -> list[str]:
    return ["--model", str(tiny_model_dir), *FAST]


def finished(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if not p.name.startswith(".")) if folder.is_dir() else []


def test_sigterm_is_handled_like_ctrl_c_and_exits_143(tmp_path, model):
    inputs, outputs = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    count = 8
    for index in range(count):
        gradient(40 + index, 32).save(inputs / f"img{index}.png")
    with open(tmp_path / "stderr.txt", "wb") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "stablesr_cli", "upscale", str(inputs), "-o", str(outputs), *model],
            stdout=subprocess.DEVNULL, stderr=stderr, env=subprocess_env(tmp_path), cwd=tmp_path,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 180
            while not finished(outputs) and process.poll() is None and time.monotonic() < deadline:
                time.sleep(0.02)
            process.send_signal(signal.SIGTERM)
            returncode = process.wait(timeout=120)
        finally:
            if process.poll() is None:
                process.kill()
    said = (tmp_path / "stderr.txt").read_text()
    assert returncode == 143, said
    assert "Traceback" not in said
    assert "interrupted" in said and "--skip-existing" in said  # the summary, as for Ctrl-C
    done = finished(outputs)
    assert 1 <= len(done) < count, said
    assert not leftovers(outputs)
    for path in done:
        Image.open(path).load()


def dead_pid() -> int:
    """The id of a process that has exited (and been reaped)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_the_next_run_removes_temporaries_a_killed_run_left(tmp_path, model):
    outputs = tmp_path / "out"
    outputs.mkdir()
    stale = outputs / f".a.png.{dead_pid()}-0123abcd.stablesr.tmp"
    alive = outputs / f".b.png.{os.getpid()}-0123abcd.stablesr.tmp"  # a writer still running: not ours to remove
    foreign = outputs / ".notes.txt.tmp"
    for path in (stale, alive, foreign):
        path.write_bytes(b"partial")
    gradient().save(tmp_path / "a.png")
    result = run_stablesr(["upscale", str(tmp_path / "a.png"), "-o", str(outputs) + "/", *model], tmp_path)
    assert result.returncode == 0, result.stderr.decode()
    assert not stale.exists() and alive.exists() and foreign.exists()
    assert (outputs / "a.png").is_file()


@needs_dev_full
def test_image_to_a_full_standard_output_is_one_line(tmp_path, model):
    gradient().save(tmp_path / "a.png")
    with open(DEV_FULL, "wb") as full:
        result = subprocess.run(
            [sys.executable, "-m", "stablesr_cli", "upscale", str(tmp_path / "a.png"), "-o", "-", *model],
            stdout=full, stderr=subprocess.PIPE, env=subprocess_env(tmp_path), cwd=tmp_path, timeout=240,
        )  # fmt: skip
    said = result.stderr.decode()
    assert result.returncode == 1, said
    assert "Traceback" not in said and "Exception ignored" not in said
    [line] = error_lines(said)
    assert line == f"stablesr: {tmp_path / 'a.png'}: standard output: cannot write the image (No space left on device)"


@needs_dev_full
def test_a_full_json_file_is_one_line_and_stops_the_run(tmp_path, model):
    gradient().save(tmp_path / "a.png")
    result = run_stablesr(["upscale", str(tmp_path / "a.png"), "--json-file", str(DEV_FULL), *model], tmp_path)
    said = result.stderr.decode()
    assert result.returncode == 1, said
    assert "Traceback" not in said
    [line] = error_lines(said)
    assert line == "stablesr: /dev/full: cannot write the JSON lines (No space left on device); stopping the run"


def test_a_reader_that_goes_away_ends_the_run_quietly_with_141(tmp_path, model):
    """`stablesr upscale - < a.png | head -c 10`: the BMP (240 KB) outgrows the pipe's buffer."""
    source = png_bytes(gradient(160, 128))
    process = subprocess.Popen(
        [sys.executable, "-m", "stablesr_cli", "upscale", "-", "--format", "bmp", *model],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=subprocess_env(tmp_path), cwd=tmp_path,
    )  # fmt: skip
    try:
        process.stdin.write(source)
        process.stdin.close()
        assert process.stdout.read(10).startswith(b"BM")
        process.stdout.close()
        said = process.stderr.read().decode()
        returncode = process.wait(timeout=240)
    finally:
        if process.poll() is None:
            process.kill()
    assert returncode == 141, said
    assert "Traceback" not in said and "Exception ignored" not in said and error_lines(said) == []


def test_a_closed_standard_error_also_ends_quietly_with_141(tmp_path, model):
    """`stablesr upscale in/ -o out/ 2>&1 | head -1`: the next message finds no reader."""
    inputs, outputs = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    for index in range(3):
        gradient(40, 32 + index).save(inputs / f"img{index}.png")
    process = subprocess.Popen(
        [sys.executable, "-m", "stablesr_cli", "upscale", str(inputs), "-o", str(outputs), *model],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=subprocess_env(tmp_path), cwd=tmp_path,
    )  # fmt: skip
    try:
        first = process.stderr.readline()
        process.stderr.close()
        returncode = process.wait(timeout=240)
    finally:
        if process.poll() is None:
            process.kill()
    assert first.strip()  # a first message came through: the run had begun when its reader left
    assert returncode == 141
    if outputs.exists():
        assert not leftovers(outputs)


CHILD_PRINTING_UNDER_FIRE = """
import os, sys
from stablesr_cli.cli.console import make_console, print_line
console = make_console()
ready, stop = sys.argv[1:]
caught = reported = 0
while True:
    try:
        if not os.path.exists(ready):  # inside the try: the first signals can land while it is written
            open(ready, "w").close()
        while not os.path.exists(stop):
            if reported < caught:
                reported += 1
                print_line(console, f"caught {reported}")
            else:
                print_line(console, "a line of progress text " * 4)
        break
    except KeyboardInterrupt:
        caught += 1
print_line(console, f"done {caught}")
"""


def test_an_interrupt_in_mid_print_does_not_silence_the_rest(tmp_path):
    """Rich's nested-print counter, left stuck by an exception raised inside a print, made it
    buffer everything after: a Ctrl-C or SIGTERM landing on a per-image line lost the summary
    (without the fix, printing stopped after a few dozen interrupts). Interrupts are now held
    back while a line is printed; here hundreds land on a printing loop."""
    ready, stop = tmp_path / "ready", tmp_path / "stop"
    process = subprocess.Popen(
        [sys.executable, "-c", CHILD_PRINTING_UNDER_FIRE, str(ready), str(stop)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=subprocess_env(tmp_path), cwd=tmp_path,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip
    collected: list[bytes] = []
    reader = threading.Thread(target=lambda: collected.append(process.stderr.read()))
    reader.start()
    try:
        deadline = time.monotonic() + 60
        while not ready.exists() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        for _ in range(400):
            process.send_signal(signal.SIGINT)
            time.sleep(0.004)
        time.sleep(0.3)  # every signal has landed
        stop.touch()
        process.wait(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
        reader.join()
    lines = [line for line in collected[0].decode().splitlines() if not line.startswith("a line")]
    assert process.returncode == 0, lines[-3:]
    assert lines[-1].startswith("done ")  # printing still worked after every interrupt
    assert len([line for line in lines if line.startswith("caught ")]) >= 50
