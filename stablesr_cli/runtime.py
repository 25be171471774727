"""Resolve the user's --device / --dtype words into torch objects, once, with human errors."""

from __future__ import annotations

from pathlib import Path

import torch

from .errors import OptionError
from .options import Precision

_DTYPES = {Precision.FP32: torch.float32, Precision.FP16: torch.float16, Precision.BF16: torch.bfloat16}


def resolve_device(name: str = "auto") -> torch.device:
    """'auto' -> the first CUDA device, else Apple's GPU (MPS), else the CPU; 'cpu', 'cuda', 'cuda:N', 'mps'."""
    name = (name or "auto").strip().lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps" if _mps_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise OptionError(f"device {name!r} is not a device; use auto, cpu, cuda, cuda:N or mps", options=("device",)) from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise OptionError(f"device {name}: this machine has no CUDA GPU usable by PyTorch; use device cpu", options=("device",))
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise OptionError(
                f"device {name}: only {torch.cuda.device_count()} CUDA device(s) present (cuda:0..)", options=("device",)
            )
    elif device.type == "mps":
        if not _mps_available():
            raise OptionError(f"device {name}: Apple's Metal (MPS) backend is not available here; use device cpu", options=("device",))
    elif device.type != "cpu":
        raise OptionError(f"device {name!r} is not supported; use auto, cpu, cuda, cuda:N or mps", options=("device",))
    return device


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


# x86 CPU flags (as Linux names them in /proc/cpuinfo) of native bf16 matrix instructions: with them
# oneDNN runs bf16 convolutions and matmuls 5-8x faster than float32; without them bf16 is emulated
# and slower than float32.
BF16_MATRIX_FLAGS = ("amx_bf16", "avx512_bf16")


def cpu_flags(cpuinfo: str | None = None) -> set[str]:
    """The CPU's feature flags from /proc/cpuinfo (empty where there is none, e.g. macOS)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return set()
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            return set(line.partition(":")[2].split())
    return set()


def auto_dtype(device: torch.device | None = None, flags: set[str] | None = None) -> tuple[torch.dtype, str]:
    """What `--dtype auto` means on `device`, and why (one phrase for `stablesr info`)."""
    device = device or torch.device("cpu")
    if device.type in ("cuda", "mps"):
        return torch.float16, f"{device.type.upper()} GPU: fp16, as upstream's scripts run under fp16 autocast"
    found = [f for f in BF16_MATRIX_FLAGS if f in (cpu_flags() if flags is None else flags)]
    if found:
        return torch.bfloat16, f"CPU with native bf16 matrix instructions ({', '.join(found)})"
    return torch.float32, "CPU without native bf16 matrix instructions (amx_bf16, avx512_bf16): bf16 would be slower"


def resolve_dtype(name: str | Precision, device: torch.device) -> torch.dtype:
    """'auto' -> float16 on CUDA and MPS (upstream's DDPM scripts run under fp16 autocast); on the CPU bfloat16
    where it has native bf16 matrix instructions, else float32 (see `auto_dtype`)."""
    try:
        precision = Precision(name)
    except ValueError:
        allowed = ", ".join(p.value for p in Precision)
        raise OptionError(f"dtype {name!r} is not one of {allowed}", options=("dtype",)) from None
    if precision is Precision.AUTO:
        return auto_dtype(device)[0]
    if precision is Precision.FP16 and device.type == "cpu":
        raise OptionError(
            "dtype fp16 is not supported on the CPU (too slow and inexact there); use fp32 or bf16", options=("dtype",)
        )
    return _DTYPES[precision]
