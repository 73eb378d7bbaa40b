"""A corpus of diverse synthetic univariate time series for a "universal" forecaster.

Families of generators (linear stochastic processes, periodic and seasonal patterns, trends,
random walks, regime switching, chaotic maps and flows) draw their per-series parameters from
ranges. The split is two-fold:

* **Held-out ranges.** Every training family has a TRAIN parameter range and a HELD-OUT range
  that is disjoint from it (for each parameter: either the same range in both splits, e.g. the
  observation-noise levels, or disjoint ranges; at least one parameter is disjoint). Examples:
  Mackey-Glass uses delays tau 12-16, 20-26, 35-45 for training and tau 17 and 30 for held-out
  evaluation; Lorenz is sampled every 0.02/0.05/0.1 time units for training, every 0.03/0.15
  held out; AR roots have moduli 0.1-0.9 in training and 0.92-0.98 (near unit root) held out.
* **Held-out families.** Some families never appear in training: periodic waveforms (sawtooth,
  square, triangle), damped or growing oscillations, ARMA with heavy-tailed Student-t noise and
  bursty shot-noise series.

``TRAIN_FAMILIES`` holds the training families with their train ranges; ``HELDOUT_FAMILIES``
holds the same families (same keys) with their held-out ranges plus the held-out-only families.
``sample_corpus(rng, n, length, split)`` mixes the families of a split evenly.

Every series of ``sample_corpus`` and ``heldout_series`` is z-scored (per series) and then given
a random affine transform: scale ``s = 10**U(-1, 1)`` and offset ``N(0, 3) * s``, i.e. the series
has standard deviation ``s`` and a mean ``~N(0, 3)`` standard deviations away from zero, so that a
forecaster must cope with arbitrary levels and magnitudes (normalise inputs per series).

Transients of stochastic recursions, maps and flows are discarded. Nothing is clipped: maps
whose orbit escapes (Hénon) are redrawn, and the output is asserted finite and non-constant.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

ParamSpec = tuple[float, float] | list[Any]
"""``(low, high)``: drawn uniformly (log-uniformly where a family says so); a list: choices."""
ParamRanges = Mapping[str, ParamSpec]
FamilyFn = Callable[[np.random.Generator, int, int, ParamRanges], np.ndarray]

NOISE_LEVELS = [0.0, 0.01, 0.05, 0.1]  # observation noise sd / clean series sd (maps, flows)
_BLOCK = 512  # flows integrate at most this many series at once (bounds memory)


@dataclass(frozen=True)
class Family:
    """A generator family: ``fn(rng, n, length, params) -> (n, length)`` float64."""

    name: str
    fn: FamilyFn
    params: dict[str, ParamSpec]
    description: str


# --------------------------------------------------------------------------- helpers


def _draw(rng: np.random.Generator, spec: ParamSpec, n: int) -> np.ndarray:
    """n values: uniform on a (low, high) tuple, or uniform choices from a list."""
    if isinstance(spec, tuple):
        lo, hi = spec
        return rng.uniform(lo, hi, n)
    choices = np.asarray(spec)
    return choices[rng.integers(len(choices), size=n)]


def _draw_log(rng: np.random.Generator, spec: ParamSpec, n: int) -> np.ndarray:
    """Like ``_draw`` but log-uniform on a (low, high) tuple."""
    if isinstance(spec, tuple):
        lo, hi = spec
        return np.exp(rng.uniform(np.log(lo), np.log(hi), n))
    return _draw(rng, spec, n).astype(np.float64)


def _observe(rng: np.random.Generator, x: np.ndarray, levels: ParamSpec) -> np.ndarray:
    """Add Gaussian observation noise with sd = level * (per-series sd of the clean series)."""
    level = _draw(rng, levels, len(x)).astype(np.float64)
    sd = level * x.std(axis=1)
    return x + sd[:, None] * rng.standard_normal(x.shape)


def _take(rec: np.ndarray, start: np.ndarray | int, stride: np.ndarray, length: int) -> np.ndarray:
    """Samples ``rec[start + stride * k, j]`` for k < length of a (T, n) record -> (n, length)."""
    n = rec.shape[1]
    idx = np.asarray(start)[..., None] + stride.astype(np.int64)[:, None] * np.arange(length)[None]
    return rec[idx, np.arange(n)[:, None]]


def _blocks(
    fn: Callable[[np.random.Generator, int, int, ParamRanges], np.ndarray],
) -> FamilyFn:
    """Run a family on at most ``_BLOCK`` series at a time (flows record whole trajectories)."""

    def run(rng: np.random.Generator, n: int, length: int, params: ParamRanges) -> np.ndarray:
        parts = [fn(rng, min(_BLOCK, n - i), length, params) for i in range(0, n, _BLOCK)]
        return np.concatenate(parts) if parts else np.zeros((0, length))

    run.__name__ = fn.__name__
    run.__doc__ = fn.__doc__
    return run


def _stable_poly(rng: np.random.Generator, order: int, band: tuple[float, float]) -> np.ndarray:
    """Coefficients c_1..c_p of the monic z^p + c_1 z^(p-1) + ... + c_p whose roots are random:
    real roots (random sign) or complex-conjugate pairs, every modulus uniform in ``band``."""
    if order == 0:
        return np.zeros(0)
    n_pairs = int(rng.integers(0, order // 2 + 1))
    n_real = order - 2 * n_pairs
    real = rng.uniform(*band, n_real) * rng.choice([-1.0, 1.0], n_real)
    pairs = rng.uniform(*band, n_pairs) * np.exp(1j * rng.uniform(0.05 * np.pi, 0.95 * np.pi, n_pairs))
    roots = np.concatenate([real, pairs, pairs.conj()])
    return np.real(np.poly(roots))[1:]


def _ar_coefficients(rng: np.random.Generator, orders: np.ndarray, band: tuple[float, float]) -> np.ndarray:
    """(n, max order) AR coefficients a (x_t = sum_k a_k x_(t-k) + e_t), zero-padded, stable."""
    out = np.zeros((len(orders), max(1, int(orders.max(initial=0)))))
    for j, p in enumerate(orders):
        out[j, :p] = -_stable_poly(rng, int(p), band)
    return out


def _ma_coefficients(rng: np.random.Generator, orders: np.ndarray, band: tuple[float, float]) -> np.ndarray:
    """(n, max order) MA coefficients b (u_t = e_t + sum_k b_k e_(t-k)), invertible."""
    out = np.zeros((len(orders), max(1, int(orders.max(initial=0)))))
    for j, q in enumerate(orders):
        out[j, :q] = _stable_poly(rng, int(q), band)
    return out


def _ar_filter(a: np.ndarray, u: np.ndarray) -> np.ndarray:
    """x_t = sum_k a[:, k-1] x_(t-k) + u_t for u (n, T), zero initial state -> (n, T)."""
    n, p = a.shape
    big_t = u.shape[1]
    a_rev = a[:, ::-1].T.copy()  # (p, n): row i multiplies x_(t-p+i)
    x = np.zeros((big_t + p, n))
    ut = u.T
    for t in range(big_t):
        x[t + p] = ut[t] + (a_rev * x[t : t + p]).sum(axis=0)
    return x[p:].T.copy()


def _ma_filter(b: np.ndarray, e: np.ndarray) -> np.ndarray:
    """u_t = e_t + sum_k b[:, k-1] e_(t-k) for e (n, T + q) -> (n, T) (the first q are history)."""
    q = b.shape[1]
    u = e[:, q:].copy()
    for k in range(1, q + 1):
        u += b[:, k - 1 : k] * e[:, q - k : e.shape[1] - k]
    return u


def _rk4_record(
    rhs: Callable[[np.ndarray], np.ndarray], state: np.ndarray, dt: float, steps: int
) -> np.ndarray:
    """RK4-integrate state (d, n) for ``steps`` steps; returns component 0 at every step, (steps + 1, n)."""
    rec = np.empty((steps + 1, state.shape[1]))
    rec[0] = state[0]
    h2 = 0.5 * dt
    for i in range(steps):
        k1 = rhs(state)
        k2 = rhs(state + h2 * k1)
        k3 = rhs(state + h2 * k2)
        k4 = rhs(state + dt * k3)
        state = state + (dt / 6.0) * (k1 + 2.0 * (k2 + k3) + k4)
        rec[i + 1] = state[0]
    return rec


# --------------------------------------------------------------------------- linear / stochastic

_BURN = 500  # discarded steps of stochastic recursions


def ar_family(rng: np.random.Generator, n: int, length: int, params: ParamRanges) -> np.ndarray:
    """AR(p): random order p; roots real or complex pairs with moduli in ``root_modulus``."""
    orders = _draw(rng, params["order"], n).astype(int)
    a = _ar_coefficients(rng, orders, params["root_modulus"])  # type: ignore[arg-type]
    x = _ar_filter(a, rng.standard_normal((n, length + _BURN)))[:, _BURN:]
    return _observe(rng, x, params["noise"])


def _arma(
    rng: np.random.Generator, n: int, length: int, params: ParamRanges, student_df: np.ndarray | None
) -> np.ndarray:
    p = _draw(rng, params["p"], n).astype(int)
    q = _draw(rng, params["q"], n).astype(int)
    a = _ar_coefficients(rng, p, params["ar_modulus"])  # type: ignore[arg-type]
    b = _ma_coefficients(rng, q, params["ma_modulus"])  # type: ignore[arg-type]
    shape = (n, length + _BURN + b.shape[1])
    if student_df is None:
        e = rng.standard_normal(shape)
    else:  # unit-variance Student-t innovations
        df = student_df[:, None]
        e = rng.standard_t(df, size=shape) * np.sqrt((df - 2.0) / df)
    return _ar_filter(a, _ma_filter(b, e))[:, _BURN:]


def arma_family(rng: np.random.Generator, n: int, length: int, params: ParamRanges) -> np.ndarray:
    """ARMA(p, q) with Gaussian noise; stable AR roots, invertible MA roots."""
    return _arma(rng, n, length, params, None)


def arma_t_family(rng: np.random.Generator, n: int, length: int, params: ParamRanges) -> np.ndarray:
    """ARMA(p, q) driven by unit-variance Student-t noise with ``df`` degrees of freedom."""
    df = _draw(rng, params["df"], n).astype(np.float64)
    return _arma(rng, n, length, params, df)


def sinusoids_family(rng: np.random.Generator, n: int, length: int, params: ParamRanges) -> np.ndarray:
    """Sum of K sinusoids, periods log-uniform in ``period``, amplitudes U(0.2, 1), random phases."""
    k_max = 4
    k = _draw(rng, params["n_sines"], n).astype(int)
    period = _draw_log(rng, params["period"], n * k_max).reshape(n, k_max)
    amp = rng.uniform(0.2, 1.0, (n, k_max)) * (np.arange(k_max)[None] < k[:, None])
    phase = rng.uniform(0.0, 2 * np.pi, (n, k_max))
    t = np.arange(length)[None, None]
    x = (amp[..., None] * np.sin(2 * np.pi * t / period[..., None] + phase[..., None])).sum(axis=1)
    return _observe(rng, x, params["noise"])


def trend_shifts_family(rng: np.random.Generator, n: int, length: int, params: ParamRanges) -> np.ndarray:
    """Linear trend + ``n_shifts`` level shifts at uniform times + AR(1) noise of unit sd."""
    slope = _draw(rng, params["slope"], n)
    n_shifts = _draw(rng, params["n_shifts"], n).astype(int)
    phi = _draw(rng, params["noise_ar"], n)
    t = np.arange(length)
    x = slope[:, None] * t[None]
    for i in range(int(n_shifts.max(initial=0))):
        when = rng.integers(1, length, n)
        size = rng.standard_normal(n) * _draw(rng, params["shift_size"], n) * (i < n_shifts)
        x += size[:, None] * (t[None] >= when[:, None])
    e = rng.standard_normal((n, length + _BURN)) * np.sqrt(1.0 - phi**2)[:, None]
    return x + _ar_filter(phi[:, None], e)[:, _BURN:]


def random_walk_family(rng: np.random.Generator, n: int, length: int, params: ParamRanges) -> np.ndarray:
    """Random walk whose increments are drift + AR(1) (coefficient ``increment_ar``) noise;
    half of the series have no drift."""
    drift = _draw(rng, params["drift"], n) * (rng.random(n) < 0.5)
    phi = _draw(rng, params["increment_ar"], n)
    e = rng.standard_normal((n, length + _BURN))
    inc = _ar_filter(phi[:, None], e)[:, _BURN:]
    return np.cumsum(drift[:, None] + inc, axis=1)


def seasonal_family(rng: np.random.Generator, n: int, length: int, params: ParamRanges) -> np.ndarray:
    """A random profile of integer period repeated (a mix of raw noise and a few harmonics),
    optionally (half the series) plus a linear trend, plus Gaussian noise."""
    period = _draw(rng, params["period"], n).astype(int)
    p_max = int(period.max())
    phase = np.arange(p_max)[None] / period[:, None]  # (n, p_max); beyond the period unused
    harm = np.zeros((n, p_max))
    for k in range(1, 5):
        c = rng.standard_normal((n, 2)) / k
        harm += c[:, :1] * np.cos(2 * np.pi * k * phase) + c[:, 1:] * np.sin(2 * np.pi * k * phase)
    raw = rng.standard_normal((n, p_max))
    mix = rng.uniform(0.0, 1.0, n)[:, None]
    profile = mix * raw + (1.0 - mix) * harm
    t = np.arange(length)
    x = profile[np.arange(n)[:, None], t[None] % period[:, None]]
    x /= x.std(axis=1, keepdims=True)
    slope = _draw(rng, params["slope"], n) * (rng.random(n) < 0.5)
    x += slope[:, None] * t[None]
    sd = _draw(rng, params["noise"], n)
    return x + sd[:, None] * rng.standard_normal((n, length))


def regime_family(rng: np.random.Generator, n: int, length: int, params: ParamRanges) -> np.ndarray:
    """Markov switching between two AR(1)s x_t = mu_s + phi_s (x_(t-1) - mu_s) + sigma_s e_t;
    each regime is kept with probability ``stay`` per step."""
    stay = _draw(rng, params["stay"], 2 * n).reshape(2, n)
    gap = _draw(rng, params["mean_gap"], n) * rng.choice([-1.0, 1.0], n)
    mu = np.stack([np.zeros(n), gap])
    phi = _draw(rng, params["phi"], 2 * n).reshape(2, n)
    sigma = rng.uniform(0.5, 1.5, (2, n))
    cols = np.arange(n)
    s = rng.integers(0, 2, n)
    x = mu[s, cols].copy()
    out = np.empty((length + 100, n))
    u = rng.random((length + 100, n))
    e = rng.standard_normal((length + 100, n))
    for t in range(length + 100):
        s = np.where(u[t] < stay[s, cols], s, 1 - s)
        m = mu[s, cols]
        x = m + phi[s, cols] * (x - m) + sigma[s, cols] * e[t]
        out[t] = x
    return out[100:].T.copy()


# --------------------------------------------------------------------------- chaotic maps and flows


def logistic_family(rng: np.random.Generator, n: int, length: int, params: ParamRanges) -> np.ndarray:
    """Logistic map x <- r x (1 - x), every ``stride``-th iterate after 500 discarded."""
    r = _draw(rng, params["r"], n)
    stride = _draw(rng, params["stride"], n).astype(int)
    discard = 500
    steps = discard + int(stride.max()) * length
    rec = np.empty((steps, n))
    x = rng.uniform(0.1, 0.9, n)
    for i in range(steps):
        x = r * x * (1.0 - x)
        rec[i] = x
    return _observe(rng, _take(rec, discard, stride, length), params["noise"])


def henon_family(rng: np.random.Generator, n: int, length: int, params: ParamRanges) -> np.ndarray:
    """Hénon map (x, y) <- (1 - a x^2 + y, b x), b = 0.3; x coordinate, every ``stride``-th
    iterate after 500 discarded. Orbits that escape to infinity are redrawn."""
    a = _draw(rng, params["a"], n)
    stride = _draw(rng, params["stride"], n).astype(int)
    discard = 500
    out = np.full((n, length), np.nan)
    todo = np.arange(n)
    for attempt in range(20):
        if attempt >= 10:  # this a may have no attractor near the origin: draw another
            a[todo] = _draw(rng, params["a"], len(todo))
        m = len(todo)
        steps = discard + int(stride[todo].max()) * length
        rec = np.empty((steps, m))
        x, y = rng.uniform(-0.1, 0.1, m), rng.uniform(-0.1, 0.1, m)
        with np.errstate(over="ignore", invalid="ignore"):
            for i in range(steps):
                x, y = 1.0 - a[todo] * x * x + y, 0.3 * x
                x = np.where(np.abs(x) > 1e3, np.inf, x)  # escaped: marked, never clipped
                rec[i] = x
        got = _take(rec, discard, stride[todo], length)
        ok = np.isfinite(got).all(axis=1)
        out[todo[ok]] = got[ok]
        todo = todo[~ok]
        if len(todo) == 0:
            break
    assert len(todo) == 0, "Hénon orbits kept escaping"
    return _observe(rng, out, params["noise"])


@_blocks
def lorenz_family(rng: np.random.Generator, n: int, length: int, params: ParamRanges) -> np.ndarray:
    """Lorenz x (sigma 10, beta 8/3, rho from ``rho``), RK4 with dt 0.01, 25 time units
    discarded, sampled every ``sample_dt`` time units."""
    dt = 0.01
    rho = _draw(rng, params["rho"], n)
    stride = np.round(_draw(rng, params["sample_dt"], n).astype(np.float64) / dt).astype(int)
    discard = round(25 / dt)

    def rhs(s: np.ndarray) -> np.ndarray:
        x, y, z = s
        return np.stack([10.0 * (y - x), x * (rho - z) - y, x * y - (8.0 / 3.0) * z])

    s0 = np.stack([rng.normal(0, 8, n), rng.normal(0, 8, n), rng.uniform(5, 40, n)])
    rec = _rk4_record(rhs, s0, dt, discard + int(stride.max()) * length)
    return _observe(rng, _take(rec, discard, stride, length), params["noise"])


@_blocks
def rossler_family(rng: np.random.Generator, n: int, length: int, params: ParamRanges) -> np.ndarray:
    """Rössler x (a = b = 0.2, c from ``c``), RK4 with dt 0.05, 150 time units discarded,
    sampled every ``sample_dt`` time units."""
    dt = 0.05
    c = _draw(rng, params["c"], n)
    stride = np.round(_draw(rng, params["sample_dt"], n).astype(np.float64) / dt).astype(int)
    discard = round(150 / dt)

    def rhs(s: np.ndarray) -> np.ndarray:
        x, y, z = s
        return np.stack([-y - z, x + 0.2 * y, 0.2 + z * (x - c)])

    s0 = np.stack([rng.normal(0, 3, n), rng.normal(0, 3, n), rng.uniform(0, 1, n)])
    rec = _rk4_record(rhs, s0, dt, discard + int(stride.max()) * length)
    return _observe(rng, _take(rec, discard, stride, length), params["noise"])


@_blocks
def mackey_glass_family(rng: np.random.Generator, n: int, length: int, params: ParamRanges) -> np.ndarray:
    """Mackey-Glass dx/dt = 0.2 x(t - tau) / (1 + x(t - tau)^10) - 0.1 x, integer delays ``tau``,
    RK4 with dt 0.1 (delayed term at half steps: mean of the neighbouring history points),
    constant random history, 500 time units discarded, sampled every ``sample_every`` units."""
    per_unit = 10
    dt = 1.0 / per_unit
    tau = _draw(rng, params["tau"], n).astype(int)
    every = _draw(rng, params["sample_every"], n).astype(int)
    discard = 500
    units = discard + int(every.max()) * length
    lag = tau * per_unit
    ring = int(lag.max()) + 1  # history ring buffer: x at grid index i lives in row i % ring
    cols = np.arange(n)
    x = rng.uniform(0.5, 1.3, n)
    buf = np.tile(x, (ring, 1))  # also the constant history for t < 0
    rec = np.empty((units + 1, n))
    rec[0] = x

    def f(d: np.ndarray) -> np.ndarray:
        d2 = d * d
        d4 = d2 * d2
        return 0.2 * d / (1.0 + d4 * d4 * d2)

    f0 = f(buf[(-lag) % ring, cols])
    d0 = buf[(-lag) % ring, cols]
    for i in range(units * per_unit):
        d1 = buf[(i + 1 - lag) % ring, cols]
        fm, f1 = f(0.5 * (d0 + d1)), f(d1)
        k1 = f0 - 0.1 * x
        k2 = fm - 0.1 * (x + 0.5 * dt * k1)
        k3 = fm - 0.1 * (x + 0.5 * dt * k2)
        k4 = f1 - 0.1 * (x + dt * k3)
        x = x + (dt / 6.0) * (k1 + 2.0 * (k2 + k3) + k4)
        buf[(i + 1) % ring] = x
        d0, f0 = d1, f1
        if (i + 1) % per_unit == 0:
            rec[(i + 1) // per_unit] = x
    return _observe(rng, _take(rec, discard, every, length), params["noise"])


# --------------------------------------------------------------------------- held-out-only families


def waveform_family(rng: np.random.Generator, n: int, length: int, params: ParamRanges) -> np.ndarray:
    """Sawtooth, square (random duty cycle) or triangle wave of period ``period`` plus noise."""
    kind = _draw(rng, params["waveform"], n)
    period = _draw(rng, params["period"], n).astype(np.float64)
    duty = rng.uniform(0.2, 0.8, n)
    frac = ((np.arange(length)[None] + rng.uniform(0, period)[:, None]) / period[:, None]) % 1.0
    saw = 2.0 * frac - 1.0
    square = np.where(frac < duty[:, None], 1.0, -1.0)
    triangle = 1.0 - 4.0 * np.abs(frac - 0.5)
    x = np.where((kind == "sawtooth")[:, None], saw, np.where((kind == "square")[:, None], square, triangle))
    sd = _draw(rng, params["noise"], n)
    return x + sd[:, None] * rng.standard_normal((n, length))


def oscillation_family(rng: np.random.Generator, n: int, length: int, params: ParamRanges) -> np.ndarray:
    """exp(g t) sin(2 pi t / P + phase): the amplitude decays ("damped") or grows ("growing") by
    a factor exp(``log_change``) over the series; noise sd relative to the initial amplitude."""
    grow = np.where(_draw(rng, params["mode"], n) == "growing", 1.0, -1.0)
    g = grow * _draw(rng, params["log_change"], n) / length
    period = _draw(rng, params["period"], n).astype(np.float64)
    t = np.arange(length)[None]
    x = np.exp(g[:, None] * t) * np.sin(
        2 * np.pi * t / period[:, None] + rng.uniform(0, 2 * np.pi, n)[:, None]
    )
    sd = _draw(rng, params["noise"], n)
    return x + sd[:, None] * rng.standard_normal((n, length))


def bursty_family(rng: np.random.Generator, n: int, length: int, params: ParamRanges) -> np.ndarray:
    """Shot noise: Poisson bursts (rate ``rate`` per step, log-normal sizes) decaying
    exponentially with time constant ``decay`` steps, on a quiet Gaussian baseline."""
    rate = _draw(rng, params["rate"], n)
    decay = np.exp(-1.0 / _draw(rng, params["decay"], n))
    total = length + 200
    kicks = (rng.random((total, n)) < rate) * rng.lognormal(0.0, 0.7, (total, n))
    s = np.zeros(n)
    out = np.empty((total, n))
    for t in range(total):
        s = decay * s + kicks[t]
        out[t] = s
    sd = _draw(rng, params["noise"], n)
    return out[200:].T + sd[:, None] * rng.standard_normal((n, length))


# --------------------------------------------------------------------------- the families

_SHARED_ARMA = {"p": [1, 2, 3, 4], "q": [1, 2, 3]}
_TAU_TRAIN = [12, 13, 14, 15, 16, 20, 22, 24, 26, 35, 40, 45]
_TAU_HELDOUT = [17, 30]

# name: (fn, train params, held-out params, train description, held-out description)
_SPEC: dict[str, tuple[FamilyFn, dict[str, ParamSpec], dict[str, ParamSpec], str, str]] = {
    "ar": (
        ar_family,
        {"order": [1, 2, 3, 4, 5, 6], "root_modulus": (0.1, 0.9), "noise": [0.0, 0.1]},
        {"order": [1, 2, 3, 4, 5, 6], "root_modulus": (0.92, 0.98), "noise": [0.0, 0.1]},
        "AR(1-6), random real/complex roots with moduli 0.1-0.9",
        "AR(1-6), near unit root: root moduli 0.92-0.98 (train 0.1-0.9)",
    ),
    "arma": (
        arma_family,
        {**_SHARED_ARMA, "ar_modulus": (0.1, 0.85), "ma_modulus": (0.1, 0.8)},
        {**_SHARED_ARMA, "ar_modulus": (0.1, 0.85), "ma_modulus": (0.85, 0.97)},
        "ARMA(1-4, 1-3), Gaussian noise, AR root moduli 0.1-0.85, MA root moduli 0.1-0.8",
        "ARMA(1-4, 1-3), nearly non-invertible: MA root moduli 0.85-0.97 (train 0.1-0.8)",
    ),
    "sinusoids": (
        sinusoids_family,
        {"n_sines": [1, 2, 3, 4], "period": (4.0, 48.0), "noise": [0.0, 0.05, 0.1, 0.3]},
        {"n_sines": [1, 2, 3, 4], "period": (55.0, 150.0), "noise": [0.0, 0.05, 0.1, 0.3]},
        "sum of 1-4 sinusoids, periods log-uniform 4-48 steps, plus noise",
        "sum of 1-4 sinusoids, long periods log-uniform 55-150 steps (train 4-48)",
    ),
    "trend_shifts": (
        trend_shifts_family,
        {"slope": (-0.03, 0.03), "n_shifts": [0, 1, 2], "shift_size": (1.0, 5.0), "noise_ar": (0.0, 0.6)},
        {"slope": (-0.03, 0.03), "n_shifts": [4, 5, 6], "shift_size": (1.0, 5.0), "noise_ar": (0.0, 0.6)},
        "linear trend (slope +-0.03 noise sd/step) + 0-2 level shifts (1-5 sd) + AR(1) noise",
        "linear trend + many level shifts: 4-6 (train 0-2)",
    ),
    "random_walk": (
        random_walk_family,
        {"drift": (-0.2, 0.2), "increment_ar": (-0.3, 0.3)},
        {"drift": (-0.2, 0.2), "increment_ar": (0.5, 0.8)},
        "random walk, half with drift +-0.2, increments AR(1) with coefficient -0.3-0.3",
        "random walk with momentum: increment AR(1) coefficient 0.5-0.8 (train -0.3-0.3)",
    ),
    "seasonal": (
        seasonal_family,
        {"period": [4, 7, 12, 24, 48], "slope": (-0.01, 0.01), "noise": [0.05, 0.1, 0.3, 0.5]},
        {"period": [5, 10, 30, 52], "slope": (-0.01, 0.01), "noise": [0.05, 0.1, 0.3, 0.5]},
        "random profile of period 4/7/12/24/48 repeated, half with trend, plus noise",
        "random seasonal profile of period 5/10/30/52 (train 4/7/12/24/48)",
    ),
    "regime_switching": (
        regime_family,
        {"stay": (0.9, 0.99), "mean_gap": (2.0, 5.0), "phi": (-0.5, 0.95)},
        {"stay": (0.7, 0.85), "mean_gap": (2.0, 5.0), "phi": (-0.5, 0.95)},
        "Markov switching between two AR(1)s, regime kept w.p. 0.9-0.99 per step",
        "Markov-switching AR(1)s with fast switching: stay probability 0.7-0.85 (train 0.9-0.99)",
    ),
    "logistic": (
        logistic_family,
        {"r": (3.6, 3.82), "stride": [1, 2], "noise": NOISE_LEVELS},
        {"r": (3.86, 3.99), "stride": [1, 2], "noise": NOISE_LEVELS},
        "logistic map, r 3.6-3.82, every 1st/2nd iterate, observation noise 0-10 %",
        "logistic map, r 3.86-3.99 (train 3.6-3.82)",
    ),
    "henon": (
        henon_family,
        {"a": (1.25, 1.34), "stride": [1, 2], "noise": NOISE_LEVELS},
        {"a": (1.37, 1.41), "stride": [1, 2], "noise": NOISE_LEVELS},
        "Hénon map x (b 0.3), a 1.25-1.34, every 1st/2nd iterate, observation noise 0-10 %",
        "Hénon map x, a 1.37-1.41 (train 1.25-1.34)",
    ),
    "lorenz": (
        lorenz_family,
        {"rho": (26.0, 34.0), "sample_dt": [0.02, 0.05, 0.1], "noise": NOISE_LEVELS},
        {"rho": (26.0, 34.0), "sample_dt": [0.03, 0.15], "noise": NOISE_LEVELS},
        "Lorenz x, rho 26-34, sampled every 0.02/0.05/0.1 time units, observation noise 0-10 %",
        "Lorenz x sampled every 0.03/0.15 time units (train 0.02/0.05/0.1)",
    ),
    "rossler": (
        rossler_family,
        {"c": (5.5, 6.5), "sample_dt": [0.1, 0.25, 0.5], "noise": NOISE_LEVELS},
        {"c": (5.5, 6.5), "sample_dt": [0.15, 0.75], "noise": NOISE_LEVELS},
        "Rössler x, c 5.5-6.5, sampled every 0.1/0.25/0.5 time units, observation noise 0-10 %",
        "Rössler x sampled every 0.15/0.75 time units (train 0.1/0.25/0.5)",
    ),
    "mackey_glass": (
        mackey_glass_family,
        {"tau": _TAU_TRAIN, "sample_every": [1, 2, 3], "noise": NOISE_LEVELS},
        {"tau": _TAU_HELDOUT, "sample_every": [1, 2, 3], "noise": NOISE_LEVELS},
        "Mackey-Glass, tau 12-16/20-26/35-45, sampled every 1/2/3 time units, noise 0-10 %",
        "Mackey-Glass, tau 17 and 30 (train 12-16, 20-26, 35-45)",
    ),
}

_HELDOUT_ONLY: dict[str, tuple[FamilyFn, dict[str, ParamSpec], str]] = {
    "waveform": (
        waveform_family,
        {"waveform": ["sawtooth", "square", "triangle"], "period": (8.0, 64.0), "noise": [0.0, 0.05, 0.1]},
        "held-out family: sawtooth, square (duty 0.2-0.8) or triangle wave, period 8-64, plus noise",
    ),
    "oscillation": (
        oscillation_family,
        {
            "mode": ["damped", "growing"],
            "log_change": (1.0, 3.0),
            "period": (10.0, 60.0),
            "noise": [0.01, 0.05],
        },
        "held-out family: sinusoid whose amplitude decays or grows by e^1-e^3 over the series",
    ),
    "arma_t": (
        arma_t_family,
        {**_SHARED_ARMA, "ar_modulus": (0.1, 0.85), "ma_modulus": (0.1, 0.8), "df": (2.5, 5.0)},
        "held-out family: ARMA(1-4, 1-3) with heavy-tailed Student-t noise, 2.5-5 degrees of freedom",
    ),
    "bursty": (
        bursty_family,
        {"rate": (0.005, 0.03), "decay": (2.0, 20.0), "noise": [0.01, 0.05, 0.1]},
        "held-out family: shot noise, Poisson bursts (0.005-0.03 per step) decaying over 2-20 steps",
    ),
}

TRAIN_FAMILIES: dict[str, Family] = {
    name: Family(name, fn, train, desc) for name, (fn, train, _, desc, _) in _SPEC.items()
}
HELDOUT_FAMILIES: dict[str, Family] = {
    **{name: Family(name, fn, held, desc) for name, (fn, _, held, _, desc) in _SPEC.items()},
    **{name: Family(name, fn, params, desc) for name, (fn, params, desc) in _HELDOUT_ONLY.items()},
}
HELDOUT_ONLY = tuple(_HELDOUT_ONLY)


# --------------------------------------------------------------------------- sampling


def _standardise(x: np.ndarray, family: str) -> np.ndarray:
    assert np.isfinite(x).all(), f"family {family} produced non-finite values"
    sd = x.std(axis=1, keepdims=True)
    assert (sd > 1e-9 * (1.0 + np.abs(x).max(axis=1, keepdims=True))).all(), f"{family}: constant series"
    return (x - x.mean(axis=1, keepdims=True)) / sd


def _affine(rng: np.random.Generator, z: np.ndarray) -> np.ndarray:
    """Scale 10**U(-1, 1) and offset N(0, 3) * scale, per series (rows of z)."""
    scale = 10.0 ** rng.uniform(-1.0, 1.0, len(z))
    offset = rng.normal(0.0, 3.0, len(z)) * scale
    return z * scale[:, None] + offset[:, None]


def _families(split: str) -> dict[str, Family]:
    if split == "train":
        return TRAIN_FAMILIES
    if split == "heldout":
        return HELDOUT_FAMILIES
    raise ValueError(f"split must be 'train' or 'heldout', got {split!r}")


def sample_corpus(rng: np.random.Generator, n: int, length: int, split: str = "train") -> np.ndarray:
    """``n`` series of ``length`` steps, (n, length) float32, in random order.

    The families of ``split`` ("train": ``TRAIN_FAMILIES`` with their train ranges; "heldout":
    ``HELDOUT_FAMILIES``, i.e. the held-out ranges of the training families and the held-out-only
    families) contribute n // F series each (the remainder goes to randomly chosen families).
    Each series is z-scored and given a random affine transform: scale 10**U(-1, 1), offset
    N(0, 3) * scale. Deterministic for the state of ``rng``.
    """
    assert n >= 0 and length >= 2, "need n >= 0 and length >= 2"
    fams = list(_families(split).values())
    counts = np.full(len(fams), n // len(fams))
    counts[rng.choice(len(fams), n % len(fams), replace=False)] += 1
    parts = [
        _standardise(fam.fn(rng, int(c), length, fam.params), fam.name)
        for fam, c in zip(fams, counts, strict=True)
        if c > 0
    ]
    z = np.concatenate(parts) if parts else np.zeros((0, length))
    out = _affine(rng, z)[rng.permutation(n)].astype(np.float32)
    assert np.isfinite(out).all(), "corpus contains non-finite values"
    return out


# name, held-out family, pinned parameters (inside the held-out range), season
_HELDOUT_SERIES: list[tuple[str, str, dict[str, list[Any]], int | None]] = [
    ("mackey_glass_tau17", "mackey_glass", {"tau": [17], "sample_every": [1], "noise": [0.0]}, None),
    ("mackey_glass_tau30", "mackey_glass", {"tau": [30], "sample_every": [2], "noise": [0.01]}, None),
    ("lorenz_dt0.03", "lorenz", {"sample_dt": [0.03], "noise": [0.0]}, None),
    ("lorenz_dt0.15", "lorenz", {"sample_dt": [0.15], "noise": [0.05]}, None),
    ("rossler_dt0.15", "rossler", {"sample_dt": [0.15], "noise": [0.0]}, None),
    ("rossler_dt0.75", "rossler", {"sample_dt": [0.75], "noise": [0.01]}, None),
    ("logistic_r3.9", "logistic", {"r": [3.9], "stride": [1], "noise": [0.0]}, None),
    ("henon_a1.4", "henon", {"a": [1.4], "stride": [1], "noise": [0.0]}, None),
    ("ar_near_unit_root", "ar", {"order": [3], "noise": [0.0]}, None),
    ("arma_near_noninvertible", "arma", {"p": [2], "q": [2]}, None),
    ("sinusoids_long_period", "sinusoids", {"n_sines": [2], "noise": [0.05]}, None),
    ("seasonal_52", "seasonal", {"period": [52], "noise": [0.1]}, 52),
    ("seasonal_10", "seasonal", {"period": [10], "noise": [0.3]}, 10),
    ("trend_many_shifts", "trend_shifts", {"n_shifts": [5]}, None),
    ("random_walk_momentum", "random_walk", {}, None),
    ("regime_fast_switching", "regime_switching", {}, None),
    ("sawtooth_20", "waveform", {"waveform": ["sawtooth"], "period": [20], "noise": [0.05]}, 20),
    ("square_16", "waveform", {"waveform": ["square"], "period": [16], "noise": [0.05]}, 16),
    ("damped_oscillation", "oscillation", {"mode": ["damped"], "period": [25], "noise": [0.01]}, 25),
    ("growing_oscillation", "oscillation", {"mode": ["growing"], "period": [40], "noise": [0.01]}, 40),
    ("arma_student_t", "arma_t", {"df": [3.0]}, None),
    ("bursty", "bursty", {"noise": [0.05]}, None),
]


def _inside(values: list[Any], spec: ParamSpec) -> bool:
    if isinstance(spec, tuple):
        return all(spec[0] <= v <= spec[1] for v in values)
    return all(v in spec for v in values)


def heldout_series(seed: int = 0, length: int = 1000) -> list[tuple[str, np.ndarray, int | None]]:
    """A fixed list of named held-out evaluation series: (name, values (length,) float64, season).

    At least one per held-out-only family and per held-out range of a training family, with some
    parameters pinned to values inside the held-out ranges (e.g. Mackey-Glass tau 17 and 30).
    ``season`` is the integer period where one is known, else None. Each series gets the same
    z-score + random affine transform as ``sample_corpus``. Series i is drawn from
    ``np.random.default_rng([seed, i])``, so the list is deterministic for a seed.
    """
    out: list[tuple[str, np.ndarray, int | None]] = []
    for i, (name, family, pinned, season) in enumerate(_HELDOUT_SERIES):
        fam = HELDOUT_FAMILIES[family]
        for key, values in pinned.items():
            assert _inside(values, fam.params[key]), f"{name}: {key}={values} not in the held-out range"
        rng = np.random.default_rng([seed, i])
        x = fam.fn(rng, 1, length, {**fam.params, **pinned})
        values = _affine(rng, _standardise(x, name))[0].astype(np.float64)
        out.append((name, values, season))
    return out


def _json_params(params: Mapping[str, ParamSpec]) -> dict[str, Any]:
    return {
        k: {"range": list(v)} if isinstance(v, tuple) else {"choices": list(v)} for k, v in params.items()
    }


def describe() -> dict[str, Any]:
    """A JSON-serialisable description of the corpus for a model card: every family with its
    parameter ranges per split, the affine transform, and the fixed held-out evaluation series."""
    families: dict[str, Any] = {}
    for name, fam in TRAIN_FAMILIES.items():
        held = HELDOUT_FAMILIES[name]
        families[name] = {
            "split": "train (held-out ranges in heldout)",
            "description": fam.description,
            "heldout_description": held.description,
            "train_params": _json_params(fam.params),
            "heldout_params": _json_params(held.params),
            "heldout_differs_in": sorted(k for k in fam.params if fam.params[k] != held.params[k]),
        }
    for name in HELDOUT_ONLY:
        fam = HELDOUT_FAMILIES[name]
        families[name] = {
            "split": "heldout only",
            "description": fam.description,
            "heldout_params": _json_params(fam.params),
        }
    return {
        "transform": "per series: z-score, then scale s = 10**U(-1, 1) and offset N(0, 3) * s",
        "split": "train: training families with train ranges; heldout: the same families with "
        "disjoint held-out ranges plus held-out-only families; mixed evenly across families",
        "params_note": "range: uniform (periods of sinusoids log-uniform); choices: uniform choice",
        "families": families,
        "heldout_series": [
            {"name": name, "family": family, "pinned": pinned, "season": season}
            for name, family, pinned, season in _HELDOUT_SERIES
        ],
    }
