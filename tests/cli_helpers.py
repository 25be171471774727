"""Shared pieces of the CLI tests: small real images of every kind, runners.

The tiny converted model the tests pass as `--model DIR` is conftest's session fixture
`tiny_model_dir` (built once per session, about ten seconds).
"""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import time
from io import BytesIO
from pathlib import Path

import numpy as np
from PIL import Image
from typer.testing import CliRunner

from stablesr_cli.atomic import is_temporary_name
from stablesr_cli.cli import app
from stablesr_cli.imaging.io import Picture, read_picture, write_picture

ROOT = Path(__file__).resolve().parent.parent
IMAGES = Path(__file__).parent / "fixtures" / "images"

# Keeps a tiny-model upscale near a second on CPU: 2 steps, 2x, and the smallest diffusion tile
# (64 px, so small inputs are enlarged to 64 px at most).
FAST = ["--steps", "2", "--scale", "2", "--tile-size", "64", "--tile-overlap", "0"]

# ----------------------------------------------------------------- images


def crop_fixture(name: str, destination: Path, *, width: int = 40, height: int = 32, format: str | None = None) -> Path:
    """A small crop of a real fixture image that keeps its traits: grey, alpha, 16 bits, ICC, EXIF, DPI.

    Cropped through our own reader and writer, since Pillow's crop-and-save drops 16-bit colour and
    metadata.
    """
    picture = read_picture(IMAGES / name)
    top, left = (picture.height - height) // 2, (picture.width - width) // 2
    window = (slice(top, top + height), slice(left, left + width))
    small = dataclasses.replace(
        picture,
        rgb=np.ascontiguousarray(picture.rgb[window]),
        alpha=None if picture.alpha is None else np.ascontiguousarray(picture.alpha[window]),
    )
    destination.parent.mkdir(parents=True, exist_ok=True)
    write_picture(small, destination, format=format)
    return destination


def gradient(width: int = 40, height: int = 32, mode: str = "RGB") -> Image.Image:
    """A smooth colour image with no symmetry, so a rotation or transposition shows."""
    y, x = np.mgrid[0:height, 0:width]
    rgb = np.stack([x * 255 // max(width - 1, 1), y * 255 // max(height - 1, 1), (x + y) % 256], axis=-1)
    return Image.fromarray(rgb.astype(np.uint8), "RGB").convert(mode)


def gradient_png(path: Path, width: int = 40, height: int = 32) -> Path:
    """`gradient` saved as a PNG at `path`, its folder made first."""
    path.parent.mkdir(parents=True, exist_ok=True)
    gradient(width, height).save(path)
    return path


def made_picture(rgb: np.ndarray, alpha: np.ndarray | None = None, **fields: object) -> Picture:
    """A `Picture` straight from arrays (8-bit RGB PNG unless `fields` say otherwise)."""
    defaults = dict(is_grey=False, bit_depth=8, format="PNG", source="made-by-test")
    defaults.update(fields)
    return Picture(rgb=rgb.astype(np.float32), alpha=None if alpha is None else alpha.astype(np.float32), **defaults)


def write_every_kind(folder: Path) -> dict[str, Path]:
    """One small image of each kind people feed an upscaler, keyed by what it exercises."""
    folder.mkdir(parents=True, exist_ok=True)
    kinds = {
        "rgb_jpeg": crop_fixture("0014.jpg", folder / "rgb.jpg"),
        "grey_png": crop_fixture("00017_gray.png", folder / "grey.png"),
        "grey_jpeg_exif_icc": crop_fixture("wolf_gray.jpg", folder / "wolf.jpg"),
        "rgba_png": crop_fixture("children-alpha.png", folder / "rgba.png"),
        "rgba16_png": crop_fixture("tree_alpha_16bit.png", folder / "tree16.png"),
    }
    image = gradient()
    image.save(folder / "photo.webp", format="WEBP", quality=90)
    image.save(folder / "scan.tiff", format="TIFF", dpi=(300, 300))
    image.save(folder / "old.bmp", format="BMP")
    image.convert("P", palette=Image.Palette.ADAPTIVE, colors=16).save(folder / "palette.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation 6: the camera was turned; upright means 90 degrees clockwise
    image.save(folder / "rotated.jpg", format="JPEG", exif=exif.tobytes())
    kinds.update(
        webp=folder / "photo.webp",
        tiff=folder / "scan.tiff",
        bmp=folder / "old.bmp",
        palette_png=folder / "palette.png",
        exif_rotated_jpeg=folder / "rotated.jpg",
    )
    return kinds


def write_broken_files(folder: Path) -> dict[str, Path]:
    """Files with image names that hold no usable image, keyed by what is wrong with them."""
    folder.mkdir(parents=True, exist_ok=True)
    png = png_bytes(gradient())
    broken = {
        "empty": folder / "empty.png",
        "truncated": folder / "truncated.png",
        "not_an_image": folder / "notes.jpg",
        "corrupt": folder / "garbage.webp",
    }
    broken["empty"].write_bytes(b"")
    broken["truncated"].write_bytes(png[: len(png) // 2])
    broken["not_an_image"].write_text("shopping list: milk, eggs\n")
    broken["corrupt"].write_bytes(bytes(np.random.default_rng(0).integers(0, 256, 600, dtype=np.uint8)))
    return broken


def png_bytes(image: Image.Image) -> bytes:
    buffer = BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def leftovers(folder: Path) -> list[Path]:
    """Temporary files an interrupted write could leave (hidden `.name.<pid>-xxxx.stablesr.tmp` files)."""
    return [p for p in folder.rglob("*") if is_temporary_name(p.name) or p.suffix == ".tmp"]


def visible_files(folder: Path) -> list[str]:
    """The names a user sees in `folder` (not the hidden run marker)."""
    return sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))


# ----------------------------------------------------------------- running


def invoke(arguments: list[str], *, input: bytes | None = None):
    """The real Typer app through CliRunner, stdout and stderr kept apart."""
    return CliRunner().invoke(app, arguments, input=input, catch_exceptions=False)


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("stablesr: ")]


def subprocess_env(tmp_path: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        PYTHONPATH=str(ROOT) + os.pathsep + env.get("PYTHONPATH", ""),
        # One thread per process: the fastest setting for tiny tensors, and fair on a shared CI box.
        OMP_NUM_THREADS="1",
        STABLESR_CACHE_DIR=str(tmp_path / "cache"),
        HF_HOME=str(tmp_path / "hf"),
        STABLESR_OFFLINE="1",
    )
    return env


def run_stablesr(arguments: list[str], tmp_path: Path, *, input: bytes | None = None, timeout: float = 240):
    """`python -m stablesr_cli ...` in a real process with real pipes."""
    return subprocess.run(
        [sys.executable, "-m", "stablesr_cli", *arguments],
        input=input,
        capture_output=True,
        env=subprocess_env(tmp_path),
        cwd=tmp_path,
        timeout=timeout,
    )


def finished_outputs(folder: Path) -> list[Path]:
    """The visible files in `folder` (none if it does not exist yet)."""
    return sorted(p for p in folder.iterdir() if not p.name.startswith(".")) if folder.is_dir() else []


def interrupt_after_first_output(command: list[str], outputs: Path, tmp_path: Path) -> tuple[int, str]:
    """Run `command`, send it a Ctrl-C (SIGINT) once a first file appears in `outputs`, and give
    back its exit code and standard error."""
    with open(tmp_path / "stderr.txt", "wb") as stderr:
        process = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=stderr, env=subprocess_env(tmp_path), cwd=tmp_path,
            # a Ctrl-C must reach Python even if the test runner itself ignores SIGINT
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 180
            while not finished_outputs(outputs) and process.poll() is None and time.monotonic() < deadline:
                time.sleep(0.02)
            process.send_signal(signal.SIGINT)
            returncode = process.wait(timeout=120)
        finally:
            if process.poll() is None:
                process.kill()
    return returncode, (tmp_path / "stderr.txt").read_text()
