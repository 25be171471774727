"""Where the weights come from and where they live: the manifest, downloads and their verification,
the cache of converted weights, and what `--model` names.

* `manifest`: the official files and models (package data).
* `fetch`: downloads into the Hugging Face cache, or files copied by hand, checked against SHA-256.
* `cache`: our converted-weights cache (lock, stamps, status for `weights list` and `info`).
* `conversion`, `record`: checkpoints -> a folder of safetensors files with their recorded hashes.
* `resolve`: a model name, `.ckpt` or folder -> the component files to load.
* `verify`: `stablesr weights verify`.

No torch and no huggingface_hub at import time: `stablesr --help` and `weights list` stay fast.
Progress and announcements go through an `on_event` callback; the store never prints.
"""

from __future__ import annotations

from .cache import FileStatus, ModelStatus, file_status, model_status
from .conversion import convert_checkpoint
from .events import WeightsCallback, WeightsEvent
from .fetch import FetchedFile, HubUnreachableError, fetch_file
from .manifest import FileSpec, Manifest, ModelSpec, load_manifest, parse_manifest
from .places import cache_dir, converted_dir, file_url, hub_cache_dir, is_offline, usable_cache_dir
from .record import STAMP_NAME, read_stamp
from .resolve import REQUIRED_PARTS, SR_PARTS, ResolvedModel, download, ensure_model, resolve_folder
from .verify import FileCheck, verify_everything, verify_folder, verify_model

__all__ = [
    "REQUIRED_PARTS", "SR_PARTS", "STAMP_NAME", "FetchedFile", "FileCheck", "FileSpec", "FileStatus",
    "HubUnreachableError", "Manifest", "ModelSpec", "ModelStatus", "ResolvedModel", "WeightsCallback",
    "WeightsEvent", "cache_dir", "convert_checkpoint", "converted_dir", "download", "ensure_model", "fetch_file",
    "file_status", "file_url", "hub_cache_dir", "is_offline", "load_manifest", "model_status", "parse_manifest",
    "read_stamp", "resolve_folder", "usable_cache_dir", "verify_everything", "verify_folder", "verify_model",
]  # fmt: skip
