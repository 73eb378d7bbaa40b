"""The moving-average network: its weights are the window's, newest last (uniform at init)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn


@dataclass
class MovAvgConfig:
    window: int = 3
    input_dim: int = 1


class MovAvg(nn.Module):
    weights: Tensor

    def __init__(self, config: MovAvgConfig) -> None:
        super().__init__()
        self.config = config
        self.register_buffer("weights", torch.full((config.window,), 1.0 / config.window))

    def forward(self, recent: Tensor) -> Tensor:
        """The weighted average of ``recent`` (its last ``window`` values at most, newest last)."""
        w = self.weights[-recent.shape[-1] :]
        return (recent * w).sum(-1) / w.sum()
