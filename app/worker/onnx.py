"""The ONNX Runtime backend: the graphs `memserve export` wrote, run by onnxruntime(-gpu).

Sessions open with the CUDA execution provider when the worker's device asks for a GPU
(``auto`` or ``cuda:N``) and fall back to the CPU provider when CUDA cannot be used (no
GPU, or CUDA 13 / cuDNN 9 libraries missing); `Placement` records which one each worker got
and why, for its log and ``/health/ready``. Under ``auto`` a host that plainly has no NVIDIA
GPU does not try CUDA at all: loading its libraries there can only fail, noisily. Each kind's
engine on these graphs is in its own folder (`app.kinds.memnet.onnx`, `app.kinds.vma.onnx`).
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

import onnxruntime as ort
import torch
from torch import Tensor

log = logging.getLogger(__name__)

CUDA_EP = "CUDAExecutionProvider"
CPU_EP = "CPUExecutionProvider"


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
