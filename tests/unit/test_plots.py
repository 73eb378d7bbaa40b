"""The evaluation picture is drawn from evaluate_memnet's traces."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from models.evaluate import evaluate_memnet
from models.memnet import MemNet, MemNetConfig

pytest.importorskip("matplotlib", reason="matplotlib is the optional `plot` extra")


def test_plot_of_a_small_model_is_a_png(tmp_path: Path) -> None:
    from models.plots import plot_memnet

    torch.manual_seed(0)
    model = MemNet(MemNetConfig(hidden_dim=8, key_dim=4, value_dim=4, capacity=8)).eval()
    series = np.sin(np.arange(600, dtype=np.float32) * 0.2).reshape(-1, 1)
    card = {"normalization": {"mean": [0.0], "std": [1.0]}}
    traces: dict = {}
    metrics = evaluate_memnet(
        model, card, series, 400, n_starts=5, horizons=(1, 10), warmup=100, progress=False, traces=traces
    )
    assert traces["model_fc"].shape == (5, 10, 1) and len(traces["one_step"]) == 200
    out = tmp_path / "m.png"
    plot_memnet(traces, metrics, "m", out)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000
