"""Train a MemNet on a time series: ``memserve train memnet --data mackey-glass``.

Backpropagation through time on next-step prediction, on random windows of the fitting part
of the training split. Each window has

1. a burn-in (``--burn-in`` steps, no gradient) that fills the memory and the hidden state,
   so the loss is taken in the steady state serving sees, not on an empty memory;
2. a teacher-forced segment (``--seq-len`` steps) with the one-step loss;
3. optionally a free-running segment (``--free-steps``): the model's predictions are fed
   back as inputs, exactly as in ``MemNet.forecast``, and the loss is taken against the
   true continuation (weight ``--free-weight``). This trains the iterated forecasts the
   service returns, which teacher forcing alone does not.

A penalty ``--gain-penalty * relu(gain - --max-gain)^2`` pulls ``MemNet.gain()`` (the
sufficient condition for a bounded hidden state on any bounded stream, see
``models/memnet.py``) below 1. ``--project-gain`` enforces the bound after every step
instead; on Santa Fe it cost a lot (validation MSE 0.23 against 0.05 after 13 epochs), so
it is off by default.

A spike guard skips the optimiser step for a batch whose loss is non-finite or above
``--spike-factor`` x the median of the last 50 accepted losses (a window where h blew up;
losses up to 1e7 were seen on Santa Fe). Eight skips in a row mean the weights, not the
batch, got worse: the median is then forgotten and training goes on. With ``--init`` the
starting weights are validated first and kept unless an epoch beats them on validation.

The validation split (the end of the training part) gives the early-stopping loss on fixed
windows. ``--resume`` continues from ``runs/<name>/last.safetensors`` + ``last.json``
(weights, best weights, Adam moments as plain tensors, counters; no pickle). Window sampling
uses a generator seeded with (seed, epoch), so a resumed run sees the same batches. The windows,
batches and the corpus are ``models/train_memnet_data.py``'s.
"""

from __future__ import annotations

import argparse
import math
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from models.checkpoint import load_checkpoint, save_checkpoint, state_tensors
from models.data.timeseries import Splits, load_series, make_splits
from models.export import export_checkpoint
from models.memnet import MemNet, MemNetConfig, MemNetState
from models.train_memnet_data import (
    Corpus,
    corpus_info,
    draw_batch,
    fit_windows,
    load_corpus,
    make_batch,
    val_starts,
    window_len,
)
from models.train_state import load_train_state, save_train_state


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="memserve train", description=__doc__.split("\n")[0])
    p.add_argument("kind", choices=["memnet", "vma", "vae"], help="model kind (see train vma|vae -h)")
    p.add_argument("--data", default="mackey-glass", help="mackey-glass | santafe | corpus | PATH "
                   "(corpus: generated series of many families, for a universal model)")  # fmt: skip
    p.add_argument("--corpus-length", type=int, default=256, help="corpus: steps per series")
    p.add_argument("--loss-from", type=int, default=2, help="corpus: first step with loss")
    p.add_argument("--branch-every", type=int, default=32,
                   help="corpus: a free-running forecast (--free-steps) every this many steps")  # fmt: skip
    p.add_argument("--data-dir", type=Path, default=None, help="folder holding timeseries/")
    p.add_argument("--train-frac", type=float, default=0.8, help="train share of a PATH series")
    p.add_argument("--columns", default=None, help="CSV: value columns by header name, comma-separated "
                   "(default: every numeric column; dates and text are ignored)")  # fmt: skip
    p.add_argument("--fill", choices=["none", "linear", "previous"], default="none",
                   help="CSV: missing values are refused (none), interpolated or repeated")  # fmt: skip
    p.add_argument("--no-eval", action="store_true", help="do not evaluate into the card at the end")
    p.add_argument("--val-frac", type=float, default=0.1, help="validation share of train")
    p.add_argument("--name", default=None, help="checkpoint name (default memnet-<data>)")
    p.add_argument("--out", type=Path, default=Path("checkpoints"))
    p.add_argument("--runs", type=Path, default=Path("runs"), help="resumable training state")
    p.add_argument("--epochs", type=int, default=60)
    p.add_argument("--steps-per-epoch", type=int, default=50)
    p.add_argument("--lr", type=float, default=None, help="default 1e-3, or 3e-4 with --init")
    p.add_argument("--min-lr-frac", type=float, default=0.05, help="cosine floor, x lr")
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--clip", type=float, default=1.0, help="gradient norm clip")
    p.add_argument("--spike-factor", type=float, default=10.0, help="skip a step whose loss "
                   "exceeds this x the running median of recent losses; 0 disables")  # fmt: skip
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--key-dim", type=int, default=32)
    p.add_argument("--value-dim", type=int, default=32)
    p.add_argument("--capacity", type=int, default=64)
    p.add_argument("--sigma", type=float, default=0.1, help="initial Gaussian width")
    p.add_argument("--fixed-sigma", action="store_true", help="do not learn sigma")
    p.add_argument("--unnormalized-read", action="store_true", help="r = sum s v (no /sum s)")
    p.add_argument("--seq-len", type=int, default=64, help="teacher-forced steps with loss")
    p.add_argument("--burn-in", type=int, default=None, help="steps before the loss counts (default "
                   "64, or scale window + 64 for a per-session scaled model, so its statistics are "
                   "in the steady state serving sees)")  # fmt: skip
    p.add_argument("--free-steps", type=int, default=None, help="free-running steps with loss "
                   "(default 0, or 10 with --init)")  # fmt: skip
    p.add_argument("--free-weight", type=float, default=1.0)
    p.add_argument("--free-ramp", type=int, default=5, help="epochs to grow free-steps")
    p.add_argument("--max-gain", type=float, default=0.98, help="stability gain target")
    p.add_argument("--gain-penalty", type=float, default=1.0, help="weight; 0 disables it")
    p.add_argument("--project-gain", action="store_true", help="enforce gain <= --max-gain")
    p.add_argument("--stable-read", action="store_true", help="read_eps=0: softmax-form read")
    p.add_argument("--residual", action="store_true", help="y = x + s W_y h (starts as persistence)")
    p.add_argument("--predict-scale", action="store_true", help="Gaussian head, trained by likelihood")
    p.add_argument("--scale-window", type=int, default=0, help="per-session scaling window (0: off)")
    p.add_argument("--adaptive-std", type=int, default=128,
                   help="with --predict-scale: sessions rescale the std by their recent errors, over "
                   "this window (0: off); turned on after training")  # fmt: skip
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--patience", type=int, default=10, help="epochs without val improvement")
    p.add_argument("--resume", action="store_true", help="continue runs/<name>/last.*")
    p.add_argument("--init", default=None, help="start from this checkpoint (fine-tune)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--max-minutes", type=float, default=None, help="wall-time budget")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


# ---------------------------------------------------------------------------- losses
HUBER_AT = 3.0  # standardised errors beyond this many predicted stds weigh linearly


def robust_square(r: Tensor) -> Tensor:
    """r^2 / 2 within HUBER_AT, then linear: a Gaussian likelihood whose pull from one outlier is
    bounded. A series that jumps (a level shift, a regime switch) right after a stretch the
    model predicted with a tiny std would otherwise give losses of 1e6 and more, and training
    on the corpus diverged that way twice in one run."""
    a = r.abs()
    return torch.where(a <= HUBER_AT, 0.5 * r.square(), HUBER_AT * a - 0.5 * HUBER_AT**2)


def step_losses(
    model: MemNet, x: Tensor, state: MemNetState | None, branch: set[int] | None = None
) -> tuple[Tensor, MemNetState, Tensor, list[tuple[int, MemNetState, Tensor]]]:
    """Teacher-forced steps over x (B, T + 1, D): per-step losses (B, T), final state, last mean,
    and (t, state, mean) after each step t in ``branch`` (origins of free-running forecasts).

    The loss is taken in the session's frame (divided by the frame scale s_t, 1 for models
    without per-session scaling), so every series weighs the same whatever its units: the
    Gaussian negative log-likelihood log(std / s) + (x' - mean)^2 / (2 std^2) for a model with
    a predictive scale (its square Huberised: ``robust_square``), the squared error / s^2 otherwise.
    """
    if state is None:
        state = model.initial_state(x.shape[0], x.device)
    losses = []
    mean = x[:, 0]
    kept = []
    for t in range(x.shape[1] - 1):
        mean, std, state = model.step_dist(x[:, t], state)
        if branch and t in branch:
            kept.append((t, state, mean))
        s = model.frame_scale(state)  # (B, D)
        err = (x[:, t + 1] - mean) / s
        if model.config.predict_scale:
            sd = std / s
            losses.append((torch.log(sd) + robust_square(err / sd)).mean(-1))
        else:
            losses.append(err.square().mean(-1))
    return torch.stack(losses, dim=1), state, mean, kept  # T x (B,) -> (B, T)


def branch_loss(
    model: MemNet, x: Tensor, kept: list[tuple[int, MemNetState, Tensor]], horizon: int
) -> Tensor:
    """Free-running forecasts of ``horizon`` steps from every kept origin, run as one batch:
    mean squared error in each origin's frame. Trains the iterated forecasts the service
    returns on the corpus, where one window holds one series from its first point."""
    ts = torch.tensor([t for t, _, _ in kept], device=x.device)
    state = MemNetState.stack([s for _, s, _ in kept])  # K x (B, ...) -> (K B, ...)
    y0 = torch.cat([m for _, _, m in kept])  # (K B, D)
    out = model.rollout(y0, state, horizon)  # (K B, H, D)
    idx = ts.repeat_interleave(x.shape[0])[:, None] + 1 + torch.arange(horizon, device=x.device)  # (K B, H)
    rows = torch.arange(x.shape[0], device=x.device).repeat(len(kept))  # (K B,)
    target = x[rows[:, None], idx]  # (K B, H, D)
    scale = model.frame_scale(state).unsqueeze(1)  # (K B, D) -> (K B, 1, D)
    return robust_square((out - target) / scale).mean()


def window_loss(model: MemNet, batch: Tensor, args: argparse.Namespace, free: int | None = None) -> Tensor:
    """Mean one-step loss on the teacher-forced segment (+ weighted free-running MSE)."""
    free = args.free_steps if free is None else free
    if args.data == "corpus":  # whole series from their first point: the cold start counts
        last = batch.shape[1] - 2 - free  # the latest origin whose targets all exist
        branch = set(range(args.loss_from + 15, last + 1, args.branch_every)) if free > 0 else None
        losses, _, _, kept = step_losses(model, batch, None, branch)
        loss = losses[:, args.loss_from :].mean()
        if kept:
            loss = loss + args.free_weight * branch_loss(model, batch, kept, free)
        return loss
    b, f = args.burn_in, args.seq_len
    state = None
    if b > 0:
        with torch.no_grad():
            _, state = model(batch[:, :b], None)
    losses, state, y_last, _ = step_losses(model, batch[:, b : b + f + 1], state)
    loss = losses.mean()
    if free > 0:
        out = model.rollout(y_last, state, free)  # (B, free, D)
        target = batch[:, b + f : b + f + free]
        scale = model.frame_scale(state).unsqueeze(1)  # (B, D) -> (B, 1, D)
        loss = loss + args.free_weight * ((out - target) / scale).square().mean()
    return loss


@torch.no_grad()
def validate(model: MemNet, data: Splits | Corpus, args: argparse.Namespace) -> float:
    model.eval()
    if isinstance(data, Corpus):
        batch = torch.from_numpy(data.val).to(args.device)
    else:
        batch = make_batch(data.series, val_starts(data, args), window_len(args), args.device)
    loss = float(window_loss(model, batch, args))
    model.train()
    return loss


# ---------------------------------------------------------------------------- main
def make_model(args: argparse.Namespace, input_dim: int) -> MemNet:
    if args.init:
        model, card = load_checkpoint(args.init, directory=args.out)
        # Kept for the new card, so a fine-tuned checkpoint says where it started.
        args.init_training = card.get("training", {})
        assert isinstance(model, MemNet), "--init must name a memnet checkpoint"
        assert model.config.input_dim == input_dim, "--init checkpoint has another input_dim"
        return model.train()
    config = MemNetConfig(
        input_dim=input_dim,
        hidden_dim=args.hidden,
        key_dim=args.key_dim,
        value_dim=args.value_dim,
        capacity=args.capacity,
        sigma=args.sigma,
        learn_sigma=not args.fixed_sigma,
        normalize_read=not args.unnormalized_read,
        read_eps=0.0 if args.stable_read else 1e-6,
        residual=args.residual,
        predict_scale=args.predict_scale,
        scale_window=args.scale_window,
    )
    return MemNet(config)


def lr_at(epoch: int, args: argparse.Namespace) -> float:
    """Cosine decay from lr to min_lr_frac * lr over --epochs."""
    frac = min(epoch / max(args.epochs - 1, 1), 1.0)
    floor = args.min_lr_frac
    return args.lr * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * frac)))


SPIKE_WINDOW = 50  # recent losses kept for the spike guard's running median
SPIKE_MIN = 10  # the guard acts once this many losses are known
SPIKE_RUN = 8  # this many skips in a row: the weights moved, not the data; re-baseline


def is_spike(loss: float, recent: list[float], factor: float) -> bool:
    """True when ``loss`` is non-finite or above ``factor`` x the median of ``recent``."""
    if not math.isfinite(loss):
        return True
    if factor <= 0 or len(recent) < SPIKE_MIN:
        return False
    return loss > factor * float(np.median(recent))


def train_epoch(model, opt, splits, args, epoch: int, bar, meta: dict | None = None) -> float:
    for group in opt.param_groups:
        group["lr"] = lr_at(epoch, args)
    rng = np.random.default_rng([args.seed, epoch])
    # Free-running loss grows over the first epochs: an untrained closed loop can diverge.
    free = min(args.free_steps, round(args.free_steps * (epoch + 1) / max(args.free_ramp, 1)))
    meta = {} if meta is None else meta
    recent: list[float] = meta.setdefault("recent_losses", [])
    total, used = 0.0, 0
    for _ in range(args.steps_per_epoch):
        batch = draw_batch(splits, args, rng)
        loss = window_loss(model, batch, args, free)
        value = loss.item()
        bar.update(1)
        if is_spike(value, recent, args.spike_factor):
            # A window where h blew up (losses up to 1e7 were seen) would wreck the weights
            # and the Adam moments through one clipped but still huge step: skip it.
            meta["skipped"] = meta.get("skipped", 0) + 1
            meta["run"] = meta.get("run", 0) + 1
            if meta["run"] < SPIKE_RUN or not math.isfinite(value):
                continue
            # Every window is a "spike": the model itself got worse, and skipping would
            # freeze it there. Forget the old median and train on.
            recent.clear()
        meta["run"] = 0
        recent.append(value)
        del recent[:-SPIKE_WINDOW]
        opt.zero_grad(set_to_none=True)
        objective = loss
        if args.gain_penalty > 0:  # pull the cell towards the provably bounded region
            objective = loss + args.gain_penalty * torch.relu(model.gain() - args.max_gain) ** 2
        objective.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip)
        opt.step()
        if args.project_gain:  # hard bound; measured to cost a lot of accuracy, hence off
            model.project_gain(args.max_gain)
        total += value
        used += 1
        bar.set_postfix(loss=f"{value:.4g}")
    return total / used if used else math.nan


def run_training(args: argparse.Namespace, model: MemNet, splits: Splits | Corpus, run_dir: Path) -> dict:
    """The epoch loop with early stopping, a wall-time budget and resumable state."""
    opt = torch.optim.Adam(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    best = {k: v.clone() for k, v in state_tensors(model).items()}
    meta: dict[str, Any] = {"epoch": -1, "best_val": math.inf, "best_epoch": -1, "bad": 0}
    meta.update(seconds=0.0, history=[], skipped=0, recent_losses=[])
    if args.resume:
        best, meta = load_train_state(run_dir, model, opt)
        print(f"resumed {run_dir} after epoch {meta['epoch']} (best val {meta['best_val']:.4g})")
    elif args.init:  # a fine-tune keeps the starting weights unless it beats them on val
        meta["best_val"] = meta["init_val"] = validate(model, splits, args)
    t0, s0 = time.monotonic(), meta["seconds"]
    total = args.epochs * args.steps_per_epoch
    with tqdm(total=total, initial=(meta["epoch"] + 1) * args.steps_per_epoch,
              disable=args.quiet, desc="train", unit="batch") as bar:  # fmt: skip
        for epoch in range(meta["epoch"] + 1, args.epochs):
            train_loss = train_epoch(model, opt, splits, args, epoch, bar, meta)
            val = validate(model, splits, args)
            meta["history"].append({"epoch": epoch, "train": train_loss, "val": val})
            if val < meta["best_val"]:
                meta.update(best_val=val, best_epoch=epoch, bad=0)
                best = {k: v.clone() for k, v in state_tensors(model).items()}
            else:
                meta["bad"] += 1
            meta.update(epoch=epoch, seconds=s0 + time.monotonic() - t0)
            save_train_state(run_dir, model, best, opt, meta)
            bar.write(f"epoch {epoch}: train {train_loss:.4g} val {val:.4g} best {meta['best_val']:.4g}")
            if meta["bad"] >= args.patience:
                bar.write(f"early stop: no val improvement for {args.patience} epochs")
                break
            if args.max_minutes and time.monotonic() - t0 > 60 * args.max_minutes:
                bar.write(f"stopping: --max-minutes {args.max_minutes} reached")
                break
    model.load_state_dict(best)
    return meta


def make_card(args, argv: list[str], model: MemNet, splits: Splits | Corpus, info: dict, meta: dict) -> dict:
    if isinstance(splits, Corpus):
        data = corpus_info(args)
    else:
        data = {k: v for k, v in info.items() if k not in ("n_train", "n_test")}
        data.update(spec=args.data, train=info["n_train"], test=info["n_test"])
        data.update(fit=splits.n_fit, val=splits.n_train - splits.n_fit, val_frac=args.val_frac)
        if data["source"] == "file":
            data["train_frac"] = args.train_frac
    training = {
        "command": "memserve train " + shlex.join(argv),
        "epochs": meta["epoch"] + 1,
        "best_epoch": meta["best_epoch"],
        "best_val": meta["best_val"],
        "seconds": round(meta["seconds"], 1),
        "skipped_steps": meta.get("skipped", 0),
        "device": args.device,
        "threads": args.threads,
        "seed": args.seed,
        "params": sum(p.numel() for p in model.parameters()),
        "window": {"burn_in": args.burn_in, "seq_len": args.seq_len, "free_steps": args.free_steps},
        "batch_size": args.batch_size, "lr": args.lr, "init": args.init,
        "stability_gain": round(model.stability_gain(), 4), "sigma": round(model.sigma, 4),
    }  # fmt: skip
    if args.init:
        prev = getattr(args, "init_training", {})
        training["init_from"] = {k: prev.get(k) for k in ("command", "epochs", "seconds", "init_from")}
    if isinstance(splits, Corpus):  # any units: each session scales its own stream
        norm = {"mean": [0.0], "std": [1.0], "units": "session"}
    else:
        norm = {"mean": splits.mean.tolist(), "std": splits.std.tolist(), "units": "z-score"}
    return {"normalization": norm, "data": data, "training": training, "metrics": {}}


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; ``argv`` starts with the model kind. Returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["vma"]:
        from models.train_vma import main as train_vma

        return train_vma(argv)
    if argv[:1] == ["vae"]:
        from models.train_vae import main as train_vae

        return train_vae(argv)
    args = build_parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    data: Splits | Corpus
    if args.data == "corpus":
        data, info, dim = load_corpus(args), {}, 1
    else:
        columns = args.columns.split(",") if args.columns else None
        try:
            series, info = load_series(args.data, args.data_dir, args.train_frac, columns, args.fill)
        except (ValueError, FileNotFoundError) as e:
            print(f"memserve train: {e}", file=sys.stderr)
            return 2
        data, dim = make_splits(series, info["n_train"], args.val_frac), series.shape[1]
    name = args.name or f"memnet-{Path(args.data).stem}"
    model = make_model(args, dim).to(args.device)
    if args.lr is None:
        args.lr = 3e-4 if args.init else 1e-3
    if args.free_steps is None:
        args.free_steps = 10 if args.init else 0
    if args.burn_in is None:
        args.burn_in = 64 + model.config.scale_window
    if isinstance(data, Splits):
        fit_windows(args, data)
    meta = run_training(args, model, data, args.runs / name)
    return save_and_evaluate(args, argv, model, data, info, meta, name)


def save_and_evaluate(
    args: argparse.Namespace,
    argv: list[str],
    model: MemNet,
    data: Splits | Corpus,
    info: dict,
    meta: dict,
    name: str,
) -> int:
    """After training: calibrate the std, write the checkpoint, its card and its ONNX graphs, then
    evaluate it into the card (unless ``--no-eval``); the exit status."""
    if model.config.predict_scale and not model.config.adaptive_std:
        model.config.adaptive_std = args.adaptive_std  # serving-side: on after training, not during it
    calibration = calibrate_std(model, data, args) if model.config.predict_scale else None
    card = make_card(args, argv, model, data, info, meta)
    if calibration:
        card["training"]["calibration"] = calibration
        print(f"std calibrated on validation: x{calibration['std_factor']:.3f}, coverage "
              f"{calibration['coverage_before']} -> {calibration['coverage_after']}")  # fmt: skip
    weights, card_path = save_checkpoint(model.cpu(), card, args.out, name)
    export_checkpoint(card_path)  # the serving graphs of the ONNX backend, next to it
    print(f"wrote {weights}, {card_path} and its ONNX graphs (best val {meta['best_val']:.4g})")
    if not args.no_eval:
        from models.evaluate import main as evaluate_main

        eval_argv = ["memnet", "--checkpoint", str(card_path), "--write", "--threads", str(args.threads)]
        if args.data_dir:
            eval_argv += ["--data-dir", str(args.data_dir)]
        return evaluate_main(eval_argv + (["--quiet"] if args.quiet else []))
    return 0


COVERAGE_LEVELS = ((0.8, 1.2816), (0.95, 1.9600))


@torch.no_grad()
def calibrate_std(model: MemNet, data: Splits | Corpus, args: argparse.Namespace) -> dict[str, Any]:
    """Fit ``std_factor`` on the validation data: the factor on a grid from 0.5 to 4 whose 80 %
    and 95 % one-step intervals come closest to holding 80 % and 95 % of the next values."""
    model.eval()
    if isinstance(data, Corpus):
        x = torch.from_numpy(data.val).to(args.device)  # (V, L + 1, 1)
    else:
        x = make_batch(data.series, val_starts(data, args), window_len(args), args.device)
    model.config.std_factor = 1.0
    mean, std, _ = model.forward_dist(x[:, :-1])  # (B, T, D)
    first = args.loss_from if isinstance(data, Corpus) else args.burn_in
    r = ((x[:, 1:] - mean) / std)[:, first:].abs().flatten()  # standardised one-step errors
    grid = torch.linspace(0.5, 4.0, 141)
    miss = [sum(abs(float((r <= z * f).float().mean()) - p) for p, z in COVERAGE_LEVELS) for f in grid]
    best = float(grid[int(np.argmin(miss))])
    model.config.std_factor = best
    before = {f"{p:g}": float((r <= z).float().mean()) for p, z in COVERAGE_LEVELS}
    after = {f"{p:g}": float((r <= z * best).float().mean()) for p, z in COVERAGE_LEVELS}
    model.train()
    return {
        "std_factor": round(best, 4),
        "coverage_before": before,
        "coverage_after": after,
        "points": len(r),
    }


if __name__ == "__main__":
    raise SystemExit(main())
