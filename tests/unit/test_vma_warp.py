"""The decoder's warp of m_a's pyramid (`VMAConfig.decoder_warp`): rescaled and shifted per axis."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F

from models.checkpoint import load_checkpoint, read_card, save_checkpoint
from models.export import export_checkpoint, feat_names, graph_paths
from models.train_vma import main
from models.vma import VMA, AxisWarp, VMAConfig
from models.vma_bf16 import Bf16Decoder
from tests.conftest import tiny_vma_training

SMALL = VMAConfig(channels=4, hidden_dim=16, match_dim=8, z_dim=3)


def test_a_warp_at_its_start_computes_what_the_model_without_it_does():
    torch.manual_seed(0)
    plain = VMA(SMALL).eval()
    warped = VMA(dataclasses.replace(SMALL, decoder_warp=True)).eval()
    missing = warped.load_state_dict(plain.state_dict(), strict=False).missing_keys
    assert missing == ["decoder.warp.theta.weight", "decoder.warp.theta.bias"]
    m_a = torch.rand(6, 1, 28, 28).round()
    with torch.no_grad():
        _, _, c_m, feats = plain.z_prior(m_a)
        z = torch.randn(6, SMALL.z_dim)
        assert torch.allclose(plain.decode(z, c_m, feats), warped.decode(z, c_m, feats), atol=1e-5)


def test_a_shift_moves_a_map_by_whole_pixels():
    f = torch.zeros(1, 1, 7, 7)
    f[0, 0, 3, 2] = 1.0
    # Output pixel (y, x) reads input (y - 1, x + 2): one pixel is 2/7 in normalised units.
    t = torch.tensor([[1.0, 4.0 / 7, 1.0, -2.0 / 7]])
    out = AxisWarp(2, slant=False)(f, t)
    assert out[0, 0].argmax().item() == 4 * 7 + 0, "the dot moves two columns left and one row down"
    assert abs(out.sum().item() - 1.0) < 1e-5, "whole-pixel shifts keep the ink"


@pytest.mark.parametrize("slant", [False, True])
def test_the_warp_resamples_as_grid_sample_does(slant: bool):
    torch.manual_seed(3)
    f = torch.randn(5, 3, 14, 14)
    warp = AxisWarp(2, slant)
    t = warp.identity + 0.3 * torch.randn(5, len(warp.identity))
    u = (2 * torch.arange(14.0) + 1) / 14 - 1
    gx = (t[:, 0, None] * u + t[:, 1, None])[:, None, :].expand(-1, 14, -1)  # (N, s, s) along width
    if slant:
        gx = gx + (t[:, 4, None] * u)[:, :, None]  # each row shifted in proportion to its height
    gy = (t[:, 2, None] * u + t[:, 3, None])[:, :, None].expand(-1, -1, 14)
    grid = torch.stack([gx, gy], dim=-1)
    want = F.grid_sample(f, grid, mode="bilinear", padding_mode="border", align_corners=False)
    assert torch.allclose(warp(f, t), want, atol=1e-5)


def test_training_adds_the_warp_to_an_init_and_trains_it(tmp_path: Path):
    common = tiny_vma_training(tmp_path, eval_every=3)
    assert main(["vma", "--steps", "2", "--out", str(tmp_path / "a"), "--name", "base", *common]) == 0
    warp = ["--init", "base", "--init-dir", str(tmp_path / "a"), "--warp-slant", "--lr", "1e-2",
            "--name", "w"]  # fmt: skip
    assert main(["vma", "--steps", "3", "--out", str(tmp_path / "b"), *warp, *common]) == 0
    model, card = load_checkpoint("w", tmp_path / "b")
    assert card["config"]["decoder_warp"] is True and card["config"]["warp_slant"] is True
    warp = model.decoder.warp
    assert warp is not None and warp.theta.weight.abs().max() > 0, "the warp trains"


@pytest.mark.parametrize("slant", [False, True])
def test_the_exported_decoder_warps_as_the_network_does(tmp_path: Path, slant: bool):
    torch.manual_seed(1)
    model = VMA(dataclasses.replace(SMALL, decoder_warp=True, warp_slant=slant)).eval()
    assert model.decoder.warp is not None
    with torch.no_grad():
        model.decoder.warp.theta.weight.normal_(0.0, 0.3)  # far from the identity
    save_checkpoint(model, {"metrics": {}}, tmp_path, "w")
    export_checkpoint("w", tmp_path)
    paths = graph_paths(read_card("w", tmp_path), tmp_path)
    m_a = torch.rand(5, 1, 28, 28).round()
    with torch.no_grad():
        _, _, c_m, feats = model.z_prior(m_a)
        z = torch.randn(5, SMALL.z_dim)
        want = model.decode(z, c_m, feats)
    sess = ort.InferenceSession(str(paths["decoder"]), providers=["CPUExecutionProvider"])
    inputs = {"z": z, "c_m": c_m, **dict(zip(feat_names(model), feats, strict=True))}
    (got,) = sess.run(None, {k: v.numpy() for k, v in inputs.items()})
    assert np.abs(want.numpy() - got).max() < 1e-4


def test_the_bfloat16_decoder_warps_too():
    torch.manual_seed(2)
    model = VMA(dataclasses.replace(SMALL, decoder_warp=True, warp_slant=True)).eval()
    assert model.decoder.warp is not None
    with torch.no_grad():
        model.decoder.warp.theta.weight.normal_(0.0, 0.3)
    m_a = torch.rand(4, 1, 28, 28).round()
    with torch.no_grad():
        _, _, c_m, feats = model.z_prior(m_a)
        z = torch.randn(4, SMALL.z_dim)
        want = model.decode(z, c_m, feats)
    got = Bf16Decoder(model.decoder)(z, c_m, feats)
    gap = (got - want).abs()
    assert got.dtype == torch.float32 and gap.mean() < 0.02 and gap.max() < 0.2, (gap.mean(), gap.max())
