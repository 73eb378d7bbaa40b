"""MemNet's engines: what the runner asks of a backend (`MemNetEngine`), and the PyTorch one.

The ONNX Runtime engine is `app.kinds.memnet.onnx.OnnxMemNet`; a worker builds the one its
backend runs (`app.kinds.memnet.worker.serve`).
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch import Tensor

from models.memnet import MemNet, MemNetConfig, MemNetState


class TorchMemNet:
    """MemNet's serving operations in PyTorch, on the model's device (the torch backend)."""

    def __init__(self, model: MemNet, device: torch.device) -> None:
        self.model = model.to(device).eval()
        self.config = model.config

    def initial_state(self, batch_size: int, device: torch.device | str | None = None) -> MemNetState:
        return self.model.initial_state(batch_size, device)

    @torch.inference_mode()
    def run_steps(self, x: Tensor, lengths: Tensor, state: MemNetState) -> tuple[Tensor, Tensor]:
        """Step B sessions through x (B, T_max, D), row i for lengths[i] steps; ``state`` in place.

        Returns the predictions' means and stds, each (B, T_max, D).
        """
        b, t_max, dim = x.shape
        preds = torch.zeros((b, t_max, dim), dtype=torch.float32, device=x.device)
        stds = torch.zeros((b, t_max, dim), dtype=torch.float32, device=x.device)
        shortest = int(lengths.min())
        for t in range(t_max):
            active = None if t < shortest else lengths > t  # no masking while every row is live
            preds[:, t], stds[:, t] = self.model.step_(x[:, t], state, active)  # in place
        return preds, stds

    def forecast(self, y_last: Tensor, state: MemNetState, horizon: int) -> Tensor:
        return self.model.forecast(y_last, state, horizon)

    def sample_paths(self, y_last: Tensor, std_last: Tensor, state: MemNetState, noise: Tensor) -> Tensor:
        return self.model.sample_paths(y_last, std_last, state, noise.to(y_last.device)).cpu()


class MemNetEngine(Protocol):
    """What the runner asks of a backend (`TorchMemNet`, `app.kinds.memnet.onnx.OnnxMemNet`)."""

    config: MemNetConfig

    def initial_state(self, batch_size: int, device: torch.device | str | None = None) -> MemNetState: ...

    def run_steps(self, x: Tensor, lengths: Tensor, state: MemNetState) -> tuple[Tensor, Tensor]: ...

    def forecast(self, y_last: Tensor, state: MemNetState, horizon: int) -> Tensor: ...

    def sample_paths(self, y_last: Tensor, std_last: Tensor, state: MemNetState, noise: Tensor) -> Tensor: ...
