"""Evaluate a MemNet checkpoint on the test split of its series, next to two baselines.

``python -m models.evaluate memnet --checkpoint memnet-santafe [--write]``
(``python -m models.evaluate vma ...`` evaluates a VMA checkpoint: see ``models/evaluate_vma.py``.)

* **One-step NRMSE**: teacher forcing through the whole test stream, after a warm-up on the
  last ``--warmup`` points of the training split (so memory and hidden state are filled).
* **Iterated h-step NRMSE** for h in 1, 10, 20, 84: from ``--starts`` evenly spaced forecast
  origins s in the test stream (s >= the last training index, s + max(h) within the test
  data). The state at s comes from running the true series up to and including s; the
  forecast feeds predictions back (``MemNet.forecast``) and the h-step prediction is
  compared with x[s + h].
* **Baselines** on the same split and starts: persistence (x[s + h] = x[s]) and an AR(20)
  ridge regression (alpha 1e-3 on z-scored data, with intercept) fit on the training split,
  iterated for multi-step forecasts.

``--split val`` runs the same protocol on the validation split instead (the training part
only: the last ``val_frac`` of it plays the test split, AR(20) is fit on the rest); use it
to choose between checkpoints without looking at test. It is printed, never written.

NRMSE = RMSE / std of the test targets, both in original units; for D > 1 channels the
per-channel ratios are pooled as sqrt(mean_d MSE_d / var_d). Because of the division by the
test std the value does not depend on the z-scoring the model uses internally.
"""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch

from models.checkpoint import load_checkpoint, read_card, resolve_card_path, write_card
from models.data.timeseries import load_series
from models.memnet import MemNet, MemNetState
from models.stream import stream

HORIZONS = (1, 10, 20, 84)
AR_ORDER = 20
AR_ALPHA = 1e-3


def nrmse(pred: np.ndarray, target: np.ndarray, scale_var: np.ndarray) -> float:
    """sqrt(mean_d MSE_d / var_d); pred/target (..., D), scale_var (D,)."""
    mse = ((pred - target) ** 2).reshape(-1, target.shape[-1]).mean(axis=0)  # (D,)
    return float(np.sqrt(np.mean(mse / scale_var)))


def forecast_starts(n_train: int, total: int, n_starts: int, max_h: int) -> np.ndarray:
    """Evenly spaced origins s with every target x[s + 1 .. s + max_h] in the test split."""
    lo, hi = n_train - 1, total - 1 - max_h
    assert hi >= lo, f"test split ({total - n_train} points) shorter than horizon {max_h}"
    return np.unique(np.linspace(lo, hi, n_starts).round().astype(np.int64))


class AR:
    """Linear autoregression of order p with an intercept, fit by ridge regression."""

    def __init__(self, order: int = AR_ORDER, alpha: float = AR_ALPHA) -> None:
        self.order, self.alpha = order, alpha

    def _lags(self, z: np.ndarray, ends: np.ndarray) -> np.ndarray:
        """Rows [z[e - p + 1 .. e] flattened, 1] for each end index e -> (len(ends), pD + 1)."""
        idx = ends[:, None] - np.arange(self.order)[None, ::-1]  # (n, p), oldest first
        lags = z[idx].reshape(len(ends), -1)  # (n, p, D) -> (n, p D)
        return np.concatenate([lags, np.ones((len(ends), 1))], axis=1)

    def fit(self, z_train: np.ndarray) -> AR:
        ends = np.arange(self.order - 1, len(z_train) - 1)
        a = self._lags(z_train.astype(np.float64), ends)
        b = z_train[ends + 1].astype(np.float64)  # (n, D)
        reg = self.alpha * np.eye(a.shape[1])
        reg[-1, -1] = 0.0  # leave the intercept unpenalised
        self.coef = np.linalg.solve(a.T @ a + reg, a.T @ b)  # (p D + 1, D)
        return self

    def forecast(self, z: np.ndarray, origins: np.ndarray, horizon: int) -> np.ndarray:
        """Iterated forecasts from the true history up to each origin -> (S, horizon, D)."""
        hist = [z[o - self.order + 1 : o + 1].astype(np.float64) for o in origins]
        window = np.stack(hist)  # (S, p, D)
        outs = []
        for _ in range(horizon):
            row = np.concatenate([window.reshape(len(origins), -1), np.ones((len(origins), 1))], 1)
            nxt = row @ self.coef  # (S, D)
            outs.append(nxt)
            window = np.concatenate([window[:, 1:], nxt[:, None]], axis=1)  # drop oldest
        return np.stack(outs, axis=1)  # horizon x (S, D) -> (S, horizon, D)


def evaluate_memnet(
    model: MemNet,
    card: dict,
    series: np.ndarray,
    n_train: int,
    n_starts: int = 50,
    horizons: tuple[int, ...] = HORIZONS,
    warmup: int = 1000,
    progress: bool = True,
    traces: dict | None = None,
) -> dict:
    """Test-split metrics of ``model`` and the baselines; returns the card's "metrics" dict.

    With ``traces`` (a dict), the arrays behind the numbers are put there for plotting.
    """
    mean = np.asarray(card["normalization"]["mean"], dtype=np.float32)
    std = np.asarray(card["normalization"]["std"], dtype=np.float32)
    z = ((series - mean) / std).astype(np.float32)
    test = series[n_train:]
    var = test.var(axis=0).astype(np.float64)
    var = np.where(var > 0, var, 1.0)
    horizons = tuple(h for h in horizons if h <= max(1, (len(series) - n_train) // 2))  # short test splits
    max_h = max(horizons)
    origins = forecast_starts(n_train, len(series), n_starts, max_h)
    begin = max(0, n_train - warmup)
    preds, _, states = stream(model, z, begin, set(origins.tolist()), progress)
    one_step = preds[n_train - 1 - begin : len(z) - 1 - begin] * std + mean  # predicts test
    ar = AR().fit(z[:n_train])
    ar_one = ar.forecast(z, np.arange(n_train - 1, len(z) - 1), 1)[:, 0] * std + mean
    metrics: dict = {
        "split": "test",
        "nrmse": "RMSE / std of test targets, original units",
        "one_step": {
            "model": nrmse(one_step, test, var),
            "persistence": nrmse(series[n_train - 1 : -1], test, var),
            "ar20": nrmse(ar_one, test, var),
        },
    }
    y_last = torch.from_numpy(preds[origins - begin]).to(model.log_sigma.device)  # (S, D)
    batch = MemNetState.stack([states[int(o)] for o in origins])
    model_fc = model.forecast(y_last, batch, max_h).cpu().numpy() * std + mean  # (S, H, D)
    ar_fc = ar.forecast(z, origins, max_h) * std + mean
    metrics["horizons"] = {}
    for h in horizons:
        target = series[origins + h]  # (S, D)
        metrics["horizons"][str(h)] = {
            "model": nrmse(model_fc[:, h - 1], target, var),
            "persistence": nrmse(series[origins], target, var),
            "ar20": nrmse(ar_fc[:, h - 1], target, var),
        }
    if traces is not None:
        traces.update(test=test, one_step=one_step, origins=origins - n_train, series=series)
        traces.update(model_fc=model_fc, ar_fc=ar_fc, n_train=n_train)
    metrics.update(starts=origins.tolist(), n_starts=len(origins), warmup=n_train - begin)
    metrics.update(ar={"order": AR_ORDER, "alpha": AR_ALPHA, "fit": "train split, z-scored"})
    metrics["evaluated"] = datetime.now(UTC).isoformat(timespec="seconds")
    return metrics


def validation_view(series: np.ndarray, n_train: int, val_frac: float) -> tuple[np.ndarray, int]:
    """(training part, n_fit): the validation split plays the test split, as in training."""
    n_fit = n_train - round(n_train * val_frac)
    return series[:n_train], n_fit


def format_table(metrics: dict) -> str:
    rows = [f"{'NRMSE':>12} {'model':>9} {'persist':>9} {'ar20':>9}"]
    one = metrics["one_step"]
    rows.append(f"{'one-step':>12} {one['model']:9.4f} {one['persistence']:9.4f} {one['ar20']:9.4f}")
    for h, m in metrics["horizons"].items():
        rows.append(f"{'h=' + h:>12} {m['model']:9.4f} {m['persistence']:9.4f} {m['ar20']:9.4f}")
    return "\n".join(rows)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="memserve evaluate", description=__doc__.split("\n")[0])
    p.add_argument("kind", choices=["memnet", "vma"], help="model kind (vma: see evaluate vma -h)")
    p.add_argument("--checkpoint", required=True, help="checkpoint name or .json path")
    p.add_argument("--dir", default="checkpoints", help="checkpoint folder")
    p.add_argument("--data", default=None, help="override the card's data spec")
    p.add_argument("--data-dir", type=Path, default=None, help="folder holding timeseries/")
    p.add_argument("--starts", type=int, default=50, help="forecast origins in the test split")
    p.add_argument("--warmup", type=int, default=1000, help="training points before test")
    p.add_argument("--split", choices=["test", "val"], default="test",
                   help="val: the same protocol on the validation split (the end of the "
                   "training part, the card's data.val points), for choosing checkpoints "
                   "without looking at test; never written into the card")  # fmt: skip
    p.add_argument("--heldout", action="store_true",
                   help="score on held-out generated, benchmark and real series "
                   "(models/evaluate_universal.py); the default for a corpus-trained checkpoint")  # fmt: skip
    p.add_argument("--write", action="store_true", help="store the metrics in the card")
    p.add_argument("--plot", action="store_true", help="save <dir>/<name>.png (needs matplotlib)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--quiet", action="store_true")
    return p


def heldout_main(args: argparse.Namespace, model: MemNet, card: dict) -> int:
    """``evaluate --heldout``: the held-out table, written under ``metrics`` with --write."""
    from models.evaluate_universal import evaluate_heldout, format_heldout

    traces: dict = {}
    metrics = evaluate_heldout(model, card, args.data_dir, progress=not args.quiet, traces=traces)
    print(format_heldout(metrics))
    card_path = resolve_card_path(args.checkpoint, args.dir)
    if args.write:
        fresh = read_card(card_path)
        fresh["metrics"] = metrics
        write_card(card_path, fresh)
        print(f"wrote metrics into {card_path}")
    if args.plot:
        from models.plots import plot_heldout

        out = card_path.with_suffix(".png")
        plot_heldout(traces, metrics, str(card.get("name", args.checkpoint)), out)
        print(f"wrote {out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; prints the metrics table and optionally writes it into the card."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["vma"]:
        from models.evaluate_vma import main as evaluate_vma

        return evaluate_vma(argv)
    args = build_parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    model, card = load_checkpoint(args.checkpoint, args.dir)
    assert isinstance(model, MemNet), "checkpoint is not a memnet"
    if args.heldout or card["data"].get("source") == "corpus":
        return heldout_main(args, model, card)
    data = card["data"]
    spec = args.data or data.get("path") or data["spec"]
    series, info = load_series(spec, args.data_dir, data.get("train_frac", 0.8), data.get("columns"),
                               data.get("fill", "none"))  # fmt: skip
    n_train = data["train"] if args.data is None else info["n_train"]
    if args.split == "val":
        assert not args.write, "--write stores test metrics only"
        series, n_train = validation_view(series, n_train, data.get("val_frac", 0.1))
    traces: dict = {}
    metrics = evaluate_memnet(
        model, card, series, n_train, args.starts, warmup=args.warmup, progress=not args.quiet, traces=traces
    )
    metrics["split"] = args.split
    print(format_table(metrics))
    if args.write:
        card_path = resolve_card_path(args.checkpoint, args.dir)
        fresh = read_card(card_path)  # re-read: never write back a stale copy
        fresh["metrics"] = metrics
        write_card(card_path, fresh)
        print(f"wrote metrics into {card_path}")
    if args.plot:
        from models.plots import plot_memnet

        out = resolve_card_path(args.checkpoint, args.dir).with_suffix(".png")
        plot_memnet(traces, metrics, str(card.get("name", args.checkpoint)), out)
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
