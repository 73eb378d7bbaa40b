"""The worker's cache of exemplars' p(z|m_a) and pyramids: the likelihood bound with it equals the
bound without it, on both backends, and the cache keeps to its key, its drawing and its budget."""

from __future__ import annotations

import numpy as np
import torch

from app.kinds.vma.memory import PriorCache
from app.kinds.vma.onnx import OnnxVMA
from app.store.exemplars import PIX_BYTES, pack_pixels
from app.worker.onnx import place
from models.checkpoint import load_checkpoint
from models.export import graph_paths
from models.vma import VMA
from tests.conftest import REPO, drawings

SHIPPED = REPO / "checkpoints"


def _engines() -> tuple[VMA, OnnxVMA]:
    model, card = load_checkpoint("vma-omniglot", SHIPPED)
    assert isinstance(model, VMA)
    paths = graph_paths(card, SHIPPED)
    return model.eval(), OnnxVMA(model, paths, place("cpu", paths["decoder"]), 1)


def _images(n: int, seed: int) -> torch.Tensor:
    return torch.from_numpy(drawings(n, seed).astype(np.float32)).unsqueeze(1)  # (n, 1, S, S)


@torch.inference_mode()
def test_the_bound_with_cached_priors_equals_the_bound_without() -> None:
    torch_vma, onnx_vma = _engines()
    n, t, k = 3, 2, 3
    x = _images(n, 1)
    m_a = _images(n * t, 2).view(n, t, 1, 28, 28)  # (N T, 1, S, S) -> (N, T, 1, S, S)
    eps = torch.randn(n, t, k, torch_vma.config.z_dim, generator=torch.Generator().manual_seed(0))
    keys = [("s", i) for i in range(n * t)]
    packed = [pack_pixels(img.numpy()) for img in m_a.flatten(0, 1)]
    for engine in (torch_vma, onnx_vma):
        cache = PriorCache(64 << 20)
        plain = engine.candidate_log_weights(x, m_a, k, eps=eps)  # (N, T)
        cold = cache.lookup(engine, "model", keys, packed, m_a.flatten(0, 1))
        warm = cache.lookup(engine, "model", keys, packed, m_a.flatten(0, 1))
        assert (cache.misses, cache.hits) == (n * t, n * t), "the second lookup is all hits"
        for prior in (cold, warm):
            cached = engine.candidate_log_weights(x, m_a, k, eps=eps, prior=prior)
            assert torch.allclose(cached, plain, atol=1e-3, rtol=0), (cached - plain).abs().max()
    # ONNX Runtime's one-graph bound and the torch model agree too (as without the cache).
    onnx_prior = PriorCache(64 << 20).lookup(onnx_vma, "m", keys, packed, m_a.flatten(0, 1))
    on_onnx = onnx_vma.candidate_log_weights(x, m_a, k, eps=eps, prior=onnx_prior)
    assert torch.allclose(on_onnx, torch_vma.candidate_log_weights(x, m_a, k, eps=eps), atol=1e-3, rtol=0)


@torch.inference_mode()
def test_a_hit_needs_the_same_model_and_drawing_and_the_budget_holds() -> None:
    torch_vma, _ = _engines()
    imgs = _images(4, 3)
    packed = [pack_pixels(img.numpy()) for img in imgs]
    assert all(len(p) == PIX_BYTES for p in packed)
    cache = PriorCache(64 << 20)
    first = cache.lookup(torch_vma, "a", [("s", 0)], packed[:1], imgs[:1])
    # Same session and exemplar id, another drawing (or another loaded model): computed afresh.
    other = cache.lookup(torch_vma, "a", [("s", 0)], packed[1:2], imgs[1:2])
    assert cache.misses == 2 and not torch.equal(first[0], other[0])
    assert torch.equal(other[0], torch_vma.z_prior(imgs[1:2])[0])
    cache.lookup(torch_vma, "b", [("s", 0)], packed[1:2], imgs[1:2])
    assert cache.misses == 3, "another model's entry is not this one's"
    # Room for two exemplars: the least recently used goes first.
    one = sum(t.numel() * 4 for t in (*first[:3], *first[3])) + PIX_BYTES
    small = PriorCache(2 * one + 10)
    small.lookup(torch_vma, "a", [("s", 0), ("s", 1)], packed[:2], imgs[:2])
    small.lookup(torch_vma, "a", [("s", 0)], packed[:1], imgs[:1])  # 0 used last
    small.lookup(torch_vma, "a", [("s", 2)], packed[2:3], imgs[2:3])  # evicts 1
    assert small._bytes <= small.max_bytes
    small.lookup(torch_vma, "a", [("s", 0), ("s", 1)], packed[:2], imgs[:2])
    assert (small.hits, small.misses) == (2, 4), "0 was kept, 1 was computed again"
