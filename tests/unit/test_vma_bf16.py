"""VMA's bfloat16 decoder (MEMSERVE_DECODER_PRECISION=bf16): close to float32 where it counts
(logits, the bound, samples), the prior cache keeps its maps at half the bytes, and the setting
resolves as documented."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from app.config import SettingsError
from app.kinds.vma.bf16 import Bf16Decoding
from app.kinds.vma.memory import PriorCache
from app.store.exemplars import pack_pixels
from app.worker.backends import Backend
from app.worker.onnx import CPU_EP, CUDA_EP, Placement
from models.vma_bf16 import Bf16Decoder, cpu_has_bf16_matrix_units
from tests.unit.test_vma_prior_cache import _engines, _images


@torch.inference_mode()
def test_bf16_logits_and_bound_stay_close_to_fp32_on_both_backends() -> None:
    torch_vma, onnx_vma = _engines()
    n, t, k = 16, 2, 2
    x = _images(n, 11)
    m_a = _images(n * t, 12).view(n, t, 1, 28, 28)  # (N T, 1, S, S) -> (N, T, 1, S, S)
    eps = torch.randn(n, t, k, torch_vma.config.z_dim, generator=torch.Generator().manual_seed(1))
    mu, _, c_m, feats = torch_vma.z_prior(m_a.flatten(0, 1))
    exact = torch_vma.decode(mu, c_m, feats)
    low = Bf16Decoder(torch_vma.decoder)(mu, c_m, feats)
    assert low.dtype == torch.float32 and low.shape == exact.shape and low.is_contiguous()
    gap = (low - exact).abs()
    assert gap.mean() < 0.08 and gap.max() < 0.8, (gap.mean(), gap.max())
    for base in (torch_vma, onnx_vma):
        fp32 = base.candidate_log_weights(x, m_a, k, eps=eps)  # (N, T) nats
        bf16 = Bf16Decoding(base, torch_vma)
        plain = bf16.candidate_log_weights(x, m_a, k, eps=eps)
        keys = [("s", i) for i in range(n * t)]
        packed = [pack_pixels(img.numpy()) for img in m_a.flatten(0, 1)]
        prior = PriorCache(64 << 20).lookup(bf16, "m", keys, packed, m_a.flatten(0, 1))
        cached = bf16.candidate_log_weights(x, m_a, k, eps=eps, prior=prior)
        assert torch.allclose(cached, plain, atol=1e-3, rtol=0), "the cache changes nothing"
        diff = (plain - fp32).abs()
        assert diff.mean() < 0.3 and diff.max() < 1.5, (diff.mean(), diff.max())
        assert not torch.equal(plain, fp32), "the decoder did run in bfloat16"
        one = bf16.log_weight(x, m_a[:, 0], eps[:, 0, 0])  # (N,): the composed single weights
        assert (one - base.log_weight(x, m_a[:, 0], eps[:, 0, 0])).abs().max() < 1.5


@torch.inference_mode()
def test_bf16_samples_are_the_fp32_samples_to_the_eye() -> None:
    torch_vma, onnx_vma = _engines()
    m_a = _images(8, 13)
    noise = torch.randn(8, torch_vma.config.z_dim, generator=torch.Generator().manual_seed(2))
    exact = onnx_vma.sample_from(m_a, noise)
    low = Bf16Decoding(onnx_vma, torch_vma).sample_from(m_a, noise)
    assert low.shape == exact.shape == (8, 28, 28)
    assert (low - exact).abs().max() < 0.05
    anchor = torch.ones(8)
    assert (
        Bf16Decoding(onnx_vma, torch_vma).sample_from(m_a, noise, anchor)
        - onnx_vma.sample_from(m_a, noise, anchor)
    ).abs().max() < 0.05


@torch.inference_mode()
def test_the_prior_cache_keeps_bf16_maps_at_half_the_bytes() -> None:
    torch_vma, _ = _engines()
    imgs = _images(4, 14)
    packed = [pack_pixels(img.numpy()) for img in imgs]
    keys = [("s", i) for i in range(4)]
    exact, low = PriorCache(64 << 20), PriorCache(64 << 20)
    exact.lookup(torch_vma, "m", keys, packed, imgs)
    _, _, _, feats = low.lookup(Bf16Decoding(torch_vma, torch_vma), "m", keys, packed, imgs)
    assert all(f.dtype == torch.bfloat16 for f in feats)
    assert all(f.is_contiguous(memory_format=torch.channels_last) for f in feats[:-1])
    assert 0.45 < low._bytes / exact._bytes < 0.6


def test_cpu_flags_tell_amx(tmp_path: Path) -> None:
    amx, plain = tmp_path / "amx", tmp_path / "plain"
    amx.write_text("processor : 0\nflags : fpu avx512f amx_bf16 amx_tile\n")
    plain.write_text("processor : 0\nflags : fpu avx512f avx512_bf16\n")
    assert cpu_has_bf16_matrix_units(amx) and not cpu_has_bf16_matrix_units(plain)
    assert not cpu_has_bf16_matrix_units(tmp_path / "absent")


def test_the_setting_resolves_per_worker() -> None:
    cpu, cuda = torch.device("cpu"), torch.device("cuda:0")
    assert Backend("torch", cpu, 1, decoder_precision="bf16").bf16_decoder()
    assert not Backend("torch", cpu, 1).bf16_decoder(), "fp32 unless asked"
    assert Backend("onnx", cpu, 1, decoder_precision="bf16", placement=Placement(CPU_EP, 0)).bf16_decoder()
    assert not Backend("onnx", cpu, 1, placement=Placement(CUDA_EP, 0)).bf16_decoder()
    gpu_onnx = Backend("onnx", cpu, 1, decoder_precision="bf16", placement=Placement(CUDA_EP, 0))
    for where in (Backend("torch", cuda, 1, decoder_precision="bf16"), gpu_onnx):
        with pytest.raises(SettingsError, match="MEMSERVE_DECODER_PRECISION"):
            where.bf16_decoder()
