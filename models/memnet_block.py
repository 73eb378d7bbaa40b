"""K steps of MemNet in one pass, laid out for the exported ``steps`` graph.

`MemNet.step_dist` writes each step's key-value pair into the ring buffers and then reads them.
In a graph, that write is a copy of both (B, N, D) buffers per step, and copies of 64 x 32 floats
per session were the largest single cost of a served step. A block of K steps here leaves the
buffers alone until its end: step t reads the old slots that no write of this block has reached
yet, plus the new pairs of the block's active steps up to t, kept beside the buffers. The read is
a sum over slots, so the two parts give the read of the written buffer; the buffers are written
once, after the last step. The numbers are those of K calls of `step_dist` up to the order of the
float32 sums (tests/unit/test_memnet_block.py).

It relies on the state's invariant that a memory fills in slot order (``pos == count`` until
it is full), which every state made by `MemNet.initial_state` and the steps keeps.
"""

from __future__ import annotations

import torch
from torch import Tensor

from models.memnet import MemNet, MemNetState


def block_dist(
    model: MemNet, x: Tensor, state: MemNetState, active: Tensor
) -> tuple[Tensor, Tensor, MemNetState]:
    """K steps: x (B, K, D), active (B, K) bool -> mean, std (B, K, D) and the state after them.

    As K calls of ``model.step_dist(x[:, t], state, active[:, t])``; the outputs of inactive
    steps are meaningless and their rows keep their state. The input state is not modified.
    """
    c = model.config
    b, k, _ = x.shape
    assert active.shape == (b, k) and active.dtype == torch.bool, "active must be (B, K) bool"
    if k > c.capacity:  # a block would overwrite its own pairs: step by step
        return _stepwise(model, x, state, active)
    written, ahead, old_live = _old_slots(model, state, active)
    new_live = active.unsqueeze(1)  # (B, K) -> (B, 1, K)
    # Keys along the last axis: ONNX Runtime broadcasts q over a contiguous run of N far faster than over Dk.
    keys_old = state.keys.transpose(1, 2)  # (B, N, Dk) -> (B, Dk, N)
    step_on = active.unsqueeze(2)  # (B, K) -> (B, K, 1)
    h, rows = state.h, state.stats.unbind(1)  # (B, STATS_ROWS, D) -> STATS_ROWS x (B, D)
    new_k: list[Tensor] = []
    new_v: list[Tensor] = []
    means: list[Tensor] = []
    stds: list[Tensor] = []
    for t in range(k):
        x_t, on = x[:, t], step_on[:, t]  # (B, D), (B, 1)
        z, m, s, framed = model._frame(x_t, rows[:3])
        q, k_t, v_t = model.qkv(torch.cat([z, h], dim=-1)).split(
            [c.key_dim, c.key_dim, c.value_dim], dim=-1
        )  # (B, D + H) -> (B, Dk), (B, Dk), (B, Dv)
        new_k.append(k_t.view(b, 1, 1, c.key_dim))  # (B, Dk) -> (B, 1, 1, Dk)
        new_v.append(v_t.view(b, 1, c.value_dim))  # (B, Dv) -> (B, 1, Dv)
        keys_new = torch.cat(new_k, dim=2)  # t + 1 x (B, 1, 1, Dk) -> (B, 1, t + 1, Dk)
        values_new = torch.cat(new_v, dim=1)  # t + 1 x (B, 1, Dv) -> (B, t + 1, Dv)
        q_col = q.view(b, c.key_dim, 1)  # (B, Dk) -> (B, Dk, 1)
        q_row = q.view(b, 1, 1, c.key_dim)  # (B, Dk) -> (B, 1, 1, Dk)
        log_old = model._log_similarity(q_col, keys_old, dim=-2)  # (B, Dk, 1) vs (B, Dk, N) -> (B, 1, N)
        log_new = model._log_similarity(q_row, keys_new)  # vs (B, 1, t + 1, Dk) -> (B, 1, t + 1)
        parts = (
            (log_old, old_live[:, t : t + 1], state.values),
            (log_new, new_live[:, :, : t + 1], values_new),
        )
        r = _read(model, parts)
        h_t = model.state_proj(torch.cat([h, r], dim=-1))  # (B, H + Dv) -> (B, H)
        mean, std = model._head(x_t, m, s, h_t)
        std, cal = model._adapt(x_t, rows[3:], framed[0], mean, std)
        h = torch.where(on, h_t, h)
        rows = tuple(torch.where(on, new, old) for new, old in zip((*framed, *cal), rows, strict=True))
        means.append(mean)
        stds.append(std)
    # The last step's new pairs are all K of them: (B, 1, K, Dk) -> (B, K, Dk), and (B, K, Dv).
    keys, values = _write(state, ahead, written, active, keys_new.squeeze(1), values_new)
    n = written[:, -1]  # (B,) pairs this block wrote
    count, pos = torch.clamp(state.count + n, max=c.capacity), (state.pos + n) % c.capacity
    stats = torch.stack(rows, dim=1)  # STATS_ROWS x (B, D) -> (B, STATS_ROWS, D)
    new_state = MemNetState(h=h, keys=keys, values=values, count=count, pos=pos, stats=stats)
    return torch.stack(means, dim=1), torch.stack(stds, dim=1), new_state  # K x (B, D) -> (B, K, D)


def _old_slots(model: MemNet, state: MemNetState, active: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Pairs written up to each step (B, K); each slot's place after pos (B, N); and whether an old
    slot still holds its pair at each step (B, K, N): filled, and not yet reached by this block."""
    written = torch.cumsum(active.long(), dim=1)  # (B, K), up to and including step t
    slots = model.slots.unsqueeze(0)  # (N,) -> (1, N)
    ahead = (slots - state.pos.unsqueeze(1)) % model.config.capacity  # (1, N) - (B, 1) -> (B, N)
    filled = slots < state.count.unsqueeze(1)  # (1, N) < (B, 1) -> (B, N)
    # (B, 1, N) & ((B, 1, N) >= (B, K, 1)) -> (B, K, N)
    return written, ahead, filled.unsqueeze(1) & (ahead.unsqueeze(1) >= written.unsqueeze(2))


def _read(model: MemNet, parts: tuple[tuple[Tensor, Tensor, Tensor], ...]) -> Tensor:
    """The normalised (or plain) read over several groups of slots: (log s (B, 1, n), live (B, 1, n)
    bool, values (B, n, Dv)) each -> r (B, Dv), as `MemNet._read` over their union."""
    c = model.config
    if c.normalize_read and c.read_eps == 0.0:  # the softmax form: shift by the largest live log s
        logs = [log_s.masked_fill(~live, float("-inf")) for log_s, live, _ in parts]
        top = torch.stack([lg.amax(-1, keepdim=True) for lg in logs]).amax(0)  # (B, 1, 1)
        weights = [torch.exp(lg - top) for lg in logs]
    else:
        weights = [torch.where(live, torch.exp(log_s), 0.0) for log_s, live, _ in parts]
    r = weights[0] @ parts[0][2]  # (B, 1, n) @ (B, n, Dv) -> (B, 1, Dv)
    total = weights[0].sum(-1, keepdim=True)  # (B, 1, 1)
    for w, (_, _, v) in zip(weights[1:], parts[1:], strict=True):
        r = r + w @ v
        total = total + w.sum(-1, keepdim=True)
    if c.normalize_read:
        r = r / (total + c.read_eps)
    return r.squeeze(1)  # (B, 1, Dv) -> (B, Dv)


def _write(
    state: MemNetState, ahead: Tensor, written: Tensor, active: Tensor,
    keys_new: Tensor, values_new: Tensor,
) -> tuple[Tensor, Tensor]:  # fmt: skip
    """The ring buffers with the block's pairs (B, K, Dk) and (B, K, Dv) written: active step t's
    pair lands on the slot written[t] - 1 places after pos."""
    # (B, N, 1) == (B, 1, K) -> (B, N, K): slot j got step t's pair; at most one t per slot (K <= N).
    target = torch.where(active, written - 1, -1)  # (B, K): the slot (places after pos) step t wrote
    picks = (ahead.unsqueeze(2) == target.unsqueeze(1)).to(keys_new.dtype)  # one-hot rows, 0 if unwritten
    keep = 1.0 - picks.sum(-1, keepdim=True)  # (B, N, 1): 1 where the slot keeps its pair
    # Exact: each slot gets 1 x its own value plus zeros (the buffers and new pairs are finite).
    keys = state.keys * keep + picks @ keys_new  # (B, N, K) @ (B, K, Dk) -> (B, N, Dk)
    values = state.values * keep + picks @ values_new  # (B, N, K) @ (B, K, Dv) -> (B, N, Dv)
    return keys, values


def _stepwise(
    model: MemNet, x: Tensor, state: MemNetState, active: Tensor
) -> tuple[Tensor, Tensor, MemNetState]:
    """`block_dist` as K calls of ``step_dist``, for a memory smaller than the block."""
    means, stds = [], []
    for t in range(x.shape[1]):
        mean, std, state = model.step_dist(x[:, t], state, active[:, t])
        means.append(mean)
        stds.append(std)
    return torch.stack(means, dim=1), torch.stack(stds, dim=1), state  # K x (B, D) -> (B, K, D)
