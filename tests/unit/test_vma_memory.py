"""The worker's device-side cache of VMA memories."""

from __future__ import annotations

import numpy as np
import torch

from app.kinds.vma.memory import MemoryCache, to_device
from app.store.exemplars import Memory, pack_pixels
from models.vma import VMA, similarity
from tests.conftest import VMA_TEST_CONFIG, drawings


def _memory(n: int, seed: int = 0) -> Memory:
    imgs = drawings(n, seed=seed)
    model = VMA(VMA_TEST_CONFIG).eval()
    h = model.memory_embedding(torch.from_numpy(imgs.astype(np.float32)).unsqueeze(1)).numpy()
    return Memory(ids=np.arange(n) + 10, labels=[f"l{i % 2}" for i in range(n)], pix=pack_pixels(imgs), h=h)


def test_a_memory_on_the_device_has_labels_prior_and_pixels() -> None:
    torch.manual_seed(0)
    model = VMA(VMA_TEST_CONFIG).eval()
    stored = _memory(5)
    mem = to_device(stored, 3, "vma-test", model, torch.device("cpu"))
    assert mem.size == 5 and mem.version == 3 and mem.label_names == ["l0", "l1"]
    assert mem.label_idx.tolist() == [0, 1, 0, 1, 0]
    assert abs(float(mem.log_prior.exp().sum()) - 1.0) < 1e-5
    # the kept unit directions give the logits `similarity` gives from the embeddings themselves
    h, e = torch.from_numpy(stored.h), torch.randn(3, VMA_TEST_CONFIG.match_dim)
    assert torch.allclose(e @ mem.directions, similarity(h, e), atol=1e-5)
    np.testing.assert_array_equal(mem.pixels(np.array([4, 0]), torch.device("cpu"))[:, 0].numpy(),
                                  drawings(5, seed=0)[[4, 0]])  # fmt: skip
    assert mem.slot_of(12) == 2 and mem.slot_of(99) is None
    empty = to_device(Memory(np.zeros(0, np.int64), [], b"", np.zeros((0, 1), np.float32)), 0, "v", model,
                      torch.device("cpu"))  # fmt: skip
    assert empty.size == 0 and empty.directions.shape == (VMA_TEST_CONFIG.match_dim, 0)


def test_cache_hits_only_at_the_same_version_and_evicts_least_recent() -> None:
    model = VMA(VMA_TEST_CONFIG).eval()
    one = to_device(_memory(4), 1, "vma-test", model, torch.device("cpu"))
    cache = MemoryCache(max_bytes=int(one.nbytes * 2.5))
    cache.put("a", one)
    assert cache.get("a", 1) is one and cache.get("a", 2) is None
    cache.put("b", to_device(_memory(4, 1), 1, "vma-test", model, torch.device("cpu")))
    assert cache.get("a", 1) is one  # a is now the most recent
    cache.put("c", to_device(_memory(4, 2), 1, "vma-test", model, torch.device("cpu")))
    assert cache.get("b", 1) is None and cache.get("a", 1) is one and cache.get("c", 1) is not None
    assert (cache.hits, cache.misses) == (4, 2)
    tiny = MemoryCache(max_bytes=10)
    tiny.put("a", one)  # larger than the whole budget: not kept
    assert tiny.get("a", 1) is None
