"""`--shard K/N`: one task of a job array takes every N-th input, the same ones on every run.

The inputs are put in order by their path relative to the folder they were found in (the path as
given for files named directly), then dealt out like cards: shard K takes positions K-1, K-1+N,
... So shards differ in size by one image at most, do not depend on the order of the arguments or
on the machine, and with --skip-existing any shard can be run again. Failures that concern the
command line itself (an input that names nothing) are reported by every shard.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import PurePath

from ..errors import OptionError
from ..cli.plan import Job

_SHARD = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*$")


@dataclass(frozen=True)
class Shard:
    number: int
    """1-based, as job arrays number their tasks (SLURM_ARRAY_TASK_ID=1..N)."""
    count: int

    def __str__(self) -> str:
        return f"{self.number}/{self.count}"


def parse_shard(text: str) -> Shard:
    match = _SHARD.match(text)
    if match is None:
        raise OptionError(f"--shard {text!r} is not K/N (for example --shard 2/8)")
    number, count = int(match[1]), int(match[2])
    if count < 1 or not 1 <= number <= count:
        raise OptionError(f"--shard {text}: K must be between 1 and N, and N at least 1 (for example --shard 2/8)")
    return Shard(number, count)


def shard_key(job: Job) -> tuple[str, str]:
    """Where a job's input sits in the shared order: relative path first, the full path to break ties."""
    source = job.source
    if source is None or source.path is None:
        return ("", job.label)
    full = PurePath(source.path)
    relative = full.relative_to(source.root) if source.root is not None else full
    return (relative.as_posix(), full.as_posix())


def select_shard(jobs: list[Job], shard: Shard) -> list[Job]:
    """The jobs of this shard, in the plan's order."""
    with_input = [job for job in jobs if job.source is not None]
    ordered = sorted(with_input, key=shard_key)
    mine = {id(job) for position, job in enumerate(ordered) if position % shard.count == shard.number - 1}
    return [job for job in jobs if job.source is None or id(job) in mine]
