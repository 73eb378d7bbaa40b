"""Simple forecasting baselines and the project's evaluation protocol for univariate series.

Conventions: ``x`` is a 1-D series; an *origin* s is the index of the last observed point, and
an h-step forecast from s predicts x[s + h] (h = 1..horizon) from x[..s] only.

``score_series`` is the protocol used across the project: fit on the first ``fit_frac`` of the
series, score one-step predictions and ``horizon``-step forecasts on the rest, report NRMSE
(RMSE / std of the scored targets) for the model under test and the baselines.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np


def _origins(x: np.ndarray, origins: np.ndarray, horizon: int) -> np.ndarray:
    s = np.asarray(origins, dtype=np.int64)
    assert s.ndim == 1, "origins must be 1-D"
    assert horizon >= 1, "horizon must be >= 1"
    assert len(s) == 0 or (s.min() >= 0 and s.max() < len(x)), "origins must index x"
    return s


def persistence(x: np.ndarray, origins: np.ndarray, horizon: int) -> np.ndarray:
    """Last-value forecast: x[s] for every step; (len(origins), horizon)."""
    x = np.asarray(x, dtype=np.float64)
    s = _origins(x, origins, horizon)
    return np.repeat(x[s][:, None], horizon, axis=1)


def seasonal_naive(x: np.ndarray, origins: np.ndarray, horizon: int, season: int) -> np.ndarray:
    """Same point one season earlier: x[s + h - season * ceil(h / season)];
    (len(origins), horizon). Needs s >= season - 1."""
    x = np.asarray(x, dtype=np.float64)
    s = _origins(x, origins, horizon)
    assert season >= 1, "season must be >= 1"
    h = np.arange(1, horizon + 1)
    back = h - season * (-(-h // season))  # h - season * ceil(h / season), in (-season, 0]
    idx = s[:, None] + back[None]
    assert len(s) == 0 or idx.min() >= 0, "seasonal naive needs origins >= season - 1"
    return x[idx]


class ARModel:
    """Univariate AR(order) with intercept, fitted by ridge regression on a z-scored copy.

    Minimises mean((z_t - b - sum_k w_k z_(t-k))^2) + alpha * |w|^2 over the fitting data,
    z = (x - mean) / std; the intercept b is not penalised. Fitting data shorter than
    3 * order reduce the order to max(1, len // 3) (``self.order`` is the order used).
    """

    def __init__(self, order: int = 20, alpha: float = 1e-3) -> None:
        assert order >= 1, "order must be >= 1"
        self.order = order
        self.alpha = alpha
        self.mean = 0.0
        self.std = 1.0
        self.coef_: np.ndarray | None = None  # w_1..w_order (z units; w_k multiplies z_(t-k))
        self.intercept_ = 0.0

    def fit(self, x_fit: np.ndarray) -> ARModel:
        """Fit on ``x_fit`` (1-D); returns self."""
        x = np.asarray(x_fit, dtype=np.float64)
        assert x.ndim == 1 and len(x) >= 3, "need a 1-D fitting series of >= 3 points"
        assert np.isfinite(x).all(), "fitting data must be finite"
        if len(x) < 3 * self.order:
            self.order = max(1, len(x) // 3)
        p = self.order
        self.mean = float(x.mean())
        sd = float(x.std())
        self.std = sd if sd > 0 else 1.0
        z = (x - self.mean) / self.std
        rows = np.arange(p, len(z))
        feats = z[rows[:, None] - np.arange(1, p + 1)[None]]  # (N, p): z_(t-1) .. z_(t-p)
        y = z[rows]
        fm, ym = feats.mean(axis=0), y.mean()
        fc, yc = feats - fm, y - ym
        gram = fc.T @ fc + self.alpha * len(y) * np.eye(p)
        w = np.linalg.solve(gram, fc.T @ yc)
        self.coef_ = w
        self.intercept_ = float(ym - fm @ w)
        return self

    def _w(self) -> np.ndarray:
        assert self.coef_ is not None, "call fit() first"
        return self.coef_

    def one_step(self, x: np.ndarray, idx: np.ndarray) -> np.ndarray:
        """Predictions of x[idx + 1] from x[..idx] (needs idx >= order - 1); shape of idx."""
        w = self._w()
        x = np.asarray(x, dtype=np.float64)
        i = np.asarray(idx, dtype=np.int64)
        assert i.size == 0 or (i.min() >= self.order - 1 and i.max() < len(x)), "idx out of range"
        z = (x - self.mean) / self.std
        lags = z[i[..., None] - np.arange(self.order)]  # z_idx, z_(idx-1), ...
        return (self.intercept_ + lags @ w) * self.std + self.mean

    def forecast(self, x: np.ndarray, origins: np.ndarray, horizon: int) -> np.ndarray:
        """Iterated forecasts of x[s + 1 .. s + horizon] from x[..s]; (len(origins), horizon)."""
        w = self._w()
        x = np.asarray(x, dtype=np.float64)
        s = _origins(x, origins, horizon)
        assert len(s) == 0 or s.min() >= self.order - 1, "origins must be >= order - 1"
        z = (x - self.mean) / self.std
        window = z[s[:, None] - np.arange(self.order)[None]]  # (n, order), newest first
        out = np.empty((len(s), horizon))
        for h in range(horizon):
            nxt = self.intercept_ + window @ w
            out[:, h] = nxt
            window = np.concatenate([nxt[:, None], window[:, :-1]], axis=1)
        return out * self.std + self.mean


def nrmse(pred: np.ndarray, target: np.ndarray) -> float:
    """RMSE / std(target) over the scored values (nan when the targets are constant)."""
    pred = np.asarray(pred, dtype=np.float64)
    target = np.asarray(target, dtype=np.float64)
    assert pred.shape == target.shape, f"shape mismatch: {pred.shape} vs {target.shape}"
    sd = float(target.std())
    rmse = float(np.sqrt(np.mean((pred - target) ** 2)))
    return rmse / sd if sd > 0 else float("nan")


def forecast_origins(n: int, fit_frac: float = 0.7, horizon: int = 10, n_origins: int = 50) -> np.ndarray:
    """The forecast origins of ``score_series`` for a series of n points: up to ``n_origins``
    evenly spaced s in [n_fit - 1, n - 1 - horizon], n_fit = int(fit_frac * n)."""
    lo, hi = int(fit_frac * n) - 1, n - 1 - horizon
    return np.unique(np.round(np.linspace(lo, hi, min(n_origins, hi - lo + 1))).astype(np.int64))


def score_series(
    x: np.ndarray,
    predict_one_step: Callable[[np.ndarray], np.ndarray],
    forecast: Callable[[np.ndarray, np.ndarray, int], np.ndarray],
    season: int | None = None,
    fit_frac: float = 0.7,
    horizon: int = 10,
    n_origins: int = 50,
) -> dict[str, Any]:
    """Score a model and the baselines on ``x`` with the project's protocol.

    * n_fit = int(fit_frac * len(x)); AR(20) (``ARModel``) is fitted on x[:n_fit].
    * One step: for every t in [n_fit - 1, len(x) - 2], predictions of x[t + 1].
      ``predict_one_step(x)`` returns predictions for every index of the whole series
      (pred[t] predicts x[t + 1] from x[..t]; causal).
    * ``horizon`` steps: up to ``n_origins`` evenly spaced origins s in
      [n_fit - 1, len(x) - 1 - horizon]; ``forecast(x, origins, horizon)`` returns
      (len(origins), horizon) and is scored at step h = horizon (target x[s + horizon]).
    * Scores are NRMSE (``nrmse``: RMSE / std of the scored targets) for "model",
      "persistence", "seasonal_naive" (only when ``season`` is given) and "ar20".

    Returns {"one_step": {...}, f"h{horizon}": {...}, "n_fit", "n_scored" (number of one-step
    targets), "origins" (the forecast origins, a list of ints)}.
    """
    x = np.asarray(x, dtype=np.float64)
    assert x.ndim == 1 and np.isfinite(x).all(), "x must be a finite 1-D series"
    n = len(x)
    n_fit = int(fit_frac * n)
    assert 3 <= n_fit <= n - 1 - horizon, "series too short for this fit_frac and horizon"
    if season is not None:
        assert 1 <= season <= n_fit, "season must be in [1, n_fit]"

    ar = ARModel(order=20).fit(x[:n_fit])

    t = np.arange(n_fit - 1, n - 1)
    target1 = x[t + 1]
    pred_all = np.asarray(predict_one_step(x), dtype=np.float64).reshape(-1)
    assert len(pred_all) >= n - 1, f"predict_one_step returned {len(pred_all)} values for {n} points"
    one: dict[str, float] = {
        "model": nrmse(pred_all[t], target1),
        "persistence": nrmse(persistence(x, t, 1)[:, 0], target1),
    }
    if season is not None:
        one["seasonal_naive"] = nrmse(seasonal_naive(x, t, 1, season)[:, 0], target1)
    one["ar20"] = nrmse(ar.one_step(x, t), target1)

    s = forecast_origins(n, fit_frac, horizon, n_origins)
    target_h = x[s + horizon]
    fc = np.asarray(forecast(x, s, horizon), dtype=np.float64)
    assert fc.shape == (len(s), horizon), f"forecast returned {fc.shape}, expected {(len(s), horizon)}"
    multi: dict[str, float] = {
        "model": nrmse(fc[:, -1], target_h),
        "persistence": nrmse(persistence(x, s, horizon)[:, -1], target_h),
    }
    if season is not None:
        multi["seasonal_naive"] = nrmse(seasonal_naive(x, s, horizon, season)[:, -1], target_h)
    multi["ar20"] = nrmse(ar.forecast(x, s, horizon)[:, -1], target_h)

    return {
        "one_step": one,
        f"h{horizon}": multi,
        "n_fit": n_fit,
        "n_scored": len(t),
        "origins": [int(v) for v in s],
    }
