"""MemNet cell: ring buffer, equivalences, masking, forecast, long-stream stability."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from models.memnet import MemNet, MemNetConfig, MemNetState

torch.set_num_threads(1)

SMALL = MemNetConfig(input_dim=2, hidden_dim=8, key_dim=4, value_dim=5, capacity=6)


def make_model(seed: int = 0, **overrides) -> MemNet:
    torch.manual_seed(seed)
    return MemNet(dataclasses.replace(SMALL, **overrides)).eval()


def run_steps(model: MemNet, x: torch.Tensor, state: MemNetState | None = None):
    state = state or model.initial_state(x.shape[0])
    ys = []
    for t in range(x.shape[1]):
        y, state = model.step(x[:, t], state)
        ys.append(y)
    return torch.stack(ys, dim=1), state


def assert_states_equal(a: MemNetState, b: MemNetState, exact: bool = True) -> None:
    for f in MemNetState._fields:
        ta, tb = getattr(a, f), getattr(b, f)
        if exact:
            assert torch.equal(ta, tb), f
        else:
            torch.testing.assert_close(ta, tb, msg=f)


@torch.no_grad()
def test_ring_buffer_evicts_oldest_fifo() -> None:
    model = make_model()
    n, k = SMALL.capacity, 3
    state = model.initial_state(1)
    written_keys, written_values = [], []
    for _ in range(n + k):
        x = torch.randn(1, SMALL.input_dim)
        _, key, value = model.qkv(torch.cat([x, state.h], -1)).split([4, 4, 5], -1)
        written_keys.append(key[0])
        written_values.append(value[0])
        _, state = model.step(x, state)
    assert int(state.count) == n
    assert int(state.pos) == k
    # Slot j holds the newest write that landed on it: writes k..n+k-1 survive.
    for j in range(n):
        i = j + n if j < k else j
        torch.testing.assert_close(state.keys[0, j], written_keys[i])
        torch.testing.assert_close(state.values[0, j], written_values[i])
    survivors = {tuple(t.tolist()) for t in state.keys[0]}
    for old in written_keys[:k]:
        assert tuple(old.tolist()) not in survivors


@torch.no_grad()
def test_step_equals_forward() -> None:
    model = make_model()
    x = torch.randn(3, 20, SMALL.input_dim)  # longer than capacity: wraps around
    y_seq, s_seq = model(x)
    y_step, s_step = run_steps(model, x)
    torch.testing.assert_close(y_seq, y_step)
    assert_states_equal(s_seq, s_step, exact=False)


@torch.no_grad()
def test_batch_equals_sessions_alone() -> None:
    model = make_model()
    x = torch.randn(4, 15, SMALL.input_dim)
    y_batch, s_batch = model(x)
    for i in range(4):
        y_one, s_one = model(x[i : i + 1])
        torch.testing.assert_close(y_batch[i : i + 1], y_one, rtol=1e-5, atol=1e-6)
        assert_states_equal(s_batch.index(i), s_one, exact=False)


@torch.no_grad()
def test_active_mask_freezes_inactive_rows() -> None:
    model = make_model()
    _, state = model(torch.randn(3, 3, SMALL.input_dim))
    before = state.clone()
    active = torch.tensor([True, False, True])
    _, new = model.step(torch.randn(3, SMALL.input_dim), state, active)
    assert_states_equal(state, before)  # functional: the input state is untouched
    assert_states_equal(new.index(1), before.index(1))
    assert not torch.equal(new.h[0], before.h[0])
    assert new.count.tolist() == [4, 3, 4]
    assert new.pos.tolist() == [4, 3, 4]


@torch.no_grad()
def test_empty_memory_and_garbage_in_empty_slots() -> None:
    model = make_model()
    state = model.initial_state(2)
    assert state.count.tolist() == [0, 0]
    x = torch.randn(2, SMALL.input_dim)
    y, new = model.step(x, state)
    assert torch.isfinite(y).all()
    assert new.count.tolist() == [1, 1]
    # Two filled slots; the rest hold garbage that must not change anything.
    _, s2 = model.step(torch.randn(2, SMALL.input_dim), new)
    dirty = s2.clone()
    dirty.keys[:, 2:] = torch.randn_like(dirty.keys[:, 2:]) * 100
    dirty.values[:, 2:] = torch.randn_like(dirty.values[:, 2:]) * 100
    x3 = torch.randn(2, SMALL.input_dim)
    y_clean, _ = model.step(x3, s2)
    y_dirty, _ = model.step(x3, dirty)
    torch.testing.assert_close(y_clean, y_dirty)


@pytest.mark.parametrize("normalize_read", [True, False])
@torch.no_grad()
def test_unnormalized_and_normalized_read_run(normalize_read: bool) -> None:
    model = make_model(normalize_read=normalize_read)
    y, _ = model(torch.randn(2, 12, SMALL.input_dim))
    assert torch.isfinite(y).all()


def test_forecast_keeps_state_and_starts_with_y_last() -> None:
    model = make_model()
    with torch.no_grad():
        y, state = model(torch.randn(2, 10, SMALL.input_dim))
    before = state.clone()
    out = model.forecast(y[:, -1], state, horizon=7)
    assert out.shape == (2, 7, SMALL.input_dim)
    torch.testing.assert_close(out[:, 0], y[:, -1])
    assert_states_equal(state, before)
    # Feeding back by hand gives the same path.
    with torch.no_grad():
        y1, _ = model.step(y[:, -1], state)
    torch.testing.assert_close(out[:, 1], y1)


def test_state_helpers() -> None:
    model = make_model()
    state = model.initial_state(3)
    assert state.batch_size == 3
    rows = [state.index(i) for i in range(3)]
    assert all(r.batch_size == 1 for r in rows)
    assert_states_equal(MemNetState.stack(rows), state)
    assert state.to("cpu").h.device.type == "cpu"


def test_gradients_flow_through_memory() -> None:
    model = make_model().train()
    y, _ = model(torch.randn(2, 10, SMALL.input_dim))
    y.square().mean().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


CHECKPOINTS = Path(__file__).resolve().parents[2] / "checkpoints"


def _long_stream_model(name: str) -> MemNet:
    """The shipped checkpoint if present, else a random-init model of the default size."""
    path = CHECKPOINTS / f"{name}.json"
    if not path.exists():
        torch.manual_seed(0)
        return MemNet(MemNetConfig()).eval()
    from models.checkpoint import load_checkpoint

    model, _ = load_checkpoint(path)
    assert isinstance(model, MemNet)
    return model


@pytest.mark.parametrize("name", ["memnet-mackey-glass", "memnet-santafe", "memnet-universal"])
@torch.inference_mode()
def test_long_stream_stays_finite(name: str) -> None:
    model = _long_stream_model(name)
    steps = 20_000
    t = torch.arange(steps, dtype=torch.float32)
    # Input regimes (z-units), batched: sine, noise, a large constant, zeros.
    xs = torch.stack([torch.sin(0.2 * t), torch.randn(steps), 3 * torch.ones(steps), 0 * t])
    xs = xs.unsqueeze(-1)  # (4, T) -> (4, T, 1)
    state = model.initial_state(4)
    for i in range(steps):
        y, state = model.step(xs[:, i], state)
    assert torch.isfinite(state.h).all() and torch.isfinite(y).all()
    assert state.h.abs().max() < 1e4
