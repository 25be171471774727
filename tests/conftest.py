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
