"""K steps in one pass (the exported ``steps`` graph's form) give what K calls of the step give."""

from __future__ import annotations

import pytest
import torch

from models.memnet import MemNet, MemNetConfig, MemNetState
from models.memnet_block import _stepwise, block_dist

UNIVERSAL = {"residual": True, "predict_scale": True, "scale_window": 9, "adaptive_std": 6}
CONFIGS = {
    "fixed-units": {},
    "session-scaled": UNIVERSAL,
    "softmax-read": {**UNIVERSAL, "read_eps": 0.0},
    "plain-sum": {"normalize_read": False},
}


def _model(extra: dict, capacity: int) -> MemNet:
    torch.manual_seed(0)
    config = MemNetConfig(input_dim=2, hidden_dim=12, key_dim=6, value_dim=5, capacity=capacity, **extra)
    model = MemNet(config).eval()
    torch.nn.init.normal_(model.out.weight, std=0.3)  # a residual head starts at zero
    return model


@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize("capacity", [7, 16, 3], ids=["wraps-in-block", "fills", "smaller-than-block"])
def test_block_equals_steps(name: str, capacity: int) -> None:
    """From an empty memory, a filling one and a full one; rows that stop inside a block, start
    late, skip steps, or sit out a whole block; the buffers wrap inside a block."""
    model = _model(CONFIGS[name], capacity)
    b, k = 6, 5
    gen = torch.Generator().manual_seed(1)
    ref = mine = model.initial_state(b)
    patterns = [
        torch.ones(b, k, dtype=torch.bool),
        torch.tensor(
            [
                [1, 1, 1, 0, 0],
                [0, 1, 1, 1, 1],
                [1, 0, 1, 0, 1],
                [0, 0, 0, 0, 0],
                [1, 1, 1, 1, 1],
                [1, 0, 0, 0, 0],
            ],
            dtype=torch.bool,
        ),
    ]
    with torch.inference_mode():
        for block in range(6):
            x = torch.randn(b, k, 2, generator=gen) * 3 + 1
            active = patterns[(block + 1) % 2]  # the first block starts with a row sitting out
            y_ref, std_ref, ref = _stepwise(model, x, ref, active)
            y, std, mine = block_dist(model, x, mine, active)
            live = active.unsqueeze(-1).expand_as(y)  # (B, K) -> (B, K, D)
            torch.testing.assert_close(y[live], y_ref[live], rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(std[live], std_ref[live], rtol=1e-5, atol=1e-5)
            assert torch.equal(mine.count, ref.count) and torch.equal(mine.pos, ref.pos)
            for field in ("h", "keys", "values", "stats"):
                torch.testing.assert_close(getattr(mine, field), getattr(ref, field), rtol=1e-5, atol=1e-5)
    assert int(ref.count.max()) == capacity  # the ring filled and wrapped


def test_block_leaves_the_input_state_untouched() -> None:
    model = _model(UNIVERSAL, 4)
    state = model.initial_state(3)
    with torch.inference_mode():
        _, _, state = _stepwise(model, torch.randn(3, 6, 2), state, torch.ones(3, 6, dtype=torch.bool))
        before = state.clone()
        block_dist(model, torch.randn(3, 4, 2), state, torch.ones(3, 4, dtype=torch.bool))
    for field in MemNetState._fields:
        assert torch.equal(getattr(state, field), getattr(before, field)), field
