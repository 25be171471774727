"""Which worker processes a run starts: `--devices LIST|all` and `--workers N`, checked without torch."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from ..errors import OptionError

_DEVICE = re.compile(r"^(cpu|cuda|cuda:\d+|mps)$")


@dataclass(frozen=True)
class WorkerPlan:
    devices: tuple[str, ...]
    """One entry per worker; a device may appear more than once (two workers on one GPU)."""
    threads: tuple[int | None, ...]
    """torch CPU threads of each worker: CPU workers share the cores, others keep torch's default."""

    @property
    def count(self) -> int:
        return len(self.devices)


def plan_workers(*, devices: str | None, workers: int | None, device: str) -> WorkerPlan:
    """One worker on --device unless --devices or --workers asks for more."""
    if devices is not None and workers is not None:
        raise OptionError("--devices and --workers contradict each other; --devices cpu,cpu already means two workers")
    if devices is not None and device != "auto":
        raise OptionError("--device and --devices contradict each other; pass one of them")
    if workers is not None and workers < 1:
        raise OptionError(f"--workers {workers}: give at least 1")
    if devices is None:
        chosen = [device] * (workers or 1)
    elif devices.strip().lower() == "all":
        chosen = every_device()
    else:
        chosen = [name.strip().lower() for name in devices.split(",") if name.strip()]
        bad = [name for name in chosen if not _DEVICE.match(name)]
        if not chosen or bad:
            raise OptionError(
                f"--devices {devices!r}: give a comma-separated list such as cuda:0,cuda:1 or cpu,cpu, or all"
            )
    return WorkerPlan(tuple(chosen), _threads(chosen))


def every_device() -> list[str]:
    """`--devices all`: every CUDA GPU, else the one CPU (its cores are already all used by one worker)."""
    import torch  # only for `all`, which has to ask the driver

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return [f"cuda:{index}" for index in range(count)] or ["cpu"]


def _threads(devices: list[str]) -> tuple[int | None, ...]:
    on_cpu = [d for d in devices if _may_be_cpu(d)]
    if len(devices) == 1:
        return (None,)
    share = max(1, available_cores() // max(1, len(on_cpu)))
    return tuple(share if _may_be_cpu(d) else None for d in devices)


def _may_be_cpu(device: str) -> bool:
    # `auto` is the CPU on a machine without a GPU; sharing the cores is right there, harmless elsewhere.
    return device in ("cpu", "auto")


def available_cores() -> int:
    """OMP_NUM_THREADS when the user set it (a cluster's share), else the cores this process may use."""
    configured = os.environ.get("OMP_NUM_THREADS", "")
    if configured.isdigit() and int(configured) > 0:
        return int(configured)
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1
