"""Time series: Mackey-Glass generator, file loading, splits and z-scoring."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from models.data.timeseries import load_series, mackey_glass, make_splits


def test_mackey_glass_deterministic_length_and_range() -> None:
    a = mackey_glass(1500)
    b = mackey_glass(1500)
    assert a.shape == (1500,)
    np.testing.assert_array_equal(a, b)
    assert 0.2 < a.min() < 0.6 and 1.1 < a.max() < 1.4
    assert a.std() > 0.15  # chaotic, not decayed to a fixed point
    # A shorter request is a prefix of a longer one (same transient dropped).
    np.testing.assert_allclose(mackey_glass(300), a[:300])


def test_load_mackey_glass_protocol() -> None:
    series, info = load_series("mackey-glass")
    assert series.shape == (7000, 1) and series.dtype == np.float32
    assert info["n_train"] == 5000 and info["n_test"] == 2000


def test_load_npy_and_csv(tmp_path: Path) -> None:
    data = np.random.default_rng(0).normal(size=(50, 2))
    np.save(tmp_path / "s.npy", data)
    series, info = load_series(str(tmp_path / "s.npy"), train_frac=0.8)
    assert series.shape == (50, 2) and info["n_train"] == 40 and info["n_test"] == 10
    np.testing.assert_allclose(series, data, rtol=1e-6)

    (tmp_path / "h.csv").write_text("a,b\n" + "\n".join(f"{x},{y}" for x, y in data))
    series, _ = load_series(str(tmp_path / "h.csv"))
    np.testing.assert_allclose(series, data, rtol=1e-5)
    (tmp_path / "n.csv").write_text("\n".join(str(x) for x in data[:, 0]))
    series, _ = load_series(str(tmp_path / "n.csv"))
    assert series.shape == (50, 1)


def test_missing_file_names_path(tmp_path: Path) -> None:
    missing = tmp_path / "nope.npy"
    with pytest.raises(FileNotFoundError, match=r"nope\.npy"):
        load_series(str(missing))
    with pytest.raises(FileNotFoundError, match=r"santafe_laser\.npy"):
        load_series("santafe", data_dir=tmp_path)


def test_zscore_uses_train_stats_only() -> None:
    rng = np.random.default_rng(1)
    series = np.concatenate([rng.normal(0, 1, (100, 1)), rng.normal(50, 10, (50, 1))])
    splits = make_splits(series.astype(np.float32), n_train=100, val_frac=0.1)
    np.testing.assert_allclose(splits.mean, series[:100].mean(0), rtol=1e-5)
    np.testing.assert_allclose(splits.std, series[:100].std(0), rtol=1e-5)
    assert abs(splits.series[:100].mean()) < 1e-5
    assert splits.series[100:].mean() > 20  # test part is not re-centred
    assert splits.n_fit == 90 and splits.n_train == 100  # validation = end of train
    np.testing.assert_allclose(splits.denormalize(splits.series), series, rtol=1e-4, atol=1e-4)
