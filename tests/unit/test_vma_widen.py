"""Widening a VMA's generative nets keeps what it computes and lets the new maps learn."""

from __future__ import annotations

import pytest
import torch

from models.vma import VMA, VMAConfig, decode_samples
from models.vma_widen import widen

SMALL = VMAConfig(channels=4, hidden_dim=16, match_dim=8, z_dim=4)


@pytest.fixture
def pair() -> tuple[VMA, VMA]:
    torch.manual_seed(0)
    narrow = VMA(SMALL).eval()
    return narrow, widen(narrow, 7).eval()


def _inputs(n: int = 6) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    x = (torch.rand(n, 1, 28, 28, generator=g) > 0.8).float()
    m_a = (torch.rand(n, 1, 28, 28, generator=g) > 0.8).float()
    return x, m_a, torch.randn(n, SMALL.z_dim, generator=g)


def test_the_wider_model_computes_the_same_bound_and_samples(pair: tuple[VMA, VMA]) -> None:
    narrow, wide = pair
    assert wide.config.channels == 7 and wide.decoder.ups[0].weight.shape == (14, 7, 3, 3)
    assert sum(p.numel() for p in wide.parameters()) > sum(p.numel() for p in narrow.parameters())
    x, m_a, eps = _inputs()
    with torch.inference_mode():
        torch.testing.assert_close(wide.log_weight(x, m_a, eps), narrow.log_weight(x, m_a, eps))
        torch.testing.assert_close(decode_samples(wide, m_a, eps), decode_samples(narrow, m_a, eps))
        torch.testing.assert_close(wide.query_embedding(x), narrow.query_embedding(x))


def test_the_weights_reading_new_maps_start_at_zero_and_get_gradients(pair: tuple[VMA, VMA]) -> None:
    _, wide = pair
    reads_new = wide.decoder.out.weight[:, 4:7]  # the decoder's last conv on [y, skip]: y's new maps
    assert not reads_new.any()
    x, m_a, eps = _inputs()
    wide.log_weight(x, m_a, eps).sum().backward()
    assert wide.decoder.out.weight.grad is not None and wide.decoder.out.weight.grad[:, 4:7].abs().sum() > 0


def test_channels_must_grow(pair: tuple[VMA, VMA]) -> None:
    narrow, _ = pair
    with pytest.raises(AssertionError, match="channels must grow"):
        widen(narrow, 4)
