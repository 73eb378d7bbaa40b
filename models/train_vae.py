"""Training the VAE baseline (models/vae.py): ``memserve train vae --data PATH``.

It trains on the background alphabets' training characters (the split and rotations VMA trains
on) with batch 32, K = 4 and VMA's learning-rate schedule, and keeps the weights with the best
held-out K = 16 bound.
"""

from __future__ import annotations

import argparse
import math
import shlex
import time
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from models.checkpoint import save_checkpoint, state_tensors
from models.data.omniglot import load_omniglot, split_characters, with_rotations
from models.train_vma import lr_at  # VMA's warm-up + cosine schedule
from models.vae import VAE, VAEConfig


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="memserve train vae", description="Train the VAE baseline for VMA.")
    p.add_argument("kind", choices=["vae"])
    p.add_argument("--data", type=Path, default=None, help="data folder holding omniglot/ (or the npz)")
    p.add_argument("--name", default="vae-omniglot", help="checkpoint name")
    p.add_argument("--out", type=Path, default=Path("checkpoints"))
    p.add_argument("--steps", type=int, default=20000)
    p.add_argument("--eval-every", type=int, default=500)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--k", type=int, default=4, help="IWAE samples (VMA's VIMCO K)")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--min-lr-frac", type=float, default=0.1, help="cosine floor, x lr")
    p.add_argument("--clip", type=float, default=50.0, help="gradient norm clip")
    p.add_argument("--channels", type=int, default=32)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--z-dim", type=int, default=64)
    p.add_argument("--val-frac", type=float, default=0.05, help="held-out share of background characters")
    p.add_argument("--val-images", type=int, default=256, help="held-out drawings for the K=16 bound")
    p.add_argument("--no-rotations", dest="rotations", action="store_false", help="upright only")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--max-minutes", type=float, default=None, help="wall-time budget")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def _held_out(val_imgs: np.ndarray, n: int, seed: int, device: str) -> Tensor:
    """A fixed set of n held-out drawings (n, 1, S, S)."""
    flat = val_imgs.reshape(-1, *val_imgs.shape[2:])  # (C, 20, S, S) -> (C 20, S, S)
    idx = np.random.default_rng([seed, 54321]).choice(len(flat), min(n, len(flat)), replace=False)
    return torch.from_numpy(flat[idx]).unsqueeze(1).to(device)  # (n, S, S) -> (n, 1, S, S)


def train(args: argparse.Namespace, model: VAE, train_imgs: np.ndarray, x_val: Tensor) -> dict:
    """Adam on the K-sample IWAE bound; returns the run's summary, the best weights in ``["best"]``."""
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    flat = train_imgs.reshape(-1, *train_imgs.shape[2:])  # (C, 20, S, S) -> (C 20, S, S)
    rng = np.random.default_rng(args.seed)
    meta: dict = {"step": 0, "best_nll": math.inf, "best_step": -1, "history": [], "best": None}
    t0, ema = time.monotonic(), None
    bar = tqdm(total=args.steps, disable=args.quiet, desc="train vae")
    for step in range(args.steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, args)
        x = torch.from_numpy(flat[rng.integers(0, len(flat), args.batch)]).unsqueeze(1).to(args.device)
        loss, _ = model.iwae_loss(x, args.k)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip)
        opt.step()
        ema = loss.item() if ema is None else 0.98 * ema + 0.02 * loss.item()
        meta["step"] = step + 1
        bar.update(1)
        bar.set_postfix(train_nll=f"{ema:.1f}", best_val=f"{meta['best_nll']:.1f}")
        out_of_time = args.max_minutes and time.monotonic() - t0 > 60 * args.max_minutes
        if meta["step"] % args.eval_every == 0 or meta["step"] == args.steps or out_of_time:
            model.eval()
            gen = torch.Generator(device=args.device).manual_seed(0)  # the same z every evaluation
            nll = -model.log_likelihood_bound(x_val, 16, generator=gen).mean().item()
            model.train()
            meta["history"].append({"step": meta["step"], "train_nll": round(ema, 2), "nll": round(nll, 3)})
            bar.write(f"step {meta['step']}: train {ema:.2f} val nll {nll:.2f}")
            if nll < meta["best_nll"]:
                best = {k: v.clone() for k, v in state_tensors(model).items()}
                meta.update(best_nll=nll, best_step=meta["step"], best=best)
        if out_of_time:
            bar.write(f"stopping: --max-minutes {args.max_minutes} reached")
            break
    bar.close()
    meta["seconds"] = time.monotonic() - t0
    return meta


def main(argv: list[str]) -> int:
    """``memserve train vae ...``; ``argv`` starts with ``vae``. Writes ``<out>/<name>.*``."""
    args = build_parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    images, keys = load_omniglot("background", args.data)
    train_idx, val_idx = split_characters(keys, args.val_frac, args.seed)
    train_imgs = with_rotations(images[train_idx]) if args.rotations else images[train_idx]
    x_val = _held_out(images[val_idx], args.val_images, args.seed, args.device)
    config = VAEConfig(channels=args.channels, hidden_dim=args.hidden, z_dim=args.z_dim)
    model = VAE(config).to(args.device).train()
    meta = train(args, model, train_imgs, x_val)
    model.load_state_dict(meta["best"])
    training = {
        "command": "memserve train " + shlex.join(argv),
        "steps": meta["step"],
        "best_step": meta["best_step"],
        "best_val_nll": round(meta["best_nll"], 3),
        "val": f"K=16 bound on {len(x_val)} held-out drawings",
        "seconds": round(meta["seconds"], 1),
        "device": args.device,
        "threads": args.threads,
        "seed": args.seed,
        "params": sum(p.numel() for p in model.parameters()),
        "batch": args.batch,
        "k": args.k,
        "lr": args.lr,
        "rotations": args.rotations,
        "history": meta["history"],
    }
    data = {"dataset": "omniglot-28x28", "train": "background alphabets", "val_frac": args.val_frac}
    save_checkpoint(model.cpu(), {"data": data, "training": training, "metrics": {}}, args.out, args.name)
    print(f"best held-out nll {meta['best_nll']:.2f} at step {meta['best_step']}: {args.out / args.name}.*")
    return 0
