"""The SFT layer: spatial feature transform of UNet features by the time-aware encoder's features.

Upstream implements it as a SPADE block (`ldm/modules/spade.py`); its checkpoint keys are
`spade.param_free_norm` (a GroupNorm WITH learned affine, despite the name), `spade.mlp_shared.0`,
`spade.mlp_gamma`, `spade.mlp_beta` (renamed to ours in checkpoints/keymap.py).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .layers import GroupNorm32


class SFTLayer(nn.Module):
    def __init__(self, channels: int, cond_channels: int, hidden: int = 128) -> None:
        super().__init__()
        self.norm = GroupNorm32(channels)
        self.shared = nn.Conv2d(cond_channels, hidden, 3, padding=1)
        self.gamma = nn.Conv2d(hidden, channels, 3, padding=1)
        self.beta = nn.Conv2d(hidden, channels, 3, padding=1)

    def forward(self, h: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        actv = F.relu(self.shared(cond))
        return self.norm(h) * (1 + self.gamma(actv)) + self.beta(actv)
