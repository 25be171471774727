"""Where the pipeline's Gaussian noise comes from (k-diffusion's `noise_sampler` idea).

The default source is ONE seeded CPU `torch.Generator`, drawn in upstream's order and shapes
(upstream's DDPM `_tile` script): per image or pixel patch, the posterior sample, then x_T (channels_last,
because upstream's `randn_like` follows its channels_last latent), then one draw per sampling step.
Drawing on the CPU makes the stream identical on every device; the tensors are then moved.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Protocol

import torch


class NoiseSource(Protocol):
    def draw(self, shape: Sequence[int], *, channels_last: bool = False) -> torch.Tensor:
        """A float32 CPU tensor of N(0, 1) values of `shape`."""
        ...

    def reseed(self) -> None:
        """Restart the stream (upstream re-seeds before every pixel patch)."""
        ...


def to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Move a CPU draw to `device` without making the host wait: a copy from pinned memory runs
    asynchronously on CUDA, a copy from ordinary (pageable) memory blocks until it is done."""
    if device.type == "cuda" and t.device.type == "cpu":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


class SeededNoise:
    def __init__(self, seed: int) -> None:
        self.seed = seed
        self.generator = torch.Generator(device="cpu")
        self.generator.manual_seed(seed)

    def draw(self, shape: Sequence[int], *, channels_last: bool = False) -> torch.Tensor:
        if channels_last and len(shape) == 4:
            # CPU normal_ fills a non-contiguous tensor element by element in memory order, which
            # yields different values (and consumes a different amount of state) than randn(shape)
            out = torch.empty(tuple(shape), memory_format=torch.channels_last)
            return out.normal_(generator=self.generator)
        return torch.randn(tuple(shape), generator=self.generator)

    def reseed(self) -> None:
        self.generator.manual_seed(self.seed)


class ReplayNoise:
    """Hands out recorded draws in order (the golden sampling cases record every upstream draw)."""

    def __init__(self, draws: Iterable[torch.Tensor]) -> None:
        self._recorded = list(draws)
        self._next = 0

    def draw(self, shape: Sequence[int], *, channels_last: bool = False) -> torch.Tensor:
        if self._next >= len(self._recorded):
            raise RuntimeError(f"all {len(self._recorded)} recorded noise draws are used up")
        value = self._recorded[self._next]
        self._next += 1
        if tuple(value.shape) != tuple(shape):
            raise RuntimeError(f"recorded draw {self._next - 1} has shape {tuple(value.shape)}, asked for {tuple(shape)}")
        return value

    def reseed(self) -> None:
        self._next = 0
