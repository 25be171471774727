"""Tiny stand-in checkpoints carry official file names, but not the published bytes: tests that put
them through the store forget the manifest's recorded hashes and sizes for those names."""

from __future__ import annotations

from dataclasses import replace

from stablesr_cli.store import manifest as manifest_module

SR, CFW = "stablesr_turbo.ckpt", "vqgan_cfw_00011.ckpt"
_PACKAGED = manifest_module.packaged_manifest  # taken before any test stands in its own


def patch_manifest(monkeypatch, **changes_by_file: dict) -> None:
    """Use the packaged manifest with `changes_by_file[filename]` applied to those files' records."""
    manifest = _PACKAGED()
    files = dict(manifest.files)
    for filename, changes in changes_by_file.items():
        files[filename] = replace(files[filename], **changes)
    models = {
        name: replace(m, file=files[m.file.filename], cfw_file=files[m.cfw_file.filename]) for name, m in manifest.models.items()
    }
    patched = replace(manifest, files=files, models=models)
    monkeypatch.setattr(manifest_module, "packaged_manifest", lambda: patched)


def unpublished(monkeypatch, *filenames: str) -> None:
    """As if our manifest recorded no SHA-256 and no size for these files (default: turbo's two)."""
    patch_manifest(monkeypatch, **{name: {"sha256": None, "size": None} for name in (filenames or (SR, CFW))})
