"""The serving step (in place) gives exactly what the training step (functional) gives."""

from __future__ import annotations

import pytest
import torch

from models.memnet import MemNet, MemNetConfig


@pytest.mark.parametrize("masked", [False, True])
def test_step_in_place_equals_step(masked: bool) -> None:
    torch.manual_seed(0)
    model = MemNet(MemNetConfig(input_dim=2, hidden_dim=12, key_dim=6, value_dim=5, capacity=7)).eval()
    b = 5
    ref = model.initial_state(b)
    mine = model.initial_state(b).clone()
    with torch.inference_mode():
        for t in range(25):  # past the capacity: the ring wraps
            x = torch.randn(b, 2)
            active = (torch.rand(b) > 0.3) if masked and t % 3 else None
            y_ref, ref = model.step(x, ref, active)
            y = model.step_(x, mine, active)
            live = active if active is not None else torch.ones(b, dtype=torch.bool)
            torch.testing.assert_close(y[live], y_ref[live], rtol=0, atol=0)
            for name in ("h", "keys", "values", "count", "pos"):
                torch.testing.assert_close(getattr(mine, name), getattr(ref, name), rtol=0, atol=0)


def test_step_in_place_refuses_to_run_under_autograd() -> None:
    model = MemNet(MemNetConfig())
    with pytest.raises(AssertionError, match="inference"):
        model.step_(torch.zeros(1, 1), model.initial_state(1))
