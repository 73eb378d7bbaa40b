"""The ONNX Runtime backend: the graphs `memserve export` wrote, run by onnxruntime(-gpu).

Sessions open with the CUDA execution provider when the worker's device asks for a GPU
(``auto`` or ``cuda:N``) and fall back to the CPU provider when CUDA cannot be used (no
GPU, or CUDA 13 / cuDNN 9 libraries missing); `Placement` records which one each worker got
and why, for its log and ``/health/ready``. Under ``auto`` a host that plainly has no NVIDIA
GPU does not try CUDA at all: loading its libraries there can only fail, noisily. The
arithmetic around the graphs (similarities, softmaxes, importance weights, label scores) is
the same PyTorch code the torch backend runs (`models.vma`), on the CPU: it is small next to
the graphs, and sharing it is what keeps the two backends equal.

MemNet steps keep the recurrent state in ONNX Runtime values on the execution device
between the steps of a chunk (I/O binding), so a chunk costs one upload and one download of
the ring buffers, not one per step.
"""

from __future__ import annotations

import io
import logging
import os
import sys
from contextlib import redirect_stdout
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch
from torch import Tensor

from models.export import STEP_OUTPUTS, feat_names
from models.memnet import MemNet, MemNetConfig, MemNetState
from models.vma import VMA, VMAConfig, decode_samples, importance_log_weights, similarity

log = logging.getLogger(__name__)

CUDA_EP = "CUDAExecutionProvider"
CPU_EP = "CPUExecutionProvider"
_STATE = ("h", "keys", "values", "count", "pos", "stats")


@dataclass(frozen=True)
class Placement:
    """Where ONNX Runtime runs a worker's graphs."""

    provider: str  # the execution provider sessions got
    device_id: int  # the GPU's ordinal for CUDA, 0 on the CPU
    fallback: str | None = None  # why the CUDA provider was asked for and not obtained

    @property
    def ort_device(self) -> str:
        return "cuda" if self.provider == CUDA_EP else "cpu"


def _options(threads: int) -> ort.SessionOptions:
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    # Spinning threads would burn the cores the API process and Redis share with the worker.
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.log_severity_level = 3
    return opts


NO_GPU = "no NVIDIA GPU on this host, so the CUDA execution provider was not tried"


def nvidia_gpu_present(dev: Path = Path("/dev")) -> bool | None:
    """Whether this host shows an NVIDIA GPU, asking no CUDA library; None where it cannot tell.

    On Linux the driver makes a ``/dev/nvidiaN`` node per GPU, and container runtimes pass
    exactly those nodes in. WSL reaches its GPUs through ``/dev/dxg`` instead, and other
    systems have neither: there only trying CUDA tells.
    """
    if os.environ.get("CUDA_VISIBLE_DEVICES", "unset").strip() in ("", "-1"):
        return False  # CUDA itself would see no device
    if not sys.platform.startswith("linux") or (dev / "dxg").exists():
        return None
    return any(n.name[len("nvidia") :].isdigit() for n in dev.glob("nvidia*"))


def place(device: str, probe: Path, threads: int = 1) -> Placement:
    """The provider for ``device`` (auto, cpu, cuda, cuda:N), trying CUDA on ``probe``, a graph file."""
    if device == "cpu":
        return Placement(CPU_EP, 0)
    device_id = int(device.split(":")[1]) if device.startswith("cuda:") else 0
    if CUDA_EP not in ort.get_available_providers():
        return Placement(CPU_EP, 0, "this onnxruntime build has no CUDA execution provider")
    # A GPU named in MEMSERVE_DEVICE is still tried where none shows: the failure then says
    # in full what is missing, which is what someone who asked for it needs to read.
    if device == "auto" and nvidia_gpu_present() is False:
        return Placement(CPU_EP, 0, NO_GPU)
    missing = _preload_cuda()
    ort.set_default_logger_severity(4)  # the failed provider load is reported once, below
    try:
        sess = ort.InferenceSession(
            str(probe), _options(threads), providers=[(CUDA_EP, {"device_id": device_id}), CPU_EP]
        )
    finally:
        ort.set_default_logger_severity(2)
    if sess.get_providers()[0] == CUDA_EP:
        return Placement(CUDA_EP, device_id)
    why = "; ".join(missing) if missing else "no usable GPU (or CUDA 13 / cuDNN 9 libraries missing)"
    return Placement(CPU_EP, 0, f"the CUDA execution provider could not start: {why}")


def _preload_cuda() -> list[str]:
    """Load CUDA and cuDNN from the nvidia-* wheels when installed; what could not be loaded."""
    if not hasattr(ort, "preload_dlls"):
        return []
    out = io.StringIO()
    try:
        with redirect_stdout(out):  # it prints each library it misses; we report them once
            ort.preload_dlls(directory="")
    except Exception as e:
        return [str(e)]
    return [line.split(":")[0] for line in out.getvalue().splitlines() if line.startswith("Failed to load")]


class Graph:
    """One ONNX Runtime session on the placement's provider."""

    def __init__(self, path: Path, placement: Placement, threads: int) -> None:
        providers: list[Any] = [CPU_EP]
        if placement.provider == CUDA_EP:
            providers = [(CUDA_EP, {"device_id": placement.device_id}), CPU_EP]
        self.sess = ort.InferenceSession(str(path), _options(threads), providers=providers)
        self.placement = placement
        self.outputs = [o.name for o in self.sess.get_outputs()]

    def __call__(self, **inputs: Tensor) -> list[Tensor]:
        feeds = {name: t.detach().cpu().contiguous().numpy() for name, t in inputs.items()}
        outs = self.sess.run(None, feeds)
        return [torch.from_numpy(o) for o in outs]


class OnnxMemNet:
    """MemNet's serving operations on the exported ``step`` graph."""

    def __init__(self, model: MemNet, paths: dict[str, Path], placement: Placement, threads: int) -> None:
        self.config: MemNetConfig = model.config
        self.step = Graph(paths["step"], placement, threads)
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
        binding = self.step.sess.io_binding()
        ys, stds = [], []
        y_prev: ort.OrtValue | None = None
        x_next = xs[0]
        for t in range(active.shape[0]):
            if feed == "mean" and y_prev is not None:
                binding.bind_ortvalue_input("x", y_prev)
            else:
                binding.bind_cpu_input("x", np.ascontiguousarray(xs[t] if feed == "inputs" else x_next))
            binding.bind_cpu_input("active", np.ascontiguousarray(active[t]))
            for n in _STATE:
                binding.bind_ortvalue_input(n, vals[n])
            for name in STEP_OUTPUTS:
                binding.bind_output(name, dev, dev_id)
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


class OnnxVMA:
    """VMA's serving operations on the exported graphs; the arithmetic between them is `models.vma`'s."""

    def __init__(self, model: VMA, paths: dict[str, Path], placement: Placement, threads: int) -> None:
        self.config: VMAConfig = model.config
        self.placement = placement
        self.graphs = {name: Graph(path, placement, threads) for name, path in paths.items()}
        self._e_prior = model.prior_query().detach().cpu().clone()
        self._feats = feat_names(model)

    def memory_embedding(self, m: Tensor) -> Tensor:
        """h(m_a) (N, match_dim) for exemplars m (N, 1, S, S)."""
        return self.graphs["memory_embedding"](m=m)[0]

    def query_embedding(self, x: Tensor) -> Tensor:
        """h_q(x) (N, match_dim) for queries x (N, 1, S, S)."""
        return self.graphs["query_embedding"](x=x)[0]

    def similarity(self, h_m: Tensor, e: Tensor) -> Tensor:
        return similarity(h_m, e)

    def prior_query(self) -> Tensor:
        return self._e_prior

    def z_prior(self, m_a: Tensor) -> tuple[Tensor, Tensor, Tensor, list[Tensor]]:
        mu, log_std, c_m, *feats = self.graphs["z_prior"](m_a=m_a)
        return mu, log_std, c_m, feats

    def z_posterior(self, x: Tensor, m_a: Tensor) -> tuple[Tensor, Tensor]:
        mu, log_std = self.graphs["z_posterior"](x=x, m_a=m_a)
        return mu, log_std

    def decode(self, z: Tensor, c_m: Tensor, feats: list[Tensor]) -> Tensor:
        return self.graphs["decoder"](z=z, c_m=c_m, **dict(zip(self._feats, feats, strict=True)))[0]

    def candidate_log_weights(
        self, x: Tensor, m_a: Tensor, samples: int, generator: torch.Generator | None = None,
        eps: Tensor | None = None,
    ) -> Tensor:  # fmt: skip
        """As `VMA.candidate_log_weights`."""
        if eps is None:
            shape = (*m_a.shape[:2], samples, self.config.z_dim)
            eps = torch.randn(shape, generator=generator)
        assert eps.shape[2] == samples, "eps must be (N, T, samples, z_dim)"
        return importance_log_weights(self, x, m_a, eps)

    def sample_from(self, m_a: Tensor, noise: Tensor) -> Tensor:
        """As `VMA.sample_from`."""
        return decode_samples(self, m_a, noise)
