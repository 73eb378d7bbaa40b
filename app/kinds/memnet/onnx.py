"""MemNet on ONNX Runtime: the exported ``step`` and ``steps`` graphs.

The recurrent state stays in ONNX Runtime values on the execution device between the steps
of a chunk (I/O binding), so a chunk costs one upload and one download of the ring buffers,
not one per step. A chunk runs K steps per call of ``steps`` (K = the graph's second input
axis) while K or more remain, then one per call of ``step``; checkpoints exported before
``steps`` existed run every step through ``step``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from torch import Tensor

from app.worker.onnx import Graph, Placement
from models.export import STEP_OUTPUTS
from models.memnet import MemNet, MemNetConfig, MemNetState

_STATE = ("h", "keys", "values", "count", "pos", "stats")


class OnnxMemNet:
    """MemNet's serving operations on the exported ``step`` graph."""

    def __init__(self, model: MemNet, paths: dict[str, Path], placement: Placement, threads: int) -> None:
        self.config: MemNetConfig = model.config
        self.step = Graph(paths["step"], placement, threads)
        self.steps = Graph(paths["steps"], placement, threads) if "steps" in paths else None
        self.block = int(self.steps.sess.get_inputs()[0].shape[1]) if self.steps else 0  # K
        self.placement = placement
        self._init = model.initial_state(1, device="cpu")

    def initial_state(self, batch_size: int, device: torch.device | str | None = None) -> MemNetState:
        """h = 0 and an empty memory, on the CPU."""
        return MemNetState.stack([self._init] * batch_size).clone()

    def _run(
        self, state: MemNetState, xs: np.ndarray, active: np.ndarray, feed: str = "inputs",
        eps: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
        """``len(active)`` steps from ``state`` (replaced by the final state); (y, std) (T, B, D).

        ``feed`` says what each step takes: ``inputs`` xs[t] (T, B, D); ``mean`` xs[0], then
        the previous step's y (an iterated forecast); ``sample`` xs[0], then y + std * eps[t]
        (a sampled path). The state stays on the execution device between steps.
        """
        dev, dev_id = self.placement.ort_device, self.placement.device_id
        vals = {n: ort.OrtValue.ortvalue_from_numpy(getattr(state, n).numpy(), dev, dev_id) for n in _STATE}
        ys: list[np.ndarray] = []
        stds: list[np.ndarray] = []
        start = 0
        if feed == "inputs" and self.steps is not None:
            while active.shape[0] - start >= self.block:
                span = slice(start, start + self.block)
                vals = self._block(vals, xs[span], active[span], ys, stds)
                start += self.block
        binding = self.step.sess.io_binding()
        y_prev: ort.OrtValue | None = None
        x_next = xs[0]
        for t in range(start, active.shape[0]):
            if feed == "mean" and y_prev is not None:
                binding.bind_ortvalue_input("x", y_prev)
            else:
                binding.bind_cpu_input("x", np.ascontiguousarray(xs[t] if feed == "inputs" else x_next))
            binding.bind_cpu_input("active", np.ascontiguousarray(active[t]))
            self._bind_state(binding, vals)
            self.step.sess.run_with_iobinding(binding)
            outs = binding.get_outputs()
            y_prev = outs[0]
            ys.append(y_prev.numpy())
            stds.append(outs[1].numpy())
            if feed == "sample":
                assert eps is not None, "sampled paths need eps"
                x_next = (ys[-1] + stds[-1] * eps[t + 1]).astype(np.float32)
            vals = dict(zip(_STATE, outs[2:], strict=True))
            binding.clear_binding_inputs()
            binding.clear_binding_outputs()
        for n in _STATE:
            setattr(state, n, torch.from_numpy(vals[n].numpy()))
        return np.stack(ys), np.stack(stds)  # T x (B, D) -> (T, B, D)

    def _bind_state(self, binding: ort.IOBinding, vals: dict[str, ort.OrtValue]) -> None:
        """The state's values as inputs, every output on the execution device (fresh each call:
        the outputs of one call are the next call's inputs)."""
        for n in _STATE:
            binding.bind_ortvalue_input(n, vals[n])
        for name in STEP_OUTPUTS:
            binding.bind_output(name, self.placement.ort_device, self.placement.device_id)

    def _block(
        self, vals: dict[str, ort.OrtValue], xs: np.ndarray, active: np.ndarray,
        ys: list[np.ndarray], stds: list[np.ndarray],
    ) -> dict[str, ort.OrtValue]:  # fmt: skip
        """K steps in one call of ``steps``: xs (K, B, D), active (K, B); appends each step's y
        and std (B, D) to ``ys`` and ``stds`` and returns the state after them."""
        assert self.steps is not None, "no steps graph"
        binding = self.steps.sess.io_binding()
        binding.bind_cpu_input("x", np.ascontiguousarray(xs.transpose(1, 0, 2)))  # (K, B, D) -> (B, K, D)
        binding.bind_cpu_input("active", np.ascontiguousarray(active.T))  # (K, B) -> (B, K)
        self._bind_state(binding, vals)
        self.steps.sess.run_with_iobinding(binding)
        outs = binding.get_outputs()
        ys.extend(outs[0].numpy().transpose(1, 0, 2))  # (B, K, D) -> K x (B, D)
        stds.extend(outs[1].numpy().transpose(1, 0, 2))
        return dict(zip(_STATE, outs[2:], strict=True))

    def run_steps(self, x: Tensor, lengths: Tensor, state: MemNetState) -> tuple[Tensor, Tensor]:
        """Step B sessions through x (B, T_max, D), row i for lengths[i] steps; state updated.

        Returns the predictions' means and stds, each (B, T_max, D).
        """
        t_max = x.shape[1]
        active = np.arange(t_max)[:, None] < lengths.cpu().numpy()[None, :]  # (T, 1) < (1, B) -> (T, B)
        xs = x.cpu().numpy().transpose(1, 0, 2)  # (B, T, D) -> (T, B, D)
        ys, stds = self._run(state, xs, active)
        ys, stds = ys.transpose(1, 0, 2), stds.transpose(1, 0, 2)  # (T, B, D) -> (B, T, D)
        return torch.from_numpy(ys.copy()), torch.from_numpy(stds.copy())

    def forecast(self, y_last: Tensor, state: MemNetState, horizon: int) -> Tensor:
        """Iterated forecast (B, horizon, D) after the last observed point; ``state`` is kept."""
        assert horizon >= 1, "horizon must be >= 1"
        if horizon == 1:
            return y_last.cpu().unsqueeze(1)  # (B, D) -> (B, 1, D)
        scratch = state.clone()
        b = y_last.shape[0]
        active = np.ones((horizon - 1, b), dtype=bool)
        ys, _ = self._run(scratch, y_last.cpu().numpy()[None], active, feed="mean")  # (H-1, B, D)
        out = np.concatenate([y_last.cpu().numpy()[None], ys]).transpose(1, 0, 2)  # (H, B, D) -> (B, H, D)
        return torch.from_numpy(out.copy())

    def sample_paths(self, y_last: Tensor, std_last: Tensor, state: MemNetState, noise: Tensor) -> Tensor:
        """As `MemNet.sample_paths`: (B, S, horizon, D) sampled futures from standard normal ``noise``."""
        b, n_paths, horizon, d = noise.shape
        rows = torch.arange(b).repeat_interleave(n_paths)  # (B S,)
        scratch = MemNetState(*(getattr(state, f)[rows].clone() for f in MemNetState._fields))
        eps = noise.cpu().numpy().reshape(b * n_paths, horizon, d).transpose(1, 0, 2)  # -> (H, B S, D)
        first = (y_last.cpu().numpy()[rows] + std_last.cpu().numpy()[rows] * eps[0]).astype(np.float32)
        paths = [first]
        if horizon > 1:
            active = np.ones((horizon - 1, b * n_paths), dtype=bool)
            ys, stds = self._run(scratch, first[None], active, feed="sample", eps=eps)  # (H-1, B S, D)
            paths += list(ys + stds * eps[1:])
        out = np.stack(paths).transpose(1, 0, 2)  # (H, B S, D) -> (B S, H, D)
        out = out.reshape(b, n_paths, horizon, d)  # (B S, H, D) -> (B, S, H, D)
        return torch.from_numpy(np.ascontiguousarray(out, dtype=np.float32))
