"""`stamp.json`: the record a converted folder keeps of where its files came from and what they were.

Written last, after every converted file is in place, so a folder with a stamp is complete. For
each file it keeps the size and SHA-256 measured right after conversion: `weights list` and
loading compare sizes and headers (cheap), `weights verify` compares hashes (reads everything).
Folders written by earlier versions list file names only; they still load, and verify says that
their hashes were never recorded.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..atomic import atomic_write
from ..checkpoints.layout import FORMAT
from ..hashing import sha256_file
from .integrity import file_problem

STAMP_NAME = "stamp.json"
STAMP_FORMAT = FORMAT


@dataclass(frozen=True)
class Source:
    """The checkpoint a converted file was made from."""

    filename: str
    path: str
    sha256: str
    verified_by: str | None = None
    """'manifest', 'hub' or None (see fetch.FetchedFile)."""


@dataclass(frozen=True)
class RecordedFile:
    name: str
    size: int | None = None
    sha256: str | None = None
    """None in stamps written before hashes were recorded."""
    source: str | None = None


@dataclass(frozen=True)
class Stamp:
    source: str
    """File name of the (main) checkpoint the folder was converted from."""
    source_path: str | None
    source_sha256: str | None
    verified_by: str | None
    files: dict[str, RecordedFile] = field(default_factory=dict)

    def problems(self, folder: Path) -> dict[str, str]:
        """File name -> what is wrong, from sizes and headers only (no hashing)."""
        found = {}
        for name, recorded in self.files.items():
            problem = file_problem(folder / name, recorded.size)
            if problem is not None:
                found[name] = problem
        return found


def read_stamp(folder: Path) -> Stamp | None:
    """The folder's stamp, or None when there is none or it is unreadable (then the folder is not trusted)."""
    try:
        raw = json.loads((folder / STAMP_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(raw, dict) or raw.get("format") != STAMP_FORMAT:
        return None
    listed = raw.get("files", ())
    if isinstance(listed, list):  # the earlier layout: names only
        files = {str(name): RecordedFile(str(name)) for name in listed}
    elif isinstance(listed, dict):
        files = {str(name): _recorded(str(name), entry) for name, entry in listed.items()}
    else:
        return None
    return Stamp(
        source=str(raw.get("source", "")), source_path=raw.get("source_path"), source_sha256=raw.get("source_sha256"),
        verified_by=raw.get("verified_by"), files=files,
    )  # fmt: skip


def _recorded(name: str, entry: Any) -> RecordedFile:
    if not isinstance(entry, dict):
        return RecordedFile(name)
    size = entry.get("size")
    sha = entry.get("sha256")
    return RecordedFile(
        name, size if isinstance(size, int) and not isinstance(size, bool) else None,
        sha if isinstance(sha, str) else None, entry.get("source"),
    )  # fmt: skip


def write_stamp(folder: Path, source: Source, files: Iterable[Path], *, keep_others: bool = False, main: bool = True) -> Stamp:
    """Hash `files` (just written into `folder`) and record them with their source.

    `keep_others`: keep what an existing stamp says about other files (the diffusion model's files
    when a CFW checkpoint is added to a folder). `main`: this source is the folder's main checkpoint
    (the diffusion model); a CFW checkpoint added later leaves the folder's main source as it was.
    """
    earlier = read_stamp(folder) if keep_others else None
    entries = dict(earlier.files) if earlier else {}
    for path in files:
        path = Path(path)
        entries[path.name] = RecordedFile(path.name, path.stat().st_size, sha256_file(path), source.filename)
    top = earlier if earlier is not None and not main else None
    stamp = Stamp(
        source=top.source if top else source.filename,
        source_path=top.source_path if top else source.path,
        source_sha256=top.source_sha256 if top else source.sha256,
        verified_by=top.verified_by if top else source.verified_by,
        files=dict(sorted(entries.items())),
    )
    record = {
        "format": STAMP_FORMAT,
        "source": stamp.source,
        "source_path": stamp.source_path,
        "source_sha256": stamp.source_sha256,
        "verified_by": stamp.verified_by,
        "files": {
            f.name: {"size": f.size, "sha256": f.sha256, "source": f.source} for f in stamp.files.values()
        },
    }
    text = json.dumps(record, indent=2).encode("utf-8")
    atomic_write(folder / STAMP_NAME, lambda stream: stream.write(text), what="cache stamp")
    return stamp
