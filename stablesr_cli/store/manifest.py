"""The weights manifest (`stablesr_cli/data/manifest.json`, package data): every official file and model.

`parse_manifest` is the one place that turns the JSON into typed records.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

from ..errors import StableSRError, WeightsNotFoundError
from ..model_facts import ModelFacts

MANIFEST_FORMAT = "stablesr-manifest/1"
_HEX = frozenset("0123456789abcdef")


@dataclass(frozen=True)
class FileSpec:
    """One released weights file."""

    filename: str
    kind: str
    """'sr' (diffusion model) or 'cfw' (CFW autoencoder)."""
    hf_repo: str
    hf_revision: str
    urls: tuple[str, ...]
    mirror_pages: tuple[str, ...]
    size: int | None
    """Bytes, when recorded; None means unknown until the server says."""
    sha256: str | None
    """Published SHA-256 (lower-case hex), None when nobody has published one."""
    note: str = ""

    @property
    def stem(self) -> str:
        return Path(self.filename).stem


@dataclass(frozen=True)
class ModelSpec:
    """A model users name with `--model`: a diffusion checkpoint plus the CFW autoencoder it pairs with."""

    facts: ModelFacts
    """Prediction, native tile, default steps and w: everything the weights cannot tell."""
    file: FileSpec
    cfw_file: FileSpec
    licence: str
    upstream_config: str = ""

    @property
    def name(self) -> str:
        return self.facts.name

    @property
    def files(self) -> tuple[FileSpec, FileSpec]:
        return (self.file, self.cfw_file)


@dataclass(frozen=True)
class Manifest:
    models: dict[str, ModelSpec]
    files: dict[str, FileSpec]
    licence: dict[str, str]
    notes: tuple[str, ...] = ()

    def model(self, name: str) -> ModelSpec:
        try:
            return self.models[name]
        except KeyError:
            raise WeightsNotFoundError(
                f"unknown model '{name}'; choose one of {', '.join(self.models)} or give the path of a .ckpt "
                "or of a folder of converted weights"
            ) from None

    def model_for_file(self, filename: str) -> ModelSpec | None:
        """The model whose diffusion checkpoint has this file name, if any."""
        return next((m for m in self.models.values() if m.file.filename == filename), None)

    def models_using(self, spec: FileSpec) -> list[str]:
        """Names of the models that need this file (the CFW autoencoder is shared)."""
        return [m.name for m in self.models.values() if spec in m.files]


def _file_spec(filename: str, raw: dict[str, Any]) -> FileSpec:
    sha = raw.get("sha256")
    if sha is not None and (not isinstance(sha, str) or len(sha) != 64 or not set(sha.lower()) <= _HEX):
        raise ValueError(f"file '{filename}' has sha256 {sha!r}, expected 64 hex digits or null")
    size = raw.get("size")
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size <= 0):
        raise ValueError(f"file '{filename}' has size {size!r}, expected a positive byte count or null")
    return FileSpec(
        filename=filename,
        kind=raw["kind"],
        hf_repo=raw["hf_repo"],
        hf_revision=raw.get("hf_revision", "main"),
        urls=tuple(raw.get("urls", ())),
        mirror_pages=tuple(raw.get("mirror_pages", ())),
        size=size,
        sha256=sha.lower() if sha else None,
        note=raw.get("note", ""),
    )


def parse_manifest(data: dict[str, Any]) -> Manifest:
    """A Manifest from the JSON object; raises StableSRError naming what is wrong."""
    if data.get("format") != MANIFEST_FORMAT:
        raise StableSRError(f"weights manifest: format {data.get('format')!r}, expected {MANIFEST_FORMAT!r}; reinstall stablesr")
    try:
        files = {name: _file_spec(name, raw) for name, raw in data["files"].items()}
        models = {
            name: ModelSpec(
                facts=ModelFacts(
                    name=name,
                    prediction=raw["prediction"],
                    native_tile=int(raw["tile_latent"]),
                    default_steps=int(raw["default_steps"]),
                    default_w=float(raw["default_w"]),
                    summary=raw.get("description", ""),
                ),
                file=files[raw["file"]],
                cfw_file=files[raw["cfw_file"]],
                licence=raw["licence"],
                upstream_config=raw.get("upstream_config", ""),
            )
            for name, raw in data["models"].items()
        }
    except (KeyError, TypeError, ValueError) as exc:
        raise StableSRError(f"weights manifest: malformed entry ({type(exc).__name__}: {exc}); reinstall stablesr") from None
    return Manifest(models=models, files=files, licence=dict(data.get("licence", {})), notes=tuple(data.get("notes", ())))


@lru_cache(maxsize=1)
def packaged_manifest() -> Manifest:
    """The manifest shipped inside the package (works from a wheel as well as from a checkout)."""
    text = resources.files("stablesr_cli").joinpath("data", "manifest.json").read_text(encoding="utf-8")
    return parse_manifest(json.loads(text))


def load_manifest() -> Manifest:
    """The manifest in use. Looks `packaged_manifest` up at call time, so that tests can stand in
    their own (tiny files under official names have other hashes than the published ones)."""
    return packaged_manifest()
