"""Time series for MemNet: Mackey-Glass generation, file loading, splits and z-scoring.

Protocols (fixed so that numbers are comparable across runs):

* ``mackey-glass``: 7000 generated points; train the first 5000, test the last 2000.
* ``santafe``: the Santa Fe laser (data set A, 10093 points); train the first 8000, test
  the rest.
* a ``.npy`` / ``.csv`` path: train the first ``train_frac`` (default 0.8), test the rest.

The validation split for early stopping is the last ``val_frac`` of the training part, so
test data is never looked at during training. Z-scoring uses training statistics only.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from models.data.csvseries import read_csv

MACKEY_GLASS_POINTS = 7000
MACKEY_GLASS_TRAIN = 5000
SANTAFE_TRAIN = 8000
SANTAFE_FILE = "timeseries/santafe_laser.npy"


def default_data_dir() -> Path:
    """``$MEMSERVE_DATA_DIR`` if set, else ``<repo root>/../shared/data``."""
    env = os.environ.get("MEMSERVE_DATA_DIR")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2].parent / "shared" / "data"


def _mg_rhs(x: float, x_tau: float, beta: float, gamma: float, n: float) -> float:
    return beta * x_tau / (1.0 + x_tau**n) - gamma * x


def mackey_glass(
    n: int,
    tau: float = 17.0,
    dt: float = 0.1,
    x0: float = 1.2,
    sample_every: float = 1.0,
    discard: int = 1000,
    beta: float = 0.2,
    gamma: float = 0.1,
    exponent: float = 10.0,
) -> np.ndarray:
    """Mackey-Glass series of ``n`` samples, shape (n,), float64.

    dx/dt = beta x(t - tau) / (1 + x(t - tau)^exponent) - gamma x(t), integrated with RK4 at
    step ``dt`` from x(0) = x0, with the history x(t) = x0 for t < 0 (the usual choice).
    The delayed term at RK4 half steps is the mean of the two neighbouring history points
    (tau / dt is an integer, so full steps hit stored points exactly). Samples are taken every
    ``sample_every`` time units and the first ``discard`` samples (the transient) are dropped.
    """
    assert n > 0, "n must be positive"
    lag = round(tau / dt)
    assert abs(lag * dt - tau) < 1e-9, "tau must be a multiple of dt"
    stride = round(sample_every / dt)
    assert abs(stride * dt - sample_every) < 1e-9, "sample_every must be a multiple of dt"
    steps = (n + discard) * stride
    xs = np.empty(steps + 1)
    xs[0] = x0

    def delayed(i: int) -> float:  # x at grid index i - lag, constant history before t=0
        j = i - lag
        return x0 if j < 0 else xs[j]

    args = (beta, gamma, exponent)
    for i in range(steps):
        x = xs[i]
        d0, d1 = delayed(i), delayed(i + 1)
        dm = 0.5 * (d0 + d1)
        k1 = _mg_rhs(x, d0, *args)
        k2 = _mg_rhs(x + 0.5 * dt * k1, dm, *args)
        k3 = _mg_rhs(x + 0.5 * dt * k2, dm, *args)
        k4 = _mg_rhs(x + dt * k3, d1, *args)
        xs[i + 1] = x + dt / 6.0 * (k1 + 2 * k2 + 2 * k3 + k4)
    samples = xs[:steps:stride]  # t = 0, 1, 2, ...
    return samples[discard : discard + n].copy()


def _load_file(path: Path, info: dict, columns: list[str] | None = None, fill: str = "none") -> np.ndarray:
    if not path.exists():
        raise FileNotFoundError(
            f"time series file not found: {path} (pass --data PATH or set MEMSERVE_DATA_DIR)"
        )
    if path.suffix == ".npy":
        arr = np.load(path, allow_pickle=False)
    elif path.suffix == ".csv":
        table = read_csv(path, columns, fill)
        arr = table.values
        info.update(columns=table.columns, ignored_columns=table.dropped, filled=table.filled, fill=fill)
    else:
        raise ValueError(f"unsupported time series file {path}: use .npy or .csv")
    arr = np.asarray(arr, dtype=np.float64)
    if arr.ndim == 1:
        arr = arr[:, None]  # (T,) -> (T, 1)
    if arr.ndim != 2 or arr.shape[0] < 10:
        raise ValueError(f"{path}: expected a (T, D) series with T >= 10, got {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{path}: series contains NaN or inf")
    return arr


def load_series(
    spec: str,
    data_dir: Path | None = None,
    train_frac: float = 0.8,
    columns: list[str] | None = None,
    fill: str = "none",
) -> tuple[np.ndarray, dict]:
    """Load a series by name or path; returns (values (T, D) float32, info).

    ``info`` holds ``source``, ``n_train``, ``n_test`` (test = the last n_test points) and,
    for files, ``path``; for CSV files also the value ``columns``, the ``ignored_columns``
    and how many cells were ``filled`` (see ``models.data.csvseries`` for the rules).
    """
    if spec == "mackey-glass":
        arr = mackey_glass(MACKEY_GLASS_POINTS)[:, None]  # (T,) -> (T, 1)
        info = {"source": "mackey-glass", "tau": 17, "n_train": MACKEY_GLASS_TRAIN}
    elif spec == "santafe":
        path = (data_dir or default_data_dir()) / SANTAFE_FILE
        if not path.exists():
            raise FileNotFoundError(
                f"Santa Fe laser data not found at {path}: pass --data-dir (or set "
                "MEMSERVE_DATA_DIR) to the folder that holds timeseries/santafe_laser.npy"
            )
        arr = _load_file(path, {})
        info = {"source": "santafe", "n_train": SANTAFE_TRAIN}
    else:
        path = Path(spec).expanduser()
        info = {"source": "file", "path": str(path)}
        arr = _load_file(path, info, columns, fill)
        assert 0.0 < train_frac < 1.0, "train_frac must be in (0, 1)"
        info["n_train"] = int(len(arr) * train_frac)
    info["n_test"] = len(arr) - info["n_train"]
    assert info["n_test"] > 0, "series too short for its train/test split"
    return arr.astype(np.float32), info


@dataclass
class Splits:
    """A z-scored series and the index ranges of its splits (end-exclusive)."""

    series: np.ndarray  # (T, D) float32, z-scored with training statistics
    mean: np.ndarray  # (D,)
    std: np.ndarray  # (D,)
    n_fit: int  # [0, n_fit): fitting part of training
    n_train: int  # [n_fit, n_train): validation; [n_train, T): test

    def denormalize(self, z: np.ndarray) -> np.ndarray:
        return z * self.std + self.mean


def make_splits(series: np.ndarray, n_train: int, val_frac: float = 0.1) -> Splits:
    """Z-score with statistics of ``series[:n_train]`` and carve validation off its end."""
    assert series.ndim == 2, "series must be (T, D)"
    assert 0 < n_train < len(series), "n_train must leave a test part"
    assert 0.0 <= val_frac < 1.0, "val_frac must be in [0, 1)"
    train = series[:n_train].astype(np.float64)
    mean = train.mean(axis=0)
    std = train.std(axis=0)
    std = np.where(std > 0, std, 1.0)  # constant channels: leave unscaled
    z = ((series - mean) / std).astype(np.float32)
    n_fit = n_train - round(n_train * val_frac)
    return Splits(z, mean.astype(np.float32), std.astype(np.float32), n_fit, n_train)
