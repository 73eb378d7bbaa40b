"""MemNet: a recurrent cell with an external FIFO key-value memory (Dou & Principe, 2023).

The seed cell has five linear layers and no other nonlinearity::

    q_t, k_t, v_t = W_q [x_t; h_{t-1}],  W_k [x_t; h_{t-1}],  W_v [x_t; h_{t-1}]
    memory <- push (k_t, v_t)                      FIFO ring buffer of N slots, write first
    s_j   = exp(-||q_t - k_j||^2 / (2 sigma^2))    for every filled slot j
    r_t   = sum_j s_j v_j   (optionally / (sum_j s_j + eps))
    h_t   = W_h [h_{t-1}; r_t]
    y_t   = W_y h_t                                 prediction of x_{t+1}

Choices the seed leaves open, and what this implementation does:

* **q, k, v as one fused Linear.** ``qkv`` is a single ``nn.Linear(D + H, 2 Dk + Dv)`` whose
  output is split into q, k, v. Row blocks of one weight matrix are exactly three independent
  linear layers; fusing them saves two matmuls per step, which matters when serving.
* **sigma is learned** (``learn_sigma=True``) as a scalar log-width, so it stays positive and
  its gradient scales with sigma. The projections could absorb a fixed sigma, but a learned
  width lets the optimiser sharpen or widen every similarity at once, which trains faster.
  Start it small (``memserve train`` uses 0.1): freshly initialised keys lie close together,
  so with sigma = 1 every slot looks alike, a normalised read averages the whole memory and
  the current input is drowned out; a narrow kernel lets each step's own pair dominate the
  read first. On Mackey-Glass (same 1.6-minute budget) sigma 0.1 reached an 84-step NRMSE
  of 0.37 against 5.4 for sigma 1.
* **The read is normalised by default** (``normalize_read=True``):
  ``r_t = sum_j s_j v_j / (sum_j s_j + eps)``, a Nadaraya-Watson kernel average of the stored
  values. Quality: the read does not scale with how many slots are filled or how dense the
  keys are, so the short windows seen in training and the million-step streams seen in
  serving look alike to W_h. With the plain sum, a model that fit short training windows
  well (validation MSE 1e-3) drifted over a 3000-step test stream (one-step NRMSE 0.19,
  against 0.08 for the normalised read). Stability: r_t lies in the convex hull of the
  stored values, so it never exceeds the largest stored value (see below).
  ``normalize_read=False`` gives the plain seed sum.
* **Two forms of the normalised read.** ``read_eps > 0`` (default 1e-6, used by the shipped
  checkpoints) computes sum s v / (sum s + eps) directly. ``read_eps = 0`` computes the exact
  ratio as a softmax over log s_j = -||q - k_j||^2 / (2 sigma^2), i.e. with the largest
  log-similarity subtracted, so it cannot underflow. The direct form underflows to r = 0 once
  the query is ~8 sigma from every key; one Santa Fe run sat in that dead state for nine
  epochs (loss stuck at the variance) before recovering. ``memserve train --stable-read``
  selects it; in the one comparison made (Santa Fe) it reached a lower validation loss
  (0.025 against 0.032) but worse multi-step forecasts, so the shipped checkpoint keeps eps.
* **Initial state:** h_0 = 0, an empty memory (count 0, write position 0). Slots are filled
  in order 0, 1, ..., N-1 from an empty memory, so the filled slots are exactly
  ``j < count``. The first step writes (k_1, v_1) before reading, so a read always sees at
  least one pair.
* **Empty slots contribute nothing:** their similarity is replaced by 0 through a mask built
  from ``count``, so whatever finite numbers sit in unfilled slots never reach the output.
* **q and k start tied** (``tie_qk_init``): W_q is initialised equal to W_k, so each step
  reads its own, just written pair with similarity 1 and the input passes to the state
  almost linearly from the start; training then moves q away from k where useful.
* **Biases:** every Linear has a bias (``bias=True``); an affine map is still "linear" in the
  sense of the paper and lets z-scored inputs with a nonzero mean be fit.
* **Long streams stay bounded.** The cell is linear apart from the read, so the danger is
  the loop h -> (v, r) -> h. With a normalised read ||r_t|| <= max_j ||v_j|| and
  ``v_j = A_v [x_j; h_{j-1}]``, so ||h_t|| <= (||W_hh|| + ||W_hr|| ||W_vh||) max ||h|| +
  const * max ||x||. If that gain (``stability_gain()``) is below 1, h stays bounded for any
  bounded input stream (bias terms only add a constant). The recurrent block W_hh is
  initialised orthogonal and scaled to ``init_recurrent_gain`` < 1 so training starts inside
  that region, and ``memserve train`` penalises gain > 0.98 (``project_gain`` enforces it
  hard, at a measured cost in accuracy). The bound is sufficient, not necessary: the trained
  gain is recorded in the model card (Mackey-Glass 0.99, Santa Fe 1.03) and long-stream
  finiteness of the shipped checkpoints is covered by a unit test.
* **Per-session scaling** (``scale_window > 0``, the universal checkpoint). A series may
  arrive in any unit and at any level, so the cell never sees raw values: the state carries
  running statistics of the session's own stream, ``stats`` (B, 3, D) = (weight w, mean m,
  variance v), and each input is z-scored with them after they absorb it. They start empty
  (w = 0) and follow  w <- min(w + 1, scale_window), a = 1 / w, m <- m + a (x - m),
  v <- (1 - a) (v + a (x - m)^2):  the exact running mean and variance of everything seen
  while fewer than ``scale_window`` points arrived, then an exponentially weighted one with
  that window, so the frame follows a level that drifts or a variance that changes, slowly
  enough that keys written a few hundred steps ago still mean what they meant. The scale is
  s = sqrt(max(v + (scale_floor_rel m)^2, scale_floor_abs^2)): the floors only matter while the
  stream has shown no spread (the first point, a constant stretch) — they only keep 0 / 0 out,
  at the float32 resolution of the level — so a first point of 1e-3 or of 1e6 both give z = 0
  and a finite s. Since the statistics absorb x before it is scaled, |z| <= sqrt(w) for any
  jump, however large. Predictions are mapped back with the same s and m, so the model is
  invariant to the series' unit and offset (to float32 precision).
* **Residual output** (``residual``): the prediction is x_t + s W_y h_t rather than
  m + s W_y h_t. With W_y initialised to zero an untrained model is persistence, and a
  trained one only learns the correction to "no change": its worst case on a series unlike
  anything in training stays near the naive forecast instead of somewhere arbitrary.
* **Predictive scale** (``predict_scale``): W_y has a second block g, and the one-step
  predictive distribution is Gaussian with mean y_t and std s (softplus(g) + min_scale),
  trained by likelihood; intervals, anomaly flags and sampled forecast paths come from it.
  Without it ``step_dist`` reports a scale of 0 (no distribution). ``std_factor`` multiplies
  the std: ``memserve train`` fits it on the validation data after training, so that the
  80 % and 95 % intervals hold about that share of next values there (the robust loss the
  model is trained with leaves its std a little too small for heavy-tailed errors).
* **Per-session calibration** (``adaptive_std > 0``). A std that is right on average over the
  training corpus is too small on a series noisier or stranger than anything in it, and too
  large on a tame one. So each session also tracks q, a running mean of its own squared
  standardised one-step errors r^2 = ((x_t - mean_{t-1}) / std_{t-1})^2 (each capped at 25,
  so that an anomaly does not widen every later interval), and serves std * sqrt(q). q starts
  at 1 (the model's own std) with the weight of ``ADAPT_PRIOR`` points and then weighs the
  last ``adaptive_std`` errors: q <- q + (r^2 - q) / (min(w, adaptive_std) + ADAPT_PRIOR).
  The state keeps q - 1 and the last raw mean and std, rows 3 to 5 of ``stats``.
* **Inference** (``forecast``, ``sample_paths``) runs under ``torch.inference_mode()``.

``step`` is functional: it never writes into the tensors of the state it is given, so a
caller can keep the old state (e.g. to retry a job).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn

STATS_ROWS = 6  # per-session statistics: weight, mean, variance, q - 1, last mean, last raw std
ADAPT_PRIOR = 10.0  # points' worth of weight on q = 1 (the model's own std) in a new session
ERR_CAP = 25.0  # a squared standardised error counts at most this much in q
Rows = tuple[Tensor, ...]  # rows of ``stats``, each (B, D)


@dataclass
class MemNetConfig:
    """Hyper-parameters of a MemNet cell."""

    input_dim: int = 1  # D; output dim == input dim (next-step prediction)
    hidden_dim: int = 64  # H
    key_dim: int = 32  # Dk
    value_dim: int = 32  # Dv
    capacity: int = 64  # N ring-buffer slots
    sigma: float = 1.0  # initial (learn_sigma) or fixed Gaussian width
    learn_sigma: bool = True
    normalize_read: bool = True  # r = sum s v / (sum s + eps)
    read_eps: float = 1e-6  # > 0: s v / (s + eps); 0: exact ratio as a stable softmax
    bias: bool = True
    init_recurrent_gain: float = 0.9  # spectral norm of the h -> h block at init
    tie_qk_init: bool = True  # W_q starts equal to W_k (trained apart afterwards)
    residual: bool = False  # y = x + s W_y h (starts from persistence) instead of m + s W_y h
    predict_scale: bool = False  # W_y also gives the std of a Gaussian one-step prediction
    scale_window: int = 0  # > 0: per-session running z-scoring with this window (0: none)
    scale_floor_rel: float = 1e-6  # s >= this x |running mean|: below float32's resolution of it
    scale_floor_abs: float = 1e-8  # and s >= this, for a stream of zeros
    min_scale: float = 1e-3  # predicted std >= this x s
    std_factor: float = 1.0  # calibration of the predicted std, fitted on validation data after training
    adaptive_std: int = 0  # > 0: each session rescales the std by its own recent errors (this window)


@dataclass
class MemNetState:
    """Per-session recurrent state: hidden vector plus the key-value ring buffer."""

    h: Tensor  # (B, H) float32
    keys: Tensor  # (B, N, Dk) float32
    values: Tensor  # (B, N, Dv) float32
    count: Tensor  # (B,) int64, filled slots, <= N
    pos: Tensor  # (B,) int64, next slot to write
    stats: Tensor  # (B, STATS_ROWS, D) float32: w, m, v (scaling); q - 1, last mean, last raw std
    _fields: ClassVar[tuple[str, ...]] = ("h", "keys", "values", "count", "pos", "stats")

    @property
    def batch_size(self) -> int:
        return self.h.shape[0]

    def _map(self, fn) -> MemNetState:
        return MemNetState(*(fn(getattr(self, f)) for f in self._fields))

    def index(self, i: int) -> MemNetState:
        """Row ``i`` as a batch of one (views, not copies)."""
        return self._map(lambda t: t[i : i + 1])

    @classmethod
    def stack(cls, states: list[MemNetState]) -> MemNetState:
        """Concatenate states along the batch dimension."""
        assert len(states) > 0, "stack needs at least one state"
        fields = states[0]._fields
        return cls(*(torch.cat([getattr(s, f) for s in states], dim=0) for f in fields))

    def to(self, device: torch.device | str | None) -> MemNetState:
        return self._map(lambda t: t.to(device))

    def detach(self) -> MemNetState:
        """Cut the autograd history (truncated BPTT)."""
        return self._map(lambda t: t.detach())

    def clone(self) -> MemNetState:
        return self._map(lambda t: t.clone())


class MemNet(nn.Module):
    """The MemNet cell; see the module docstring for the equations and design choices."""

    def __init__(self, config: MemNetConfig) -> None:
        super().__init__()
        c = config
        assert c.input_dim > 0 and c.hidden_dim > 0, "dims must be positive"
        assert c.capacity > 0, "capacity must be positive"
        assert c.sigma > 0, "sigma must be positive"
        self.config = c
        # q, k, v: three linear layers on [x; h] stored as row blocks of one matrix.
        self.qkv = nn.Linear(c.input_dim + c.hidden_dim, 2 * c.key_dim + c.value_dim, c.bias)
        self.state_proj = nn.Linear(c.hidden_dim + c.value_dim, c.hidden_dim, c.bias)  # W_h
        assert c.scale_window >= 0, "scale_window must be >= 0 (0 turns scaling off)"
        n_out = 2 * c.input_dim if c.predict_scale else c.input_dim  # mean (+ scale) per channel
        self.out = nn.Linear(c.hidden_dim, n_out, c.bias)  # W_y
        log_sigma = torch.tensor(math.log(c.sigma), dtype=torch.float32)
        if c.learn_sigma:
            self.log_sigma = nn.Parameter(log_sigma)
        else:
            self.register_buffer("log_sigma", log_sigma)
        self.register_buffer("slots", torch.arange(c.capacity), persistent=False)
        self._init_weights()

    def _init_weights(self) -> None:
        c = self.config
        with torch.no_grad():
            w_hh = torch.empty(c.hidden_dim, c.hidden_dim)
            nn.init.orthogonal_(w_hh)
            # Orthogonal * gain has spectral norm exactly `gain`: starts contractive.
            self.state_proj.weight[:, : c.hidden_dim] = w_hh * c.init_recurrent_gain
            if c.residual:  # an untrained residual model is exactly persistence
                self.out.weight.zero_()
                if self.out.bias is not None:
                    self.out.bias.zero_()
            if c.tie_qk_init:
                # q_t == k_t at init, so the pair written this step is read with s = 1 and
                # x_t reaches h_t through a (nearly) linear path from the first update.
                self.qkv.weight[: c.key_dim] = self.qkv.weight[c.key_dim : 2 * c.key_dim]
                if self.qkv.bias is not None:
                    self.qkv.bias[: c.key_dim] = self.qkv.bias[c.key_dim : 2 * c.key_dim]

    # ------------------------------------------------------------------ state
    def initial_state(self, batch_size: int, device: torch.device | str | None = None) -> MemNetState:
        """h = 0 and an empty memory for ``batch_size`` sessions."""
        c = self.config
        device = device if device is not None else self.log_sigma.device
        return MemNetState(
            h=torch.zeros(batch_size, c.hidden_dim, device=device),
            keys=torch.zeros(batch_size, c.capacity, c.key_dim, device=device),
            values=torch.zeros(batch_size, c.capacity, c.value_dim, device=device),
            count=torch.zeros(batch_size, dtype=torch.long, device=device),
            pos=torch.zeros(batch_size, dtype=torch.long, device=device),
            stats=torch.zeros(batch_size, STATS_ROWS, c.input_dim, device=device),
        )

    # ------------------------------------------------------------------- cell
    def _log_similarity(self, q: Tensor, keys: Tensor, dim: int = -1) -> Tensor:
        """log s_j = -||q - k_j||^2 / (2 sigma^2), summed over the key axis ``dim`` (kept when it
        is not the last): q (..., 1, Dk) against keys (..., N, Dk) -> (..., N), or q (..., Dk, 1)
        against keys (..., Dk, N) with dim=-2 -> (..., 1, N)."""
        # The direct difference is exact at q == k and, on CPU, faster than a batched matvec.
        d = q - keys  # (..., 1, Dk) - (..., N, Dk) -> (..., N, Dk), or transposed
        return (d * d).sum(dim, keepdim=dim != -1) * (-0.5 * torch.exp(-2.0 * self.log_sigma))

    def _read(self, q: Tensor, keys: Tensor, values: Tensor, count: Tensor) -> Tensor:
        """Gaussian-similarity read over the filled slots; q (B, Dk) -> r (B, Dv)."""
        log_s = self._log_similarity(q.unsqueeze(1), keys)  # (B, 1, Dk) vs (B, N, Dk) -> (B, N)
        filled = self.slots.unsqueeze(0) < count.unsqueeze(1)  # (1, N) < (B, 1) -> (B, N)
        if self.config.normalize_read and self.config.read_eps == 0.0:
            # sum_j s_j v_j / sum_j s_j as a softmax of log s: the max is subtracted first, so a
            # query far from every key still reads its nearest keys instead of underflowing.
            w = log_s.masked_fill(~filled, float("-inf")).softmax(dim=-1)  # empty slots: 0
            return torch.bmm(w.unsqueeze(1), values).squeeze(1)  # (B, 1, N) @ (B, N, Dv) -> (B, Dv)
        s = torch.exp(log_s) * filled  # empty slots weigh exactly 0
        r = torch.bmm(s.unsqueeze(1), values).squeeze(1)  # (B, 1, N) @ (B, N, Dv) -> (B, Dv)
        if self.config.normalize_read:
            r = r / (s.sum(-1, keepdim=True) + self.config.read_eps)
        return r

    def _frame(self, x: Tensor, rows: Rows) -> tuple[Tensor, Tensor, Tensor, Rows]:
        """Absorb x (B, D) into the statistics rows (w, m, v), each (B, D): (z, mean m, scale s, new rows)."""
        c = self.config
        if c.scale_window == 0:  # fixed units (a checkpoint trained on one series)
            return x, torch.zeros_like(x), torch.ones_like(x), rows
        w, m, v = rows
        w = torch.clamp(w + 1.0, max=float(c.scale_window))
        a = 1.0 / w
        d = x - m
        m = m + a * d
        v = (1.0 - a) * (v + a * d * d)
        s = self._scale(m, v)
        return (x - m) / s, m, s, (w, m, v)

    def _head(self, x: Tensor, m: Tensor, s: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
        """Prediction (mean, std) in the input's units from the new hidden state h (B, H)."""
        c = self.config
        out = self.out(h)  # (B, D) or (B, 2 D)
        f = out[:, : c.input_dim]
        base = x if c.residual else m  # residual: a correction to "no change"
        mean = base + s * f
        if not c.predict_scale:
            return mean, torch.zeros_like(mean)
        g = out[:, c.input_dim :]
        return mean, (c.std_factor * s) * (nn.functional.softplus(g) + c.min_scale)

    def _adapt(self, x: Tensor, rows: Rows, w: Tensor, mean: Tensor, std: Tensor) -> tuple[Tensor, Rows]:
        """The served std and the new rows (q - 1, last mean, last raw std), each (B, D), from the old
        ones; see "Per-session calibration"."""
        c = self.config
        if c.adaptive_std == 0 or not c.predict_scale:
            return std, rows
        q, prev_mean, prev_std = rows[0] + 1.0, rows[1], rows[2]
        seen = prev_std > 0  # no error to learn from before the session's first prediction
        e = (x - prev_mean) / torch.where(seen, prev_std, 1.0)
        r2 = torch.clamp(e * e, max=ERR_CAP)
        n = torch.clamp(w, max=float(c.adaptive_std)) + ADAPT_PRIOR
        q = torch.where(seen, q + (r2 - q) / n, q)
        return std * torch.sqrt(q), (q - 1.0, mean, std)

    def step_dist(
        self, x: Tensor, state: MemNetState, active: Tensor | None = None
    ) -> tuple[Tensor, Tensor, MemNetState]:
        """One time step. x (B, D) -> (mean, std) of the next value, each (B, D), and the state.

        Rows where ``active`` is False keep their state unchanged (their outputs are
        meaningless). The input state's tensors are never modified. std is 0 for a model
        without ``predict_scale``.
        """
        c = self.config
        assert x.dim() == 2 and x.shape[1] == c.input_dim, f"x must be (B, {c.input_dim})"
        assert x.shape[0] == state.batch_size, "x and state batch sizes differ"
        rows = state.stats.unbind(1)  # (B, STATS_ROWS, D) -> STATS_ROWS x (B, D)
        z, m, s, framed = self._frame(x, rows[:3])
        q, k, v = self.qkv(torch.cat([z, state.h], dim=-1)).split(
            [c.key_dim, c.key_dim, c.value_dim], dim=-1
        )  # (B, D + H) -> (B, Dk), (B, Dk), (B, Dv)
        count = torch.clamp(state.count + 1, max=c.capacity)
        pos = (state.pos + 1) % c.capacity
        slot_k = state.pos.view(-1, 1, 1).expand(-1, 1, c.key_dim)  # (B,) -> (B, 1, Dk)
        slot_v = state.pos.view(-1, 1, 1).expand(-1, 1, c.value_dim)  # (B,) -> (B, 1, Dv)
        k = k.unsqueeze(1)  # (B, Dk) -> (B, 1, Dk)
        v = v.unsqueeze(1)  # (B, Dv) -> (B, 1, Dv)
        if active is not None:
            assert active.shape == (x.shape[0],), "active must be (B,) bool"
            # Inactive rows rewrite the pair already in their slot: a no-op write.
            keep = ~active.view(-1, 1, 1)  # (B,) -> (B, 1, 1)
            k = torch.where(keep, state.keys.gather(1, slot_k), k)
            v = torch.where(keep, state.values.gather(1, slot_v), v)
            count = torch.where(active, count, state.count)
            pos = torch.where(active, pos, state.pos)
        # Write before read; out-of-place scatter returns new tensors, the old state survives.
        keys = state.keys.scatter(1, slot_k, k)  # (B, N, Dk)
        values = state.values.scatter(1, slot_v, v)  # (B, N, Dv)
        r = self._read(q, keys, values, count)
        h = self.state_proj(torch.cat([state.h, r], dim=-1))  # (B, H + Dv) -> (B, H)
        mean, std = self._head(x, m, s, h)
        std, cal = self._adapt(x, rows[3:], framed[0], mean, std)
        stats = torch.stack([*framed, *cal], dim=1)  # STATS_ROWS x (B, D) -> (B, STATS_ROWS, D)
        if active is not None:
            h = torch.where(active.unsqueeze(1), h, state.h)
            stats = torch.where(active.view(-1, 1, 1), stats, state.stats)
        return mean, std, MemNetState(h=h, keys=keys, values=values, count=count, pos=pos, stats=stats)

    def step(self, x: Tensor, state: MemNetState, active: Tensor | None = None) -> tuple[Tensor, MemNetState]:
        """``step_dist`` without the std: x (B, D) -> y (B, D), the prediction of the next value."""
        y, _std, new = self.step_dist(x, state, active)
        return y, new

    def step_(self, x: Tensor, state: MemNetState, active: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``step_dist`` in place, for serving: the same numbers, without copying the ring buffers.

        Writes the new pair into ``state``'s own buffers and updates h, count, pos and stats
        in place; returns (mean, std), each (B, D). The caller must own ``state``'s tensors
        (the worker builds them for each batch). Rows where ``active`` is False are left
        exactly as they were.
        """
        c = self.config
        assert not torch.is_grad_enabled(), "step_ is for inference; train with step"
        assert x.dim() == 2 and x.shape[1] == c.input_dim, f"x must be (B, {c.input_dim})"
        assert x.shape[0] == state.batch_size, "x and state batch sizes differ"
        stat_rows = state.stats.unbind(1)  # (B, STATS_ROWS, D) -> STATS_ROWS x (B, D)
        z, m, s, framed = self._frame(x, stat_rows[:3])
        q, k, v = self.qkv(torch.cat([z, state.h], dim=-1)).split(
            [c.key_dim, c.key_dim, c.value_dim], dim=-1
        )  # (B, D + H) -> (B, Dk), (B, Dk), (B, Dv)
        rows = torch.arange(x.shape[0], device=x.device)
        if active is not None:
            assert active.shape == (x.shape[0],), "active must be (B,) bool"
            rows = rows[active]
            k, v = k[active], v[active]
        slot = state.pos[rows]
        state.keys[rows, slot] = k  # write before read
        state.values[rows, slot] = v
        state.count[rows] = torch.clamp(state.count[rows] + 1, max=c.capacity)
        state.pos[rows] = (slot + 1) % c.capacity
        # Inactive rows read too (their result is dropped): one batched read is cheaper than a gather.
        r = self._read(q, state.keys, state.values, state.count)
        h = self.state_proj(torch.cat([state.h, r], dim=-1))  # (B, H + Dv) -> (B, H)
        mean, std = self._head(x, m, s, h)
        std, cal = self._adapt(x, stat_rows[3:], framed[0], mean, std)
        stats = torch.stack([*framed, *cal], dim=1)  # STATS_ROWS x (B, D) -> (B, STATS_ROWS, D)
        if active is None:
            state.h.copy_(h)
            state.stats.copy_(stats)
        else:
            state.h[rows] = h[rows]
            state.stats[rows] = stats[rows]
        return mean, std

    def forward_dist(self, x: Tensor, state: MemNetState | None = None) -> tuple[Tensor, Tensor, MemNetState]:
        """Run a sequence: x (B, T, D) -> mean, std (B, T, D); step t predicts x[:, t + 1]."""
        assert x.dim() == 3 and x.shape[2] == self.config.input_dim, "x must be (B, T, D)"
        if state is None:
            state = self.initial_state(x.shape[0], x.device)
        means, stds = [], []
        for t in range(x.shape[1]):
            y, std, state = self.step_dist(x[:, t], state)
            means.append(y)
            stds.append(std)
        return torch.stack(means, dim=1), torch.stack(stds, dim=1), state  # T x (B, D) -> (B, T, D)

    def forward(self, x: Tensor, state: MemNetState | None = None) -> tuple[Tensor, MemNetState]:
        """Run a sequence: x (B, T, D) -> y (B, T, D); y[:, t] predicts x[:, t + 1]."""
        y, _std, state = self.forward_dist(x, state)
        return y, state

    def frame_scale(self, state: MemNetState) -> Tensor:
        """The scale s (B, D) of the session's frame after its last step (1 without scaling)."""
        c = self.config
        if c.scale_window == 0:
            return torch.ones_like(state.stats[:, 1])
        return self._scale(state.stats[:, 1], state.stats[:, 2])  # (B, 3, D) -> 2 x (B, D)

    def _scale(self, m: Tensor, v: Tensor) -> Tensor:
        """s from the running mean and variance, with floors for a stream with no spread yet."""
        c = self.config
        # The floor goes under the root: sqrt(0) is NaN under ONNX Runtime's CPU kernels (seen
        # on a stream of zeros), so the root never sees a value below scale_floor_abs^2.
        return torch.sqrt(torch.clamp(v + (c.scale_floor_rel * m).square(), min=c.scale_floor_abs**2))

    def rollout(self, y_last: Tensor, state: MemNetState, horizon: int) -> Tensor:
        """Iterated forecast with autograd (training); see ``forecast``."""
        assert horizon >= 1, "horizon must be >= 1"
        assert y_last.dim() == 2, "y_last must be (B, D)"
        outs = [y_last]
        y = y_last
        for _ in range(horizon - 1):
            y, state = self.step(y, state)
            outs.append(y)
        return torch.stack(outs, dim=1)  # horizon x (B, D) -> (B, horizon, D)

    def forecast(self, y_last: Tensor, state: MemNetState, horizon: int) -> Tensor:
        """Iterated forecast after the last observed point, without touching ``state``.

        ``y_last`` (B, D) is the prediction made at the last observed point; out[:, 0] is
        y_last and each later entry feeds the previous prediction back as the input.
        Returns (B, horizon, D).
        """
        with torch.inference_mode():
            return self.rollout(y_last, state, horizon)

    def sample_paths(self, y_last: Tensor, std_last: Tensor, state: MemNetState, noise: Tensor) -> Tensor:
        """Sampled futures after the last observed point: (B, S, horizon, D).

        ``noise`` (B, S, horizon, D) holds standard normal draws (the caller seeds them, so
        a repeated request gets the same paths on every backend). Path j of row i starts
        at y_last + std_last * noise[i, j, 0] and feeds each sampled value back as the next
        input, drawing the next value from the model's predictive Gaussian. The spread of
        the paths at step h is the model's uncertainty h steps ahead, grown through the
        recurrent state rather than assumed.
        """
        b, n_paths, horizon, d = noise.shape
        assert y_last.shape == (b, d) and std_last.shape == (b, d), "y_last, std_last must be (B, D)"
        with torch.inference_mode():
            rows = torch.arange(b, device=noise.device).repeat_interleave(n_paths)  # (B S,)
            st = MemNetState(*(getattr(state, f)[rows] for f in MemNetState._fields))
            eps = noise.reshape(b * n_paths, horizon, d)  # (B, S, H, D) -> (B S, H, D)
            x = y_last[rows] + std_last[rows] * eps[:, 0]  # (B S, D)
            outs = [x]
            for t in range(1, horizon):
                mean, std, st = self.step_dist(x, st)
                x = mean + std * eps[:, t]
                outs.append(x)
            return torch.stack(outs, dim=1).reshape(b, n_paths, horizon, d)  # (B S, H, D) -> (B, S, H, D)

    # ------------------------------------------------------------ diagnostics
    def gain(self) -> Tensor:
        """||W_hh|| + ||W_hr|| ||W_vh|| (spectral norms), differentiable; see ``stability_gain``."""
        c = self.config
        w_h = self.state_proj.weight
        w_vh = self.qkv.weight[2 * c.key_dim :, c.input_dim :]  # (Dv, H) block of W_v
        norm = torch.linalg.matrix_norm
        w_hh, w_hr = w_h[:, : c.hidden_dim], w_h[:, c.hidden_dim :]
        return norm(w_hh, ord=2) + norm(w_hr, ord=2) * norm(w_vh, ord=2)

    @torch.no_grad()
    def stability_gain(self) -> float:
        """Below 1, h stays bounded on any bounded input stream (needs ``normalize_read``).

        A sufficient, conservative condition: with a normalised read ||r_t|| <= max ||v_j||,
        so ||h_t|| <= gain * max ||h|| + const * max ||x||.
        """
        return float(self.gain())

    @torch.no_grad()
    def project_gain(self, max_gain: float) -> None:
        """Scale the h-row block of W_h (not its bias) so that ``gain() <= max_gain``.

        gain = ||W_hh|| + ||W_hr|| ||W_vh|| is linear in W_h, so one rescale lands on the bound.
        """
        g = float(self.gain())
        if g > max_gain:
            self.state_proj.weight.mul_(max_gain / g)

    @property
    def sigma(self) -> float:
        return float(torch.exp(self.log_sigma.detach()))
