"""The conv4 addressing nets and ink framing, and the two-stage trainer that builds on a checkpoint."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from models.checkpoint import load_checkpoint, save_checkpoint
from models.train_vma import main
from models.vma import VMA, VMAConfig
from models.vma_addressing import FrameInk
from tests.conftest import tiny_vma_training


def _glyph(top: int, left: int, size: int) -> torch.Tensor:
    """An L of side ``size`` and stroke size / 4 at (top, left) in a 28 x 28 frame: (1, 1, 28, 28)."""
    x, w = torch.zeros(1, 1, 28, 28), size // 4
    x[0, 0, top : top + size, left : left + w] = 1.0
    x[0, 0, top + size - w : top + size, left : left + size] = 1.0
    return x


def _ink_box(img: torch.Tensor) -> tuple[int, int, int, int]:
    rows, cols = (img[0, 0] > 0.5).nonzero(as_tuple=True)
    return int(rows.min()), int(rows.max()), int(cols.min()), int(cols.max())


def test_frame_centres_and_scales_the_ink():
    frame = FrameInk(28, 22)
    out = frame(_glyph(2, 1, 8))  # small, in the top-left corner
    r0, r1, c0, c1 = _ink_box(out)
    assert r1 - r0 + 1 == pytest.approx(22, abs=1) and c1 - c0 + 1 == pytest.approx(22, abs=1)
    assert (r0 + r1) / 2 == pytest.approx(13.5, abs=1) and (c0 + c1) / 2 == pytest.approx(13.5, abs=1)


def test_frame_makes_position_and_size_irrelevant():
    frame = FrameInk(28, 22)
    a, b, c = frame(_glyph(2, 1, 8)), frame(_glyph(15, 12, 8)), frame(_glyph(4, 4, 16))
    assert (a - b).abs().max() < 1e-5, "a shifted copy frames identically"
    assert (a - c).abs().mean() < 0.05, "a copy twice as large frames nearly identically"


def test_blank_drawing_is_left_alone():
    assert FrameInk(28, 22)(torch.zeros(2, 1, 28, 28)).abs().max() == 0


def test_conv4_model_round_trips_and_embeds_rows_independently(tmp_path: Path):
    torch.manual_seed(0)
    model = VMA(VMAConfig(address_net="conv4", address_channels=8, frame_span=22, channels=4, hidden_dim=16,
                          match_dim=8, z_dim=2))  # fmt: skip
    model.train()
    model.h_query(torch.rand(16, 1, 28, 28).round())  # moves batch norm's running statistics
    save_checkpoint(model, {"metrics": {}}, tmp_path, "c4")
    loaded, card = load_checkpoint("c4", tmp_path)
    assert card["config"]["address_net"] == "conv4" and card["config"]["frame_span"] == 22
    x = torch.rand(5, 1, 28, 28).round()
    model.eval()
    assert torch.equal(loaded.query_embedding(x), model.query_embedding(x)), "buffers are saved too"
    one_by_one = torch.cat([loaded.query_embedding(x[i : i + 1]) for i in range(5)])
    assert torch.allclose(one_by_one, loaded.query_embedding(x), atol=1e-5), "serving embeds rows alone"


def test_frame_span_needs_conv4():
    with pytest.raises(AssertionError, match="frame_span"):
        VMA(VMAConfig(frame_span=22))


def test_staged_training_keeps_the_generative_part_of_its_init(tmp_path: Path):
    common = tiny_vma_training(tmp_path)
    assert main(["vma", "--steps", "2", "--out", str(tmp_path / "a"), "--name", "base", *common]) == 0
    base, _ = load_checkpoint("base", tmp_path / "a")
    stage1 = ["--init", "base", "--init-dir", str(tmp_path / "a"), "--address-net", "conv4",
              "--address-channels", "8", "--frame-span", "20", "--vimco-weight", "0", "--class-weight", "1",
              "--select", "acc", "--ways", "4", "--name", "s1"]  # fmt: skip
    assert main(["vma", "--steps", "2", "--out", str(tmp_path / "b"), *stage1, *common]) == 0
    s1, card = load_checkpoint("s1", tmp_path / "b")
    assert card["config"]["address_net"] == "conv4" and card["training"]["vimco_weight"] == 0
    for name, t in base.state_dict().items():
        if not name.startswith(("h_mem", "h_query")):
            assert torch.equal(s1.state_dict()[name], t), f"{name} changed though only addressing trained"
    stage2 = ["--init", "s1", "--init-dir", str(tmp_path / "b"), "--class-weight", "1",
              "--hide-memory", "0.5", "--address-update", "wake", "--name", "s2"]  # fmt: skip
    assert main(["vma", "--steps", "2", "--out", str(tmp_path / "c"), *stage2, *common]) == 0
    s2, card = load_checkpoint("s2", tmp_path / "c")
    assert card["config"]["address_net"] == "conv4", "the init's addressing nets carry on"
    assert card["training"]["hide_memory"] == 0.5 and card["training"]["address_update"] == "wake"
    assert not torch.equal(s2.decoder.out.weight, s1.decoder.out.weight), "the joint stage trains the decoder"
    h_q1, h_q2 = s1.h_query.state_dict(), s2.h_query.state_dict()
    assert any(not torch.equal(h_q2[k], t) for k, t in h_q1.items()), "the joint stage trains h_q"


def test_frozen_addressing_keeps_h_and_its_statistics(tmp_path: Path):
    common = tiny_vma_training(tmp_path)
    s1 = ["--address-net", "conv4", "--address-channels", "8", "--vimco-weight", "0", "--class-weight", "1",
          "--ways", "4", "--name", "s1"]  # fmt: skip
    assert main(["vma", "--steps", "2", "--out", str(tmp_path / "a"), *s1, *common]) == 0
    frozen = ["--init", "s1", "--init-dir", str(tmp_path / "a"), "--freeze-addressing",
              "--hide-memory", "0.5", "--fresh", "post", "--name", "s2"]  # fmt: skip
    assert main(["vma", "--steps", "3", "--out", str(tmp_path / "b"), *frozen, *common]) == 0
    before, _ = load_checkpoint("s1", tmp_path / "a")
    after, card = load_checkpoint("s2", tmp_path / "b")
    assert card["training"]["freeze_addressing"] is True and card["training"]["fresh"] == ["post"]
    for name, t in before.state_dict().items():
        if name.startswith(("h_mem", "h_query")):
            assert torch.equal(after.state_dict()[name], t), f"{name} moved though addressing is frozen"
    assert not torch.equal(after.e_prior, before.e_prior), "the prior over addresses still trains"
