"""Torch and ONNX Runtime backends give the same outputs on the same inputs, in process.

MemNet is compared in the model's own (z-scored) units, where float32 resolution means
something: max |torch - onnx| <= 1e-4 over 1,000-step streams in the regime each model was
trained on, and for forecasts up to 25 steps. Outside that (free-running far ahead, or a
stream unlike its training data) the Santa Fe model is chaotic: any two float32
implementations separate exponentially, which these tests do not hide but do not test.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from app.config import Settings, SettingsError
from app.kinds.memnet.engine import TorchMemNet
from app.kinds.memnet.onnx import OnnxMemNet
from app.kinds.vma.onnx import OnnxVMA
from app.worker import onnx as onnx_backend
from app.worker.backends import Backend, open_backend
from app.worker.onnx import CPU_EP, NO_GPU, nvidia_gpu_present, place
from models.checkpoint import load_checkpoint
from models.data.timeseries import load_series, mackey_glass
from models.export import CHUNK_STEPS, graph_paths
from models.memnet import MemNet
from models.vma import VMA
from tests.conftest import REPO, SHARED_DATA, drawings

SHIPPED = REPO / "checkpoints"
TOL = 1e-4


def _memnets(name: str) -> tuple[TorchMemNet, OnnxMemNet]:
    model, card = load_checkpoint(name, SHIPPED)
    assert isinstance(model, MemNet)
    paths = graph_paths(card, SHIPPED)
    return TorchMemNet(model, torch.device("cpu")), OnnxMemNet(model, paths, place("cpu", paths["step"]), 1)


def _compare_stream(name: str, z: np.ndarray, horizon: int) -> None:
    """Run a batch of windows of the z-scored series z through both backends."""
    _compare_engines(*_memnets(name), z, horizon)


def _compare_engines(torch_mn: TorchMemNet, onnx_mn: OnnxMemNet, z: np.ndarray, horizon: int) -> None:
    b, t = 6, 1000
    x = torch.from_numpy(np.stack([z[i * 150 : i * 150 + t] for i in range(b)])).float().unsqueeze(-1)
    lengths = torch.tensor([t, t - 1, 700, 1000, 17, 1])  # ragged: rows stop at different steps
    s_torch, s_onnx = torch_mn.initial_state(b), onnx_mn.initial_state(b)
    p_torch, sd_torch = torch_mn.run_steps(x, lengths, s_torch)
    p_onnx, sd_onnx = onnx_mn.run_steps(x, lengths, s_onnx)
    live = torch.arange(t)[None, :] < lengths[:, None]  # (B, T) steps each row really took
    assert (p_torch - p_onnx)[live].abs().max() <= TOL
    assert (sd_torch - sd_onnx)[live].abs().max() <= TOL
    assert torch.equal(s_torch.count, s_onnx.count) and torch.equal(s_torch.pos, s_onnx.pos)
    assert torch.equal(s_onnx.count, lengths.clamp(max=torch_mn.config.capacity))
    for f in ("h", "keys", "values", "stats"):
        assert (getattr(s_torch, f) - getattr(s_onnx, f)).abs().max() <= TOL, f
    y_last = p_torch[torch.arange(b), lengths - 1]
    f_torch = torch_mn.forecast(y_last, s_torch, horizon)
    f_onnx = onnx_mn.forecast(y_last, s_onnx, horizon)
    assert f_onnx.shape == (b, horizon, 1)
    assert (f_torch - f_onnx).abs().max() <= TOL
    if torch_mn.config.predict_scale:  # sampled forecast paths: the same noise, the same paths
        sd_last = sd_torch[torch.arange(b), lengths - 1]
        noise = torch.randn((b, 16, horizon, 1), generator=torch.Generator().manual_seed(1))
        paths_t = torch_mn.sample_paths(y_last, sd_last, s_torch, noise)
        paths_o = onnx_mn.sample_paths(y_last, sd_last, s_onnx, noise)
        assert paths_o.shape == (b, 16, horizon, 1)
        assert (paths_t - paths_o).abs().max() <= TOL * max(1.0, float(paths_t.abs().max()))
        assert float(paths_t[:, :, -1].std(dim=1).mean()) > 0  # the paths do spread


def test_memnet_blocks_of_steps_match_single_steps_and_torch() -> None:
    """A chunk of 21 steps runs as two calls of ``steps`` (K = 8) and five of ``step``; rows end
    inside a block, inside the single steps, and at the first step. Same as torch, and as the
    engine of a checkpoint exported before ``steps`` existed (every step through ``step``)."""
    model, card = load_checkpoint("memnet-universal", SHIPPED)
    assert isinstance(model, MemNet)
    paths = graph_paths(card, SHIPPED)
    placement = place("cpu", paths["step"])
    blocks = OnnxMemNet(model, paths, placement, 1)
    singles = OnnxMemNet(model, {"step": paths["step"]}, placement, 1)
    assert blocks.block == CHUNK_STEPS and singles.steps is None
    b, t = 5, 21
    x = torch.randn(b, t, 1, generator=torch.Generator().manual_seed(4))
    lengths = torch.tensor([21, 12, 17, 1, 16])
    live = torch.arange(t)[None, :] < lengths[:, None]  # (B, T)
    torch_mn = TorchMemNet(model, torch.device("cpu"))
    ref_state = torch_mn.initial_state(b)
    ref, ref_sd = torch_mn.run_steps(x, lengths, ref_state)
    for engine in (blocks, singles):
        state = engine.initial_state(b)
        pred, sd = engine.run_steps(x, lengths, state)
        assert (pred - ref)[live].abs().max() <= TOL and (sd - ref_sd)[live].abs().max() <= TOL
        assert torch.equal(state.count, ref_state.count) and torch.equal(state.pos, ref_state.pos)
        for f in ("h", "keys", "values", "stats"):
            assert (getattr(state, f) - getattr(ref_state, f)).abs().max() <= TOL, f


def test_memnet_mackey_glass_parity() -> None:
    mg = mackey_glass(2000)
    _compare_stream("memnet-mackey-glass", (mg - mg.mean()) / mg.std(), horizon=25)


def test_memnet_universal_parity_with_intervals_on_held_out_series() -> None:
    """Means, stds, iterated forecasts and sampled paths on two held-out generated series."""
    from models.data.corpus import heldout_series

    for _name, x, _ in heldout_series(seed=3, length=2000)[:2]:
        z = (x - x.mean()) / x.std()  # unit scale, so TOL means the same as for the others
        _compare_engines(*_memnets("memnet-universal"), z.astype(np.float32), horizon=25)


def test_memnet_universal_stream_of_zeros_is_finite_on_both_backends() -> None:
    for engine in _memnets("memnet-universal"):
        state = engine.initial_state(2)
        mean, std = engine.run_steps(torch.zeros(2, 5, 1), torch.tensor([5, 3]), state)
        assert torch.isfinite(mean).all() and torch.isfinite(std).all() and (std[:, :3] > 0).all()


def test_memnet_santafe_parity_on_a_periodic_stream() -> None:
    rng = np.random.default_rng(0)
    t = np.arange(2000)
    _compare_stream("memnet-santafe", np.sin(0.3 * t) + 0.05 * rng.standard_normal(2000), horizon=25)


@pytest.mark.data
@pytest.mark.skipif(
    not (SHARED_DATA / "timeseries" / "santafe_laser.npy").is_file(),
    reason="Santa Fe laser series not found (../shared/data/timeseries); CI has it",
)
def test_memnet_santafe_parity_on_the_laser_series() -> None:
    """The whole series as ten 1,000-step streams. The read of this model (sigma 0.1) is
    ill-conditioned at a few steps, where its normaliser sum_j s_j nears eps: there the
    backends' float32 rounding shows (largest difference measured: 2.2e-4)."""
    series, _ = load_series("santafe", SHARED_DATA)
    torch_mn, onnx_mn = _memnets("memnet-santafe")
    norm = load_checkpoint("memnet-santafe", SHIPPED)[1]["normalization"]
    z = (np.asarray(series, np.float32).reshape(-1) - norm["mean"][0]) / norm["std"][0]
    x = torch.from_numpy(z[:10_000].reshape(10, 1000, 1)).float()  # (10 streams, T, D)
    lengths = torch.full((10,), 1000)
    s_torch, s_onnx = torch_mn.initial_state(10), onnx_mn.initial_state(10)
    diff = (torch_mn.run_steps(x, lengths, s_torch)[0] - onnx_mn.run_steps(x, lengths, s_onnx)[0]).abs()
    assert (diff <= TOL).float().mean() >= 0.999
    assert diff.max() <= 10 * TOL


def test_memnet_single_step_from_any_state() -> None:
    torch_mn, onnx_mn = _memnets("memnet-santafe")
    torch.manual_seed(0)
    b = 5
    state = torch_mn.initial_state(b)
    state.h.normal_()
    state.keys.normal_()
    state.values.normal_()
    state.count = torch.tensor([0, 3, 64, 64, 10])
    state.pos = torch.tensor([0, 3, 0, 17, 10])
    other = state.clone()
    x = torch.randn(b, 1, 1)
    lengths = torch.ones(b, dtype=torch.int64)
    y_t, _ = torch_mn.run_steps(x, lengths, state)
    y_o, _ = onnx_mn.run_steps(x, lengths, other)
    assert (y_t - y_o).abs().max() <= 1e-5
    assert torch.equal(state.pos, other.pos) and torch.equal(state.count, other.count)


@pytest.fixture(scope="module")
def vmas() -> tuple[VMA, OnnxVMA]:
    model, card = load_checkpoint("vma-omniglot", SHIPPED)
    assert isinstance(model, VMA)
    paths = graph_paths(card, SHIPPED)
    return model, OnnxVMA(model, paths, place("cpu", paths["decoder"]), 1)


def _images(n: int, seed: int) -> torch.Tensor:
    return torch.from_numpy(drawings(n, seed=seed)).float().unsqueeze(1)  # (N, S, S) -> (N, 1, S, S)


def test_vma_embeddings_and_decoder_probabilities(vmas: tuple[VMA, OnnxVMA]) -> None:
    model, onnx_vma = vmas
    m = _images(12, seed=1)
    # Embeddings are O(100) here, where float32 steps by 1.5e-5: 1e-4 plus one part in a million.
    for fn in ("memory_embedding", "query_embedding"):
        ours, theirs = getattr(model, fn)(m), getattr(onnx_vma, fn)(m)
        assert torch.allclose(ours, theirs, rtol=1e-6, atol=TOL), fn
    with torch.inference_mode():
        mu, log_std, c_m, feats = model.z_prior(m)
        z = mu + log_std.exp() * torch.randn(mu.shape, generator=torch.Generator().manual_seed(0))
        p_torch = torch.sigmoid(model.decode(z, c_m, feats))
    p_onnx = torch.sigmoid(onnx_vma.decode(z, c_m, feats))
    assert (p_torch - p_onnx).abs().max() <= TOL
    noise = torch.randn(12, model.config.z_dim, generator=torch.Generator().manual_seed(1))
    assert (model.sample_from(m, noise) - onnx_vma.sample_from(m, noise)).abs().max() <= TOL
    anchor = torch.linspace(0, 1, 12)  # anchored samples read the z_posterior graph as well
    assert (model.sample_from(m, noise, anchor) - onnx_vma.sample_from(m, noise, anchor)).abs().max() <= TOL


def test_vma_class_ranking_and_bound(vmas: tuple[VMA, OnnxVMA]) -> None:
    model, onnx_vma = vmas
    memory, queries = _images(20, seed=2), _images(20, seed=2).roll(1, dims=3)
    rank = []
    for engine in (model, onnx_vma):
        h = engine.memory_embedding(memory)
        logits = engine.similarity(h, engine.query_embedding(queries))  # (N, A)
        rank.append(logits.argsort(dim=-1, descending=True))
    assert torch.equal(rank[0], rank[1])
    m_a = memory[rank[0][:, :3]]  # (N, 3, 1, S, S): each query's top 3 addresses
    eps = torch.randn(20, 3, 4, model.config.z_dim, generator=torch.Generator().manual_seed(3))
    w_torch = model.candidate_log_weights(queries, m_a, 4, eps=eps)
    w_onnx = onnx_vma.candidate_log_weights(queries, m_a, 4, eps=eps)
    # A sum of 784 pixel log-probabilities (hundreds of nats): compared relative to its size.
    assert ((w_torch - w_onnx).abs() / w_torch.abs()).max() <= 1e-6
    # An export from before the one-graph bound: the three graphs composed give the same.
    paths = dict(graph_paths(load_checkpoint("vma-omniglot", SHIPPED)[1], SHIPPED))
    assert "log_weight" in paths, "the shipped export has the one-graph bound"
    del paths["log_weight"]
    older = OnnxVMA(model, paths, onnx_vma.placement, 1)
    w_older = older.candidate_log_weights(queries, m_a, 4, eps=eps)
    assert ((w_torch - w_older).abs() / w_torch.abs()).max() <= 1e-6


def test_placement_on_cpu_and_fallback_from_cuda() -> None:
    probe = graph_paths(load_checkpoint("memnet-santafe", SHIPPED)[1], SHIPPED)["step"]
    cpu = place("cpu", probe)
    assert cpu.provider == CPU_EP and cpu.fallback is None
    asked = place("cuda:0", probe)
    if asked.provider == CPU_EP:  # no usable GPU here: the CPU provider, and why
        assert asked.fallback and "CUDA execution provider" in asked.fallback


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads Linux device nodes")
def test_nvidia_gpu_present_reads_device_nodes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    (tmp_path / "nvidiactl").touch()  # the driver's control node alone is no GPU
    (tmp_path / "nvidia-uvm").touch()
    assert nvidia_gpu_present(tmp_path) is False
    (tmp_path / "nvidia0").touch()
    assert nvidia_gpu_present(tmp_path) is True
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert nvidia_gpu_present(tmp_path) is False
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    (tmp_path / "dxg").touch()  # WSL: no nvidia nodes whether or not there is a GPU
    assert nvidia_gpu_present(tmp_path) is None


def test_auto_does_not_try_cuda_on_a_host_without_a_gpu(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    tried: list[str] = []
    monkeypatch.setattr(onnx_backend, "nvidia_gpu_present", lambda: False)
    monkeypatch.setattr(onnx_backend, "_preload_cuda", lambda: tried.append("cuda") or [])
    model, card = load_checkpoint("memnet-santafe", SHIPPED)
    backend = open_backend(Settings(backend="onnx", device="auto"))
    with caplog.at_level(logging.INFO, logger="memserve.worker"):
        backend.serve(model, card, SHIPPED)
    assert tried == []
    assert backend.describe() == {"backend": "onnx", "device": "cpu", "provider": CPU_EP, "fallback": NO_GPU}
    [record] = caplog.records
    assert record.levelno == logging.INFO and record.getMessage() == f"onnx backend on cpu: {NO_GPU}"
    # A GPU asked for by name is still tried, and its absence said out loud.
    asked = place("cuda:0", graph_paths(card, SHIPPED)["step"])
    assert tried == ["cuda"]
    if asked.provider == CPU_EP:
        assert asked.fallback and "could not start" in asked.fallback


def test_onnx_worker_refuses_checkpoints_without_graphs(tmp_path: Path) -> None:
    model, card = load_checkpoint("memnet-santafe", SHIPPED)
    card.pop("onnx")
    backend = open_backend(Settings(backend="onnx", device="cpu"))
    with pytest.raises(
        SettingsError, match=r"memserve export --model memnet-santafe.*MEMSERVE_BACKEND=torch"
    ):
        backend.serve(model, card, tmp_path)


def test_backend_describes_where_it_runs() -> None:
    assert Backend("torch", torch.device("cpu"), 1).describe() == {
        "backend": "torch", "device": "cpu", "provider": None, "fallback": None,
    }  # fmt: skip
    model, card = load_checkpoint("memnet-santafe", SHIPPED)
    backend = open_backend(Settings(backend="onnx", device="cpu"))
    backend.serve(model, card, SHIPPED)
    assert backend.describe() == {"backend": "onnx", "device": "cpu", "provider": CPU_EP, "fallback": None}
