"""Resolve the user's --device / --dtype words into torch objects, once, with human errors."""

from __future__ import annotations

import torch

from .errors import OptionError
from .options import Precision

_DTYPES = {Precision.FP32: torch.float32, Precision.FP16: torch.float16, Precision.BF16: torch.bfloat16}


def resolve_device(name: str = "auto") -> torch.device:
    """'auto' -> the first CUDA device when there is one, else the CPU; 'cpu', 'cuda', 'cuda:N'."""
    name = (name or "auto").strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise OptionError(f"device {name!r} is not a device; use auto, cpu, cuda or cuda:N", options=("device",)) from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise OptionError(f"device {name}: this machine has no CUDA GPU usable by PyTorch; use device cpu", options=("device",))
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise OptionError(
                f"device {name}: only {torch.cuda.device_count()} CUDA device(s) present (cuda:0..)", options=("device",)
            )
    elif device.type != "cpu":
        raise OptionError(f"device {name!r} is not supported; use auto, cpu, cuda or cuda:N", options=("device",))
    return device


def resolve_dtype(name: str | Precision, device: torch.device) -> torch.dtype:
    """'auto' -> float16 on CUDA (upstream's DDPM scripts run under fp16 autocast), float32 on the CPU."""
    try:
        precision = Precision(name)
    except ValueError:
        allowed = ", ".join(p.value for p in Precision)
        raise OptionError(f"dtype {name!r} is not one of {allowed}", options=("dtype",)) from None
    if precision is Precision.AUTO:
        return torch.float16 if device.type == "cuda" else torch.float32
    if precision is Precision.FP16 and device.type == "cpu":
        raise OptionError(
            "dtype fp16 is not supported on the CPU (too slow and inexact there); use fp32 or bf16", options=("dtype",)
        )
    return _DTYPES[precision]
