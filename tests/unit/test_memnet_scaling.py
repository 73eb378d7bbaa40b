"""Per-session scaling, the residual output, the predictive scale and what the service makes
of it (intervals, sampled forecast paths, anomaly flags), on the model in process."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from app.kinds.memnet import dist
from models.memnet import MemNet, MemNetConfig

WINDOW = 32


def scaled_model(seed: int = 0, wake: bool = True) -> MemNet:
    torch.manual_seed(seed)
    config = MemNetConfig(hidden_dim=16, key_dim=8, value_dim=8, capacity=8, sigma=0.5,
                          residual=True, predict_scale=True, scale_window=WINDOW)  # fmt: skip
    model = MemNet(config).eval()
    if wake:  # the residual head starts at zero (persistence): give it something to say
        torch.nn.init.normal_(model.out.weight, std=0.3)
    return model


def run(model: MemNet, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, torch.Tensor]:
    with torch.inference_mode():
        mean, std, state = model.forward_dist(torch.from_numpy(x.astype(np.float32)).view(1, -1, 1))
    return mean[0, :, 0].numpy().astype(np.float64), std[0, :, 0].numpy().astype(np.float64), state.stats


def test_statistics_are_the_running_mean_and_variance_then_exponentially_weighted() -> None:
    x = np.random.default_rng(0).normal(3.0, 2.0, 100)
    _, _, stats = run(scaled_model(), x[:WINDOW])
    w, m, v = stats[0, :3, 0].tolist()
    assert w == WINDOW
    assert m == pytest.approx(x[:WINDOW].mean(), rel=1e-5) and v == pytest.approx(x[:WINDOW].var(), rel=1e-4)
    _, _, stats = run(scaled_model(), x)
    ref_m, ref_v = x[:WINDOW].mean(), x[:WINDOW].var()
    for xi in x[WINDOW:]:  # past the window: the same update with a fixed weight 1 / WINDOW
        d = xi - ref_m
        ref_m += d / WINDOW
        ref_v = (1 - 1 / WINDOW) * (ref_v + d * d / WINDOW)
    assert stats[0, 1, 0].item() == pytest.approx(ref_m, rel=1e-5)
    assert stats[0, 2, 0].item() == pytest.approx(ref_v, rel=1e-4)


@pytest.mark.parametrize("scale,offset", [(1e-3, 0.0), (1e6, 0.0), (250.0, -4e4), (3.0, 7.0)])
def test_predictions_follow_any_unit_and_offset(scale: float, offset: float) -> None:
    """From the second point on (the first one's std is the floor, which knows the level)."""
    x = np.sin(np.arange(60) / 4) + 0.1 * np.random.default_rng(1).standard_normal(60)
    mean, std, _ = run(scaled_model(), x)
    mean2, std2, _ = run(scaled_model(), scale * x + offset)
    np.testing.assert_allclose(mean2[1:], scale * mean[1:] + offset, rtol=0, atol=1e-4 * scale)
    np.testing.assert_allclose(std2[1:], scale * std[1:], rtol=1e-4)


@pytest.mark.parametrize("first", [1e-3, 1e6, -7e5, 0.0])
def test_a_first_point_of_any_magnitude_is_finite_and_near_itself(first: float) -> None:
    mean, std, _ = run(scaled_model(), np.array([first]))
    assert np.isfinite(mean).all() and np.isfinite(std).all() and std[0] > 0
    assert abs(mean[0] - first) <= 1e-2 * max(abs(first), 1e-6)


def test_an_untrained_residual_model_is_persistence() -> None:
    x = np.random.default_rng(2).normal(0, 5, 40).cumsum()
    mean, _, _ = run(scaled_model(wake=False), x)
    np.testing.assert_allclose(mean, x, rtol=1e-6, atol=1e-5)


def test_sampled_paths_are_seeded_and_spread_with_the_horizon() -> None:
    model = scaled_model()
    x = torch.from_numpy(np.random.default_rng(3).normal(0, 1, 50).astype(np.float32)).view(1, -1, 1)
    with torch.inference_mode():
        mean, std, state = model.forward_dist(x)
    noise = dist.path_noise("sid", 50, 400, 12, 1)[None]  # (1, S, H, D)
    paths = model.sample_paths(mean[:, -1], std[:, -1], state, noise)
    assert paths.shape == (1, 400, 12, 1)
    assert torch.equal(paths, model.sample_paths(mean[:, -1], std[:, -1], state, noise))
    spread = paths[0, :, :, 0].std(dim=0)  # (H,)
    assert spread[-3:].mean() > 1.3 * spread[0]
    assert paths[0, :, 0, 0].std().item() == pytest.approx(std[0, -1, 0].item(), rel=0.15)
    assert torch.equal(dist.path_noise("sid", 50, 400, 12, 1), noise[0])
    assert not torch.equal(dist.path_noise("sid", 51, 400, 12, 1), noise[0])


def test_interval_bounds_and_path_quantiles() -> None:
    mean, std = np.array([[1.0], [2.0]]), np.array([[0.5], [1.0]])
    iv = dist.gaussian_intervals(mean, std, [95.0, 80.0])
    np.testing.assert_allclose(iv["95"]["upper"] - mean, 1.959964 * std, rtol=1e-5)
    np.testing.assert_allclose(mean - iv["80"]["lower"], 1.281552 * std, rtol=1e-5)
    paths = np.random.default_rng(4).normal(0, 2, (20000, 3, 1))
    q = dist.path_intervals(paths, [95.0])["95"]
    np.testing.assert_allclose(q["upper"], 1.96 * 2, rtol=0.05)
    assert dist.level_key(99.5) == "99.5" and dist.level_key(80.0) == "80"


def test_deviations_and_anomaly_flags() -> None:
    x = np.array([[1.0], [2.0], [30.0], [3.0]])
    means = np.array([[2.0], [3.0], [4.0], [5.0]])  # what each point predicted for the next
    stds = np.ones((4, 1))
    dev = dist.deviations(x, means, stds, np.array([1.5]), np.array([0.5]))
    np.testing.assert_allclose(dev[:, 0], [-1.0, 0.0, 27.0, -1.0])
    assert dist.anomalies(dev, 100) == [{"index": 2, "seq": 102, "dim": 0, "scales": 27.0}]
    first = dist.deviations(x, means, stds, None, None)
    assert np.isnan(first[0, 0]) and dist.anomalies(first, 30)[0]["index"] == 2
    assert dist.anomalies(first, 0) == []  # a session's first 16 points are never flagged


def test_a_batch_of_chunks_gets_the_deviations_and_flags_of_each_chunk_alone() -> None:
    rng = np.random.default_rng(3)
    lengths, firsts = [5, 2, 7], [0, 40, 12]
    chunks = [rng.normal(0, 4, (t, 2)).astype(np.float32) for t in lengths]
    means = [rng.normal(0, 1, (t, 2)).astype(np.float32) for t in lengths]
    stds = [np.full((t, 2), 0.5, np.float32) for t in lengths]
    prev = [None, (np.array([1.0, -1.0], np.float32), np.array([0.5, 0.0], np.float32)), None]
    x = np.full((3, 7, 2), np.nan, np.float32)  # padded as the worker pads a batch
    m, s = np.zeros((3, 7, 2), np.float32), np.ones((3, 7, 2), np.float32)
    pm, ps = np.full((3, 2), np.nan, np.float32), np.full((3, 2), np.nan, np.float32)
    for i, t in enumerate(lengths):
        x[i, :t], m[i, :t], s[i, :t] = chunks[i], means[i], stds[i]
        if prev[i] is not None:
            pm[i], ps[i] = prev[i]
    dev = dist.batch_deviations(x, m, s, pm, ps)
    flags = dist.batch_anomalies(dev, firsts)
    assert sum(len(f) for f in flags) > 2, "the test needs flagged points"
    for i, t in enumerate(lengths):
        alone = dist.deviations(chunks[i], means[i], stds[i], *(prev[i] or (None, None)))
        np.testing.assert_array_equal(dev[i, :t], alone)
        assert np.isnan(dev[i, t:]).all(), "padding is never a deviation"
        assert flags[i] == dist.anomalies(alone, firsts[i])


def test_the_store_knows_the_shape_of_the_statistics() -> None:
    from app.kinds.memnet.backup import STATS_ROWS as STORE_ROWS
    from models.memnet import STATS_ROWS

    assert STORE_ROWS == STATS_ROWS


def test_a_session_widens_its_std_to_its_own_errors() -> None:
    """Per-session calibration: on a stream the raw std underrates 3x, the served std follows
    the realised errors, so about 95 % of next values fall in the 95 % interval again."""
    torch.manual_seed(0)
    model = scaled_model(wake=False)  # persistence with a raw std of about 0.7 s
    x = np.random.default_rng(5).normal(0, 1, 3000).cumsum()  # a random walk: persistence is right
    mean, raw, _ = run(model, x)
    model.config.adaptive_std = 128
    mean_a, std, stats = run(model, x)
    np.testing.assert_allclose(mean_a, mean)  # the means do not change, only the std
    err = np.abs(x[1:] - mean[:-1])
    inside_raw = np.mean(err[500:] <= 1.96 * raw[:-1][500:])
    inside = np.mean(err[500:] <= 1.96 * std[:-1][500:])
    assert abs(inside - 0.95) < 0.03 and abs(inside_raw - 0.95) > abs(inside - 0.95)
    assert stats.shape[1] == 6 and stats[0, 5, 0].item() == pytest.approx(raw[-1], rel=1e-5)
