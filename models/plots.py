"""Pictures of a checkpoint's held-out behaviour, saved beside its model card."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def plot_memnet(traces: dict, metrics: dict, name: str, out: Path, span: int = 400, n_fc: int = 3) -> None:
    """One-step predictions over the start of the test split, and iterated forecasts from a
    few origins next to AR(20)'s, against the truth. `traces` comes from evaluate_memnet."""
    import matplotlib

    matplotlib.use("Agg")  # files only; no display needed
    import matplotlib.pyplot as plt

    test, one = traces["test"][:, 0], traces["one_step"][:, 0]
    fig, axes = plt.subplot_mosaic(
        [["one"] * n_fc, [f"fc{k}" for k in range(n_fc)]], figsize=(11, 6.5), constrained_layout=True
    )
    ax1 = axes["one"]
    n = min(span, len(test))
    ax1.plot(np.arange(n), test[:n], color="black", lw=1.2, label="held-out series")
    ax1.plot(np.arange(n), one[:n], color="tab:red", lw=1, ls="--", label="one-step prediction")
    one_step = metrics["one_step"]
    ax1.set_title(
        f"{name}: one-step NRMSE {one_step['model']:.3f} (AR(20) {one_step['ar20']:.3f}, "
        f"persistence {one_step['persistence']:.3f})"
    )
    ax1.set_xlabel("test step")
    ax1.legend(loc="upper right", fontsize=8)
    h = traces["model_fc"].shape[1]
    h_metrics = metrics["horizons"].get(str(h), {})
    picks = np.linspace(0, len(traces["origins"]) - 1, n_fc).round().astype(int)
    series, n_train = traces["series"][:, 0], traces["n_train"]
    for k, i in enumerate(picks):
        ax = axes[f"fc{k}"]
        o = int(traces["origins"][i])
        t = np.arange(o + 1, o + 1 + h)  # forecast step j predicts the test point o + j
        truth = series[n_train + o + 1 : n_train + o + 1 + h]
        ax.plot(t[: len(truth)], truth, color="black", lw=1.2, label="truth")
        ax.plot(t, traces["model_fc"][i, :, 0], color="tab:red", label="MemNet")
        ax.plot(t, traces["ar_fc"][i, :, 0], color="tab:blue", ls=":", label="AR(20)")
        where = "the end of training" if o < 0 else f"test step {o}"
        ax.set_title(f"{h}-step forecast from {where}", fontsize=9)
        ax.set_xlabel("test step")
        if k == 0:
            ax.legend(loc="upper right", fontsize=7)
    fig.suptitle(
        f"iterated {h}-step NRMSE over {len(traces['origins'])} origins: MemNet "
        f"{h_metrics.get('model', float('nan')):.3f}, AR(20) {h_metrics.get('ar20', float('nan')):.3f}",
        fontsize=10,
    )
    fig.savefig(out, dpi=90)
    plt.close(fig)


HELDOUT_PANELS = ("elnino", "co2", "sunspots", "santa fe laser (test split)", "lorenz", "seasonal")


def plot_heldout(traces: dict, metrics: dict, name: str, out: Path, span: int = 160) -> None:
    """A grid of held-out series: the truth, one-step predictions and their 95 % band over the
    start of the scored part. `traces` maps series name -> (x, pred, std, n_fit)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = []
    for want in HELDOUT_PANELS:  # one panel per kind of series, where it was evaluated
        hit = next((n for n in traces if n.startswith(want) and n not in names), None)
        if hit is not None:
            names.append(hit)
    rows = {r["name"]: r for r in metrics["series"]}
    fig, axes = plt.subplots(2, 3, figsize=(13, 6.5), constrained_layout=True)
    for ax, n in zip(axes.flat, names, strict=False):
        x, pred, sd, n_fit = traces[n]
        t = np.arange(n_fit, min(len(x), n_fit + span))
        p, s = pred[t - 1], sd[t - 1]  # the prediction made for x[t]
        band = (p - 1.96 * s, p + 1.96 * s)
        ax.fill_between(t, *band, color="tab:red", alpha=0.18, lw=0, label="95 % interval")
        ax.plot(t, x[t], color="black", lw=1.1, label="series")
        ax.plot(t, p, color="tab:red", lw=1, ls="--", label="one-step prediction")
        r = rows[n]["one_step"]
        ax.set_title(f"{n[:40]}\nNRMSE {r['model']:.3f} (AR(20) {r['ar20']:.3f}, persistence "
                     f"{r['persistence']:.3f})", fontsize=8)  # fmt: skip
        ax.tick_params(labelsize=7)
    axes.flat[0].legend(loc="upper left", fontsize=7)
    g = metrics["summary"]["all"]
    fig.suptitle(
        f"{name}, never trained on these series: one-step geo-mean NRMSE "
        f"{g['one_step']['geo_mean_model']:.3f} "
        f"(AR(20) fitted per series {g['one_step']['geo_mean_ar20']:.3f}); 95 % coverage "
        f"{g.get('coverage_95', float('nan')):.2f}",
        fontsize=10,
    )
    fig.savefig(out, dpi=90)
    plt.close(fig)
