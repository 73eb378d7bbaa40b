"""Evaluate a MemNet on series it never trained on: ``memserve evaluate memnet --checkpoint
memnet-universal`` (the default for a corpus-trained checkpoint, ``--heldout`` for any other).

Every series is scored by one protocol (``models.baselines.score_series``): the first 70 %
is history (the AR(20) baseline is fitted on it; the model just streams through it, with no
training), the last 30 % is scored. One-step NRMSE over every scored point and h = 10
NRMSE from up to 50 evenly spaced forecast origins, next to persistence, seasonal naive
(where a season is known) and AR(20). The series:

* **generated, held out**: ``models.data.corpus.heldout_series`` — families never in the
  training corpus and parameter ranges disjoint from the training ones;
* **Mackey-Glass** (tau 17, the test split of ``memnet-mackey-glass``) and **Santa Fe**
  (the laser's test split; skipped, saying so, without ``../shared/data``);
* **real series** from the statsmodels package (``models.data.real``): yearly sunspots,
  weekly Mauna Loa CO2, monthly El Nino sea temperatures, the yearly Nile flow.

Calibration: the share of scored next values inside the 80 % and 95 % one-step intervals,
pooled over the generated and the real series apart. Anomaly flags: the share of scored
points flagged (outside the 99 % interval) on the clean generated series, and the flags on
a held-out series with injected spikes.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from models.baselines import forecast_origins, score_series
from models.data.corpus import heldout_series
from models.data.timeseries import MACKEY_GLASS_TRAIN, load_series, mackey_glass
from models.memnet import MemNet, MemNetState
from models.stream import stream

HORIZON = 10
Z80, Z95, Z99 = 1.2816, 1.9600, 2.5758


class Streamed:
    """One pass of a model over a series: one-step means and stds, and states at origins."""

    def __init__(self, model: MemNet, card: dict[str, Any], x: np.ndarray, keep: set[int]) -> None:
        norm = card.get("normalization") or {}
        self.mean = float((norm.get("mean") or [0.0])[0])
        self.std = float((norm.get("std") or [1.0])[0])
        self.model = model
        z = ((x - self.mean) / self.std).astype(np.float32)[:, None]  # (T,) -> (T, 1)
        with torch.inference_mode():
            means, stds, self.states = stream(model, z, 0, keep, progress=False)  # 2 x (T, 1)
        self.pred = means[:, 0] * self.std + self.mean  # (T,) predicts x[t + 1]
        self.sd = stds[:, 0] * self.std
        self._z_pred = torch.from_numpy(means)  # (T, 1) model units

    def forecast(self, origins: np.ndarray, horizon: int) -> np.ndarray:
        """Iterated mean forecasts (len(origins), horizon) from the states at the origins."""
        batch = MemNetState.stack([self.states[int(o)] for o in origins])
        y_last = self._z_pred[torch.from_numpy(origins)]  # (S, 1)
        fc = self.model.forecast(y_last, batch, horizon).numpy()[:, :, 0]  # (S, H, 1) -> (S, H)
        return fc * self.std + self.mean


def score(model: MemNet, card: dict[str, Any], x: np.ndarray, season: int | None) -> tuple[dict, Streamed]:
    """``score_series`` for the model, plus its one-step interval coverage and flag rate."""
    n = len(x)
    n_fit = int(0.7 * n)
    run = Streamed(model, card, x, set(forecast_origins(n, horizon=HORIZON).tolist()))
    res = score_series(x, lambda _x: run.pred, lambda _x, o, h: run.forecast(o, h), season, horizon=HORIZON)
    t = np.arange(n_fit - 1, n - 1)
    if model.config.predict_scale:
        dev = np.abs(x[t + 1] - run.pred[t]) / run.sd[t]
        res["coverage"] = {"80": float(np.mean(dev <= Z80)), "95": float(np.mean(dev <= Z95))}
        res["flagged"] = float(np.mean(dev > Z99))
    return res, run


def collect_series(data_dir: Path | None, notes: list[str]) -> list[tuple[str, str, np.ndarray, int | None]]:
    """(group, name, values, season) for every evaluation series that can be loaded here."""
    out: list[tuple[str, str, np.ndarray, int | None]] = []
    for name, x, season in heldout_series(seed=0, length=1000):
        out.append(("generated", name, x, season))
    mg = mackey_glass(7000)[MACKEY_GLASS_TRAIN:]
    out.append(("benchmark", "mackey-glass (tau 17, test split)", mg, None))
    try:
        sf, info = load_series("santafe", data_dir)
        test = sf[info["n_train"] :, 0].astype(np.float64)
        out.append(("benchmark", "santa fe laser (test split)", test, None))
    except FileNotFoundError as e:
        notes.append(f"santa fe skipped: {e}")
    try:
        from models.data.real import real_series

        for r in real_series():
            out.append(("real", r.name, np.asarray(r.values, np.float64), r.season))
    except ImportError as e:
        notes.append(f"real series skipped: {e}")
    return out


def geo_mean(values: list[float]) -> float:
    return float(np.exp(np.mean(np.log(values)))) if values else float("nan")


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Geometric means of NRMSE ratios and wins, over all rows and per group."""
    out: dict[str, Any] = {}
    for group in ("all", "generated", "benchmark", "real"):
        rs = [r for r in rows if group == "all" or r["group"] == group]
        if not rs:
            continue
        g: dict[str, Any] = {"series": len(rs)}
        for block in ("one_step", f"h{HORIZON}"):
            m = [r[block]["model"] for r in rs]
            g[block] = {
                "geo_mean_model": geo_mean(m),
                "geo_mean_persistence": geo_mean([r[block]["persistence"] for r in rs]),
                "geo_mean_ar20": geo_mean([r[block]["ar20"] for r in rs]),
                "model_over_ar20": geo_mean([r[block]["model"] / r[block]["ar20"] for r in rs]),
                "beats_persistence": sum(r[block]["model"] < r[block]["persistence"] for r in rs),
                "beats_ar20": sum(r[block]["model"] < r[block]["ar20"] for r in rs),
            }
        if all("coverage" in r for r in rs):
            n = [r["n_scored"] for r in rs]
            for lv in ("80", "95"):
                g[f"coverage_{lv}"] = float(np.average([r["coverage"][lv] for r in rs], weights=n))
            g["flagged"] = float(np.average([r["flagged"] for r in rs], weights=n))
        out[group] = g
    return out


def spike_check(model: MemNet, card: dict[str, Any], n_spikes: int = 10) -> dict[str, Any]:
    """Inject spikes of 6 series stds into a held-out series: how many are flagged, and false flags."""
    name, x, _ = heldout_series(seed=1, length=1000)[0]
    rng = np.random.default_rng(5)
    at = np.sort(rng.choice(np.arange(300, 990, 10), n_spikes, replace=False))
    y = x.copy()
    y[at] += 6 * x[:300].std() * rng.choice([-1.0, 1.0], n_spikes)
    run = Streamed(model, card, y, set())
    t = np.arange(299, len(y) - 1)
    dev = np.abs(y[t + 1] - run.pred[t]) / run.sd[t]
    flagged = set((t[dev > Z99] + 1).tolist())
    hits = sum(int(a) in flagged for a in at)
    return {"series": name, "spikes": n_spikes, "flagged_spikes": hits, "other_flags": len(flagged) - hits,
            "points": len(t), "spike_size": "6 x the std of the first 300 points"}  # fmt: skip


def evaluate_heldout(
    model: MemNet, card: dict[str, Any], data_dir: Path | None = None, progress: bool = True,
    traces: dict[str, Any] | None = None,
) -> dict[str, Any]:  # fmt: skip
    """The held-out table, its summary, calibration and the spike check (the card's metrics)."""
    model.eval()
    notes: list[str] = []
    rows = []
    for group, name, x, season in tqdm(collect_series(data_dir, notes), desc="series", disable=not progress):
        res, run = score(model, card, x, season)
        res.pop("origins", None)
        rows.append({"group": group, "name": name, "length": len(x), "season": season, **res})
        if traces is not None:
            traces[name] = (x, run.pred, run.sd, int(0.7 * len(x)))
    metrics: dict[str, Any] = {
        "protocol": "fit/history on the first 70 % of each series, scored on the last 30 %; NRMSE = "
        "RMSE / std of the scored targets; h10 from up to 50 evenly spaced origins; AR(20) ridge "
        "fitted on the 70 %; the model is not trained on any of these series",
        "series": rows,
        "summary": summarise(rows),
    }
    if model.config.predict_scale:
        metrics["anomaly_spikes"] = spike_check(model, card)
    metrics["notes"] = notes
    metrics["evaluated"] = datetime.now(UTC).isoformat(timespec="seconds")
    return metrics


def format_heldout(metrics: dict[str, Any]) -> str:
    """The table as text: one row per series, then the summary."""
    head = f"{'series':<34} {'1-step':>7} {'pers':>7} {'snaive':>7} {'ar20':>7} | {'h10':>7} {'pers':>7} "
    head += f"{'snaive':>7} {'ar20':>7} | {'cov80':>5} {'cov95':>5}"
    lines = [head]
    fmt: Callable[[float | None], str] = lambda v: f"{v:7.3f}" if v is not None else f"{'-':>7}"  # noqa: E731
    for r in metrics["series"]:
        one, h = r["one_step"], r[f"h{HORIZON}"]
        cov = r.get("coverage", {})
        snaive1, snaive_h = fmt(one.get("seasonal_naive")), fmt(h.get("seasonal_naive"))
        lines.append(
            f"{r['name'][:34]:<34} {fmt(one['model'])} {fmt(one['persistence'])} {snaive1} "
            f"{fmt(one['ar20'])} | {fmt(h['model'])} {fmt(h['persistence'])} {snaive_h} "
            f"{fmt(h['ar20'])} | {cov.get('80', float('nan')):5.2f} {cov.get('95', float('nan')):5.2f}"
        )
    for group, g in metrics["summary"].items():
        for block in ("one_step", f"h{HORIZON}"):
            b = g[block]
            lines.append(
                f"{group:>10} {block:>8}: geo-mean model {b['geo_mean_model']:.3f}, persistence "
                f"{b['geo_mean_persistence']:.3f}, ar20 {b['geo_mean_ar20']:.3f} (model/ar20 "
                f"{b['model_over_ar20']:.3f}); beats persistence on {b['beats_persistence']}/{g['series']}, "
                f"ar20 on {b['beats_ar20']}/{g['series']}"
            )
        if "coverage_80" in g:
            lines.append(
                f"{group:>10} coverage 80 %: {g['coverage_80']:.3f}, 95 %: {g['coverage_95']:.3f}, "
                f"flagged (99 %): {g['flagged']:.4f}"
            )
    if "anomaly_spikes" in metrics:
        a = metrics["anomaly_spikes"]
        lines.append(f"spikes: {a['flagged_spikes']}/{a['spikes']} flagged, {a['other_flags']} other flags "
                     f"in {a['points']} points")  # fmt: skip
    lines += metrics.get("notes", [])
    return "\n".join(lines)


def markdown_table(metrics: dict[str, Any]) -> str:
    """The held-out table as Markdown, for the docs (bold: the best of each block)."""

    def cells(block: dict[str, float]) -> list[str]:
        keys = ("model", "persistence", "seasonal_naive", "ar20")
        best = min(v for k, v in block.items() if k in keys)
        out = []
        for k in keys:
            v = block.get(k)
            out.append("-" if v is None else (f"**{v:.3f}**" if v == best else f"{v:.3f}"))
        return out

    head = "| series | group | model | persistence | seasonal naive | AR(20) | model h10 | persistence | "
    head += "seasonal naive | AR(20) | 80 % cov. | 95 % cov. |"
    lines = [head, "|" + "---|" * 12]
    for r in metrics["series"]:
        cov = r.get("coverage", {})
        row = [r["name"], r["group"], *cells(r["one_step"]), *cells(r[f"h{HORIZON}"])]
        row += [f"{cov['80']:.2f}" if cov else "-", f"{cov['95']:.2f}" if cov else "-"]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)
