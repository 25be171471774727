import sys
from pathlib import Path

import pytest
import torch

# tests import their helpers (golden_support, golden_handlers) as top-level modules
sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(autouse=True)
def _seed_everything():
    torch.manual_seed(0)
    yield


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """Every cache and credential location in tmp; nothing from the developer's environment."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("STABLESR_CACHE_DIR", str(tmp_path / "stablesr"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "XDG_CACHE_HOME", "HF_ENDPOINT", "STABLESR_OFFLINE",
                "HF_HUB_OFFLINE", "HF_TOKEN"):
        monkeypatch.delenv(var, raising=False)


# ----------------------------------------------------------------- tiny checkpoints, once per session
# Read-only for the tests: copy a file before changing it.


@pytest.fixture(scope="session")
def official_tiny(tmp_path_factory) -> Path:
    """The 'turbo' model's two files (tiny, golden weights, 16-wide text tower) under official names."""
    from tiny_checkpoints import write_official_folder

    return write_official_folder(tmp_path_factory.mktemp("official_tiny"))


@pytest.fixture(scope="session")
def official_tiny_wide(tmp_path_factory) -> Path:
    """As `official_tiny`, with a 64-wide text tower: one open_clip head, so no head count to tell."""
    from tiny_checkpoints import WIDE_TEXT_WIDTH, write_official_folder

    return write_official_folder(tmp_path_factory.mktemp("official_wide"), text_width=WIDE_TEXT_WIDTH)


@pytest.fixture(scope="session")
def official_sd_shaped(tmp_path_factory) -> Path:
    """The 'turbo' files with an SD-shaped diffusion checkpoint: converts with no expert options."""
    from tiny_checkpoints import write_official_folder

    return write_official_folder(tmp_path_factory.mktemp("official_sd_shaped"), "sd_shaped")


@pytest.fixture(scope="session")
def tiny_model_dir(official_tiny, tmp_path_factory) -> Path:
    """`official_tiny` converted the way a user converts it, with `stablesr weights convert`.

    The tiny networks' attention head widths are not SD 2.x's (no tensor shape reveals them),
    hence the expert options.
    """
    from typer.testing import CliRunner

    from stablesr_cli.cli import app
    from tiny_checkpoints import CFW_CKPT, SR_CKPT, TEXT_HEADS, UNET_HEAD_CHANNELS

    folder = tmp_path_factory.mktemp("tiny_model") / "converted"
    result = CliRunner().invoke(app, [
        "weights", "convert", str(official_tiny / SR_CKPT), "--cfw", str(official_tiny / CFW_CKPT), "-o", str(folder),
        "--model", "turbo", "--unet-head-channels", str(UNET_HEAD_CHANNELS), "--text-heads", str(TEXT_HEADS),
    ])
    assert result.exit_code == 0, result.output
    return folder


# ----------------------------------------------------------------- the CLI tests' shared setting


@pytest.fixture
def offline(isolated, monkeypatch):
    """On top of `isolated`: never try the network, and every child process computes with one
    thread, as this one does (`one_torch_thread`): PyTorch's CPU sums depend on the thread count,
    and outputs of different processes are compared byte for byte."""
    monkeypatch.setenv("STABLESR_OFFLINE", "1")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny tensors run fastest on one thread, and the CI box is shared."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def model(tiny_model_dir) -> list[str]:
    """`--model` with the tiny converted model, and the options that keep an upscale near a second."""
    from cli_helpers import FAST

    return ["--model", str(tiny_model_dir), *FAST]


@pytest.fixture
def no_model(monkeypatch):
    """Make loading a model a test failure: for runs that must not need one."""
    from stablesr_cli.api import Upscaler

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded although the run needed none")

    monkeypatch.setattr(Upscaler, "from_pretrained", classmethod(refuse))
