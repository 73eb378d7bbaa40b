"""Synthetic corpus (models/data/corpus.py), real series (models/data/real.py), baselines."""

from __future__ import annotations

import inspect
import json
import sys

import numpy as np
import pytest

from models.baselines import ARModel, nrmse, persistence, score_series, seasonal_naive
from models.data.corpus import (
    HELDOUT_FAMILIES,
    HELDOUT_ONLY,
    TRAIN_FAMILIES,
    Family,
    describe,
    heldout_series,
    sample_corpus,
)

# ----------------------------------------------------------------------------- corpus


@pytest.mark.parametrize("split", ["train", "heldout"])
def test_sample_corpus_shape_finite_deterministic(split: str) -> None:
    a = sample_corpus(np.random.default_rng(3), 70, 128, split)
    b = sample_corpus(np.random.default_rng(3), 70, 128, split)
    c = sample_corpus(np.random.default_rng(4), 70, 128, split)
    assert a.shape == (70, 128) and a.dtype == np.float32
    assert np.isfinite(a).all()
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert (a.std(axis=1) > 0).all()


def test_sample_corpus_rejects_unknown_split() -> None:
    with pytest.raises(ValueError, match="split"):
        sample_corpus(np.random.default_rng(0), 4, 32, "test")


def _all_families() -> list[tuple[str, Family]]:
    return [("train", f) for f in TRAIN_FAMILIES.values()] + [
        ("heldout", f) for f in HELDOUT_FAMILIES.values()
    ]


@pytest.mark.parametrize(("split", "fam"), _all_families(), ids=lambda v: getattr(v, "name", v))
def test_every_family_finite_and_non_constant(split: str, fam: Family) -> None:
    x = fam.fn(np.random.default_rng(11), 6, 160, fam.params)
    assert x.shape == (6, 160) and x.dtype == np.float64
    assert np.isfinite(x).all()
    assert (x.std(axis=1) > 1e-6 * (1 + np.abs(x).max(axis=1))).all(), f"{split}/{fam.name} constant"
    again = fam.fn(np.random.default_rng(11), 6, 160, fam.params)
    np.testing.assert_array_equal(x, again)


def _disjoint(a: object, b: object) -> bool:
    if isinstance(a, tuple) and isinstance(b, tuple):
        return a[1] < b[0] or b[1] < a[0]
    assert isinstance(a, list) and isinstance(b, list), "a parameter is a range in one split only"
    return not set(a) & set(b)


def test_train_and_heldout_ranges_disjoint() -> None:
    assert set(TRAIN_FAMILIES) <= set(HELDOUT_FAMILIES)
    for name, fam in TRAIN_FAMILIES.items():
        held = HELDOUT_FAMILIES[name]
        assert fam.fn is held.fn and fam.params.keys() == held.params.keys()
        n_disjoint = 0
        for key, spec in fam.params.items():
            if spec == held.params[key]:
                continue  # a shared nuisance parameter (e.g. noise level)
            assert _disjoint(spec, held.params[key]), f"{name}.{key}: ranges overlap"
            n_disjoint += 1
        assert n_disjoint >= 1, f"{name}: held-out range equals the train range"
    assert len(HELDOUT_ONLY) >= 3
    assert set(HELDOUT_ONLY) == set(HELDOUT_FAMILIES) - set(TRAIN_FAMILIES)
    assert all(HELDOUT_FAMILIES[n].fn not in {f.fn for f in TRAIN_FAMILIES.values()} for n in HELDOUT_ONLY)
    mg_train, mg_held = TRAIN_FAMILIES["mackey_glass"].params, HELDOUT_FAMILIES["mackey_glass"].params
    assert set(mg_held["tau"]) == {17, 30} and not {17, 30} & set(mg_train["tau"])


def test_affine_transform() -> None:
    x = sample_corpus(np.random.default_rng(5), 600, 64).astype(np.float64)
    sd = x.std(axis=1)
    log_sd = np.log10(sd)
    # z-scored before the transform: the std of a series is its scale 10**U(-1, 1)
    assert log_sd.min() > -1.0 - 1e-3 and log_sd.max() < 1.0 + 1e-3
    assert log_sd.min() < -0.8 and log_sd.max() > 0.8
    assert abs(log_sd.mean()) < 0.1
    # the offset is N(0, 3) * scale, i.e. mean / std ~ N(0, 3)
    ratio = x.mean(axis=1) / sd
    assert 2.6 < ratio.std() < 3.4 and abs(ratio.mean()) < 0.4


def test_heldout_series() -> None:
    a = heldout_series(seed=1, length=300)
    b = heldout_series(seed=1, length=300)
    c = heldout_series(seed=2, length=300)
    assert len(a) >= 8
    names = [name for name, _, _ in a]
    assert len(set(names)) == len(names)
    for (name, x, season), (_, y, _), (_, z, _) in zip(a, b, c, strict=True):
        assert x.shape == (300,) and x.dtype == np.float64 and np.isfinite(x).all(), name
        assert x.std() > 0, name
        np.testing.assert_array_equal(x, y)
        assert not np.array_equal(x, z), name
        assert season is None or (isinstance(season, int) and 1 < season < 150)
    assert any(n.startswith("mackey_glass_tau17") for n in names)
    assert any(s is not None for _, _, s in a)
    assert inspect.signature(heldout_series).parameters["length"].default == 1000


def test_describe_is_json() -> None:
    d = describe()
    text = json.dumps(d)
    assert set(d["families"]) == set(HELDOUT_FAMILIES)
    for name in HELDOUT_ONLY:
        assert d["families"][name]["split"] == "heldout only"
    assert d["families"]["mackey_glass"]["heldout_differs_in"] == ["tau"]
    assert "10**U(-1, 1)" in text


# ----------------------------------------------------------------------------- baselines


def test_persistence_and_seasonal_naive_exact() -> None:
    x = np.arange(50, dtype=np.float64) * 2.0
    origins = np.array([5, 10, 30])
    p = persistence(x, origins, 4)
    assert p.shape == (3, 4)
    np.testing.assert_array_equal(p, np.repeat(x[origins][:, None], 4, axis=1))

    season = 7
    profile = np.random.default_rng(0).standard_normal(season)
    y = np.tile(profile, 20)
    origins = np.array([6, 20, 50, 100])
    horizon = 17  # longer than two seasons
    f = seasonal_naive(y, origins, horizon, season)
    truth = y[origins[:, None] + np.arange(1, horizon + 1)[None]]
    np.testing.assert_array_equal(f, truth)
    # the formula: x[s + h - season * ceil(h / season)]
    s, h = 20, 9
    assert f[1, h - 1] == y[s + h - season * int(np.ceil(h / season))]
    with pytest.raises(AssertionError):
        seasonal_naive(y, np.array([3]), 2, season)


def _ar2(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    e = rng.standard_normal(n + 200)
    x = np.zeros(n + 200)
    for t in range(2, n + 200):
        x[t] = 0.6 * x[t - 1] - 0.3 * x[t - 2] + e[t]
    return 5.0 + 2.0 * x[200:]


def test_ar_recovers_ar2_and_beats_persistence() -> None:
    x = _ar2(6000)
    ar = ARModel(order=2).fit(x[:5000])
    assert ar.coef_ is not None
    np.testing.assert_allclose(ar.coef_, [0.6, -0.3], atol=0.04)
    idx = np.arange(5000, len(x) - 1)
    target = x[idx + 1]
    ar_err = nrmse(ar.one_step(x, idx), target)
    pers_err = nrmse(x[idx], target)
    assert ar_err < 0.9 * pers_err
    big = ARModel().fit(x[:5000])
    assert big.order == 20 and nrmse(big.one_step(x, idx), target) < 0.9 * pers_err
    fc = ar.forecast(x, idx[:5], 3)
    assert fc.shape == (5, 3)
    np.testing.assert_allclose(fc[:, 0], ar.one_step(x, idx[:5]))
    # second step iterates the model on its own first step
    z1 = (fc[:, 0] - ar.mean) / ar.std
    z0 = (x[idx[:5]] - ar.mean) / ar.std
    np.testing.assert_allclose(fc[:, 1], (ar.intercept_ + ar.coef_ @ [z1, z0]) * ar.std + ar.mean)


def test_ar_order_reduced_on_short_data() -> None:
    ar = ARModel(order=20).fit(_ar2(30))
    assert ar.order == 10 and ar.coef_ is not None and ar.coef_.shape == (10,)


def test_nrmse() -> None:
    t = np.array([1.0, 2.0, 3.0, 4.0])
    assert nrmse(t, t) == 0.0
    assert nrmse(t + 1.0, t) == pytest.approx(1.0 / t.std())
    assert np.isnan(nrmse(np.ones(3), np.zeros(3)))


def _oracle(x: np.ndarray) -> np.ndarray:
    return np.append(x[1:], x[-1])  # pred[t] = x[t + 1]


def _oracle_forecast(x: np.ndarray, origins: np.ndarray, horizon: int) -> np.ndarray:
    return x[origins[:, None] + np.arange(1, horizon + 1)[None]]


def test_score_series_oracle_and_protocol() -> None:
    season = 12
    t = np.arange(400)
    x = np.sin(2 * np.pi * t / season) + 0.3 * np.random.default_rng(0).standard_normal(400)
    r = score_series(x, _oracle, _oracle_forecast, season=season)
    assert set(r) == {"one_step", "h10", "n_fit", "n_scored", "origins"}
    assert r["n_fit"] == 280 and r["n_scored"] == 400 - 1 - 279
    assert set(r["one_step"]) == {"model", "persistence", "seasonal_naive", "ar20"}
    assert r["one_step"]["model"] == 0.0 and r["h10"]["model"] == 0.0
    assert len(r["origins"]) == 50 and r["origins"][0] == 279 and r["origins"][-1] == 400 - 11
    assert r["one_step"]["ar20"] < r["one_step"]["persistence"]
    json.dumps(r)

    r2 = score_series(x, _oracle, _oracle_forecast, horizon=5, n_origins=10)
    assert set(r2) == {"one_step", "h5", "n_fit", "n_scored", "origins"}
    assert "seasonal_naive" not in r2["one_step"] and "seasonal_naive" not in r2["h5"]
    assert len(r2["origins"]) == 10


# ----------------------------------------------------------------------------- real series


def test_real_series() -> None:
    pytest.importorskip("statsmodels", reason="statsmodels (the eval extra) is not installed")
    from models.data.real import real_series

    series = {s.name: s for s in real_series()}
    expected = {"sunspots": (309, None), "co2": (2284, 52), "elnino": (732, 12), "nile": (100, None)}
    assert set(series) == set(expected)
    for name, (length, season) in expected.items():
        s = series[name]
        assert s.values.shape == (length,) and s.values.dtype == np.float64, name
        assert np.isfinite(s.values).all(), name
        assert s.season == season, name
        assert s.source.startswith(f"statsmodels.datasets.{name}") and s.description
    assert series["elnino"].values[0] == pytest.approx(23.11)  # January 1950
    assert series["elnino"].values[12] == pytest.approx(24.19)  # January 1951
    assert series["co2"].values.min() > 310 and series["co2"].values.max() < 380


def test_real_series_without_statsmodels(monkeypatch: pytest.MonkeyPatch) -> None:
    from models.data import real

    for mod in [m for m in sys.modules if m == "statsmodels" or m.startswith("statsmodels.")]:
        monkeypatch.delitem(sys.modules, mod)
    monkeypatch.setitem(sys.modules, "statsmodels", None)
    with pytest.raises(ImportError, match="pip install statsmodels"):
        real.real_series()
