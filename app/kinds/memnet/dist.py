"""What a MemNet session's predictive distribution gives a client: intervals and anomaly flags.

The model predicts a Gaussian for each next value (mean and std). From it:

* **Prediction intervals** at the requested levels (percent): mean -/+ z_{(1+l)/2} std, exact
  for the one-step distribution.
* **Forecast intervals**: quantiles over sampled paths (`MemNet.sample_paths`), so they widen
  the way the model's own dynamics spread its uncertainty, not by a rule. The paths' noise
  comes from a generator seeded with the session id and its step, drawn per session, so a
  retried request gets the same intervals whatever else shares the worker's batch, and the
  torch and ONNX Runtime backends get the same draws.
* **Anomalies**: a point more than z_{0.995} = 2.576 predicted stds from the prediction made
  for it (outside its own 99 % one-step interval), from the session's 16th point on.
"""

from __future__ import annotations

import hashlib
from statistics import NormalDist
from typing import Any

import numpy as np
import torch

FORECAST_PATHS = 256  # sampled paths per forecast with intervals
ANOMALY_LEVEL = 99.0  # percent: a point outside this one-step interval is flagged
# A session's first points are never flagged: its scale rests on a handful of values (on one
# point it is only a floor), so "how many stds away" means nothing yet.
ANOMALY_WARMUP = 16
_NORMAL = NormalDist()


def z_of(level: float) -> float:
    """The two-sided standard normal quantile of ``level`` percent (95 -> 1.96)."""
    return _NORMAL.inv_cdf(0.5 + level / 200.0)


def level_key(level: float) -> str:
    """How a level names its interval in a reply: 80 -> "80", 99.5 -> "99.5"."""
    return f"{level:g}"


def gaussian_intervals(mean: np.ndarray, std: np.ndarray, levels: list[float]) -> dict[str, Any]:
    """{level: {lower, upper}} of the Gaussian (mean, std), arrays of mean's shape."""
    return {level_key(lv): {"lower": mean - z_of(lv) * std, "upper": mean + z_of(lv) * std} for lv in levels}


def path_intervals(paths: np.ndarray, levels: list[float]) -> dict[str, Any]:
    """{level: {lower, upper}} (horizon, D) as the central quantiles of paths (S, horizon, D)."""
    out = {}
    for lv in levels:
        tail = (1.0 - lv / 100.0) / 2.0
        lower, upper = np.quantile(paths, [tail, 1.0 - tail], axis=0)  # 2 x (horizon, D)
        out[level_key(lv)] = {"lower": lower.astype(np.float32), "upper": upper.astype(np.float32)}
    return out


def path_noise(sid: str, step: int, n_paths: int, horizon: int, dim: int) -> torch.Tensor:
    """Standard normal draws (S, horizon, D) for one session's forecast paths at ``step``."""
    seed = int.from_bytes(hashlib.blake2b(f"{sid}:{step}".encode(), digest_size=8).digest(), "little")
    gen = torch.Generator().manual_seed(seed & (2**63 - 1))
    return torch.randn((n_paths, horizon, dim), generator=gen)


def deviations(
    x: np.ndarray,
    means: np.ndarray,
    stds: np.ndarray,
    prev_mean: np.ndarray | None,
    prev_std: np.ndarray | None,
) -> np.ndarray:
    """(x_t - prediction for x_t) / its std for a chunk x (T, D); NaN where none was made.

    ``means``/``stds`` (T, D) are the predictions made at each point of the chunk (for the
    next one); the first point's prediction is the one the session made before the chunk.
    """
    nan = np.full(x.shape[1:], np.nan, np.float32)
    before_m = nan if prev_mean is None else prev_mean
    before_s = nan if prev_std is None else prev_std
    return batch_deviations(x[None], means[None], stds[None], before_m[None], before_s[None])[0]


def batch_deviations(
    x: np.ndarray, means: np.ndarray, stds: np.ndarray, prev_mean: np.ndarray, prev_std: np.ndarray
) -> np.ndarray:
    """`deviations` of B chunks at once: x, means, stds (B, T, D), the predictions made before
    the chunks (B, D), NaN in a row that has none."""
    pm = np.concatenate([prev_mean[:, None], means[:, :-1]], axis=1)  # (B, T, D): each point's prediction
    ps = np.concatenate([prev_std[:, None], stds[:, :-1]], axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        dev = (x - pm) / ps
    return np.where(ps > 0, dev, np.nan).astype(np.float32)


def anomalies(dev: np.ndarray, first_seq: int, level: float = ANOMALY_LEVEL) -> list[dict[str, Any]]:
    """The points outside their own ``level`` % one-step interval: index, seq, dim, scales away."""
    return batch_anomalies(dev[None], [first_seq], level)[0]


def batch_anomalies(
    dev: np.ndarray, first_seqs: list[int], level: float = ANOMALY_LEVEL
) -> list[list[dict[str, Any]]]:
    """`anomalies` of B chunks' deviations (B, T, D) at once (NaN, as in padding, is never one)."""
    with np.errstate(invalid="ignore"):
        hits = np.argwhere(np.abs(dev) > z_of(level))  # (hits, 3): row, t, d in row order
    out: list[list[dict[str, Any]]] = [[] for _ in first_seqs]
    for b, t, d in hits.tolist():
        seq = first_seqs[b] + t
        if seq >= ANOMALY_WARMUP:
            out[b].append({"index": t, "seq": seq, "dim": d, "scales": round(float(dev[b, t, d]), 3)})
    return out
