"""The CUDA path of both backends (marked `gpu`: skipped where PyTorch sees no GPU).

On a GPU the ONNX backend must really get the CUDA execution provider (a fallback to the CPU
there is a failure, not a skip), and both backends on the GPU must agree with PyTorch on the
CPU as the CPU backends agree with each other.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch

from app.kinds.memnet.engine import TorchMemNet
from app.kinds.memnet.onnx import OnnxMemNet
from app.kinds.vma.onnx import OnnxVMA
from app.worker.onnx import CUDA_EP, place
from models.checkpoint import load_checkpoint
from models.data.timeseries import mackey_glass
from models.export import graph_paths
from tests.conftest import REPO, drawings
from tests.e2e.test_serve import Serve

pytestmark = pytest.mark.gpu
SHIPPED = REPO / "checkpoints"
CUDA = torch.device("cuda:0")
TOL = 1e-4


def _stream(b: int = 8, t: int = 500) -> tuple[torch.Tensor, torch.Tensor]:
    mg = mackey_glass(2000)
    z = (mg - mg.mean()) / mg.std()
    x = torch.from_numpy(np.stack([z[i * 100 : i * 100 + t] for i in range(b)])).float().unsqueeze(-1)
    return x, torch.tensor([t, t, 300, 17, t, 1, 250, t])


def test_onnx_gets_the_cuda_provider() -> None:
    card = load_checkpoint("memnet-mackey-glass", SHIPPED)[1]
    placement = place("cuda:0", graph_paths(card, SHIPPED)["step"])
    assert placement.provider == CUDA_EP, placement.fallback


@pytest.mark.parametrize("backend", ["torch", "onnx"])
def test_memnet_on_the_gpu_matches_the_cpu(backend: str) -> None:
    model, card = load_checkpoint("memnet-mackey-glass", SHIPPED)
    reference = TorchMemNet(model, torch.device("cpu"))
    x, lengths = _stream()
    s_cpu = reference.initial_state(8)
    p_cpu = reference.run_steps(x, lengths, s_cpu)
    if backend == "torch":
        model_gpu, _ = load_checkpoint("memnet-mackey-glass", SHIPPED)
        engine: TorchMemNet | OnnxMemNet = TorchMemNet(model_gpu, CUDA)
        dev = CUDA
    else:
        paths = graph_paths(card, SHIPPED)
        engine, dev = OnnxMemNet(model, paths, place("cuda:0", paths["step"]), 1), torch.device("cpu")
    s_gpu = engine.initial_state(8, dev)
    p_gpu = engine.run_steps(x.to(dev), lengths.to(dev), s_gpu).cpu()
    live = torch.arange(x.shape[1])[None, :] < lengths[:, None]
    assert (p_cpu - p_gpu)[live].abs().max() <= TOL
    y = p_cpu[torch.arange(8), lengths - 1]
    f_cpu = reference.forecast(y, s_cpu, 25)
    f_gpu = engine.forecast(y.to(dev), s_gpu, 25).cpu()
    assert (f_cpu - f_gpu).abs().max() <= TOL


@pytest.mark.parametrize("backend", ["torch", "onnx"])
def test_vma_on_the_gpu_matches_the_cpu(backend: str) -> None:
    model, card = load_checkpoint("vma-omniglot", SHIPPED)
    m = torch.from_numpy(drawings(16, seed=3)).float().unsqueeze(1)
    noise = torch.randn(16, model.config.z_dim, generator=torch.Generator().manual_seed(0))
    h_cpu, e_cpu, x_cpu = model.memory_embedding(m), model.query_embedding(m), model.sample_from(m, noise)
    if backend == "torch":
        gpu, _ = load_checkpoint("vma-omniglot", SHIPPED, map_location="cuda:0")
        h, e, x = (
            gpu.memory_embedding(m.to(CUDA)),
            gpu.query_embedding(m.to(CUDA)),
            gpu.sample_from(m.to(CUDA), noise.to(CUDA)),
        )
    else:
        paths = graph_paths(card, SHIPPED)
        onnx_vma = OnnxVMA(model, paths, place("cuda:0", paths["decoder"]), 1)
        h, e, x = onnx_vma.memory_embedding(m), onnx_vma.query_embedding(m), onnx_vma.sample_from(m, noise)
    assert torch.allclose(h_cpu, h.cpu(), rtol=1e-5, atol=TOL)
    assert torch.allclose(e_cpu, e.cpu(), rtol=1e-5, atol=TOL)
    assert (x_cpu - x.cpu()).abs().max() <= TOL
    assert torch.equal(
        model.similarity(h_cpu, e_cpu).argmax(-1), model.similarity(h.cpu(), e.cpu()).argmax(-1)
    )


@pytest.fixture
def gpu_serve(tmp_path: Path) -> Iterator[Serve]:
    s = Serve(tmp_path / "data", tmp_path / "serve.log", backend="onnx", device="cuda:0")
    yield s
    s.interrupt()


def test_serve_on_the_gpu_reports_cuda(gpu_serve: Serve) -> None:
    ready = gpu_serve.wait_ready()
    (worker,) = ready["workers"]
    assert worker["provider"] == CUDA_EP and worker["device"] == "cuda:0" and worker["fallback"] is None
    sid = httpx.post(f"{gpu_serve.url}/v1/sessions", json={"kind": "memnet"}, timeout=10).json()["id"]
    r = httpx.post(
        f"{gpu_serve.url}/v1/sessions/{sid}/points", json={"values": [0.5, 0.6], "horizon": 5}, timeout=30
    )
    assert r.status_code == 200 and len(r.json()["forecast"]) == 5
