"""The serving step (in place) gives exactly what the training step (functional) gives."""

from __future__ import annotations

import pytest
import torch

from models.memnet import MemNet, MemNetConfig

UNIVERSAL = {"residual": True, "predict_scale": True, "scale_window": 9, "adaptive_std": 6}


@pytest.mark.parametrize("extra", [{}, UNIVERSAL], ids=["fixed-units", "session-scaled"])
@pytest.mark.parametrize("masked", [False, True])
def test_step_in_place_equals_step(masked: bool, extra: dict) -> None:
    torch.manual_seed(0)
    config = MemNetConfig(input_dim=2, hidden_dim=12, key_dim=6, value_dim=5, capacity=7, **extra)
    model = MemNet(config).eval()
    if extra:  # a residual head starts at zero: give it weights so the test sees them
        torch.nn.init.normal_(model.out.weight, std=0.3)
    b = 5
    ref = model.initial_state(b)
    mine = model.initial_state(b).clone()
    with torch.inference_mode():
        for t in range(25):  # past the capacity: the ring wraps
            x = torch.randn(b, 2)
            active = (torch.rand(b) > 0.3) if masked and t % 3 else None
            y_ref, std_ref, ref = model.step_dist(x, ref, active)
            y, std = model.step_(x, mine, active)
            live = active if active is not None else torch.ones(b, dtype=torch.bool)
            torch.testing.assert_close(y[live], y_ref[live], rtol=0, atol=0)
            torch.testing.assert_close(std[live], std_ref[live], rtol=0, atol=0)
            for name in ("h", "keys", "values", "count", "pos", "stats"):
                torch.testing.assert_close(getattr(mine, name), getattr(ref, name), rtol=0, atol=0)


def test_step_in_place_refuses_to_run_under_autograd() -> None:
    model = MemNet(MemNetConfig())
    with pytest.raises(AssertionError, match="inference"):
        model.step_(torch.zeros(1, 1), model.initial_state(1))
