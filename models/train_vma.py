"""Train a VMA on Omniglot: ``memserve train vma --data PATH``.

Few-shot mini-batches as in the paper (section 4.3): each step draws ``--ways`` characters of
the background alphabets (never the evaluation ones), ``--targets`` drawings of each as the
targets x, and a number of *other* drawings of the same characters as the memory M shared by
the batch. The number of memory drawings per character is drawn per step from
``[--min-shots, --shots]``, so one model serves memories of 1 to many shots per class. With
``--rotations`` each character rotated by 90, 180 and 270 degrees is an extra class.

The objective is the VIMCO multi-sample bound with K = ``--k`` samples (paper: 4). A fixed
share of each background alphabet's characters (``--val-frac``) is held out: every
``--eval-every`` steps the run measures the K = 16 bound and 5-way 1-shot accuracy
(posterior method) on fixed held-out episodes, keeps the weights with the best bound and
writes them as the checkpoint, so a long run always leaves a usable checkpoint behind.
``--resume`` continues from ``runs/<name>/last.*`` (no pickle).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import shlex
import time
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from models.checkpoint import load_checkpoint, save_checkpoint, state_tensors
from models.data.omniglot import load_omniglot, sample_episode, split_characters, with_rotations
from models.export import export_checkpoint
from models.train_state import load_train_state, save_train_state
from models.vma import VMA, VMAConfig
from models.vma_widen import widen


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="memserve train vma", description=__doc__.split("\n")[0])
    p.add_argument("kind", choices=["vma"])
    p.add_argument("--data", type=Path, default=None, help="data folder holding omniglot/ (or the npz)")
    p.add_argument("--name", default="vma-omniglot", help="checkpoint name")
    p.add_argument("--out", type=Path, default=Path("checkpoints"))
    p.add_argument("--runs", type=Path, default=Path("runs"), help="resumable training state")
    p.add_argument("--steps", type=int, default=20000)
    p.add_argument("--eval-every", type=int, default=500)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--min-lr-frac", type=float, default=0.1, help="cosine floor, x lr")
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--clip", type=float, default=50.0, help="gradient norm clip")
    p.add_argument("--ways", type=int, default=8, help="characters per step")
    p.add_argument("--targets", type=int, default=4, help="target drawings per character")
    p.add_argument("--shots", type=int, default=8, help="most memory drawings per character")
    p.add_argument("--min-shots", type=int, default=1, help="fewest memory drawings per character")
    p.add_argument("--no-rotations", dest="rotations", action="store_false", help="upright only")
    p.add_argument("--k", type=int, default=4, help="VIMCO samples")
    p.add_argument("--kl-warmup", type=int, default=0, help="steps over which z's KL weight rises 0 -> 1")
    p.add_argument(
        "--hide-memory", type=float, default=0.0,
        help="share of queries whose decoder does not see m_a (skips and context), so that z "
        "must carry the drawing (0: the paper's objective)",
    )  # fmt: skip
    p.add_argument(
        "--fresh", nargs="*", default=[], choices=["post", "gen", "gen_context", "decoder", "e_prior"],
        help="with --init: parts that start from fresh weights instead (e.g. post, when the init's "
        "q(z|m_a, x) net has gone dead and no longer depends on its input)",
    )  # fmt: skip
    p.add_argument(
        "--freeze-addressing", action="store_true",
        help="keep h and h_q (and their batch-norm statistics) as --init has them: train the "
        "generative parts and the prior p(a|M) only",
    )  # fmt: skip
    p.add_argument(
        "--class-weight", type=float, default=0.0,
        help="weight of a cross-entropy on the class marginal of q(a|x), from the episodes' labels "
        "(0: the pure VIMCO objective)",
    )  # fmt: skip
    p.add_argument(
        "--vimco-weight", type=float, default=1.0,
        help="weight of the VIMCO objective (0: train the addressing nets on the class term alone, "
        "a fast first stage before the joint one)",
    )  # fmt: skip
    p.add_argument(
        "--address-update", choices=["vimco", "wake"], default="vimco",
        help="how the VIMCO objective trains q(a|x): its score-function estimator (the paper's), "
        "or the wake update toward the slots that explain each drawing best (lower variance)",
    )  # fmt: skip
    p.add_argument(
        "--init", default=None,
        help="start from this checkpoint's weights and sizes; the --address-* and --frame-span given "
        "here replace its addressing nets, which then start fresh where their shapes differ",
    )  # fmt: skip
    p.add_argument("--init-dir", type=Path, default=Path("checkpoints"), help="where --init is")
    p.add_argument(
        "--widen", type=int, default=None,
        help="with --init: grow the generative nets to this many feature maps, keeping what the "
        "model computes (the new maps start unread; models.vma_widen)",
    )  # fmt: skip
    p.add_argument(
        "--decoder-warp", action="store_true",
        help="the decoder reads m_a's pyramid rescaled and shifted as z chooses (with --init: "
        "added at the identity, so step 0 computes what --init does)",
    )  # fmt: skip
    p.add_argument("--warp-slant", action="store_true", help="--decoder-warp that also slants m_a")
    p.add_argument("--select", choices=["nll", "acc"], default="nll", help="keep the weights best by")
    p.add_argument("--channels", type=int, default=32)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--match-dim", type=int, default=128)
    p.add_argument("--z-dim", type=int, default=64)
    p.add_argument("--address-net", choices=["pyramid", "conv4"], default=None, help="h, h_q kind")
    p.add_argument("--address-channels", type=int, default=None, help="conv4's feature maps (64)")
    p.add_argument("--frame-span", type=int, default=None, help="conv4: ink spans this many px (0: off)")
    p.add_argument("--val-frac", type=float, default=0.05, help="held-out share of background characters")
    p.add_argument("--val-episodes", type=int, default=200)
    p.add_argument("--resume", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--max-minutes", type=float, default=None, help="wall-time budget")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def lr_at(step: int, args: argparse.Namespace) -> float:
    """Linear warm-up over 200 steps, then cosine decay to min_lr_frac * lr."""
    warm = min(1.0, (step + 1) / 200)
    frac = min(step / max(args.steps - 1, 1), 1.0)
    floor = args.min_lr_frac
    return warm * args.lr * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * frac)))


def make_batch(images: np.ndarray, rng: np.random.Generator, args: argparse.Namespace, device: str):
    """Targets x (W T, 1, S, S), the shared memory (1, W shots, 1, S, S) of other drawings, and
    the labels of both, (W T,) and (W shots,)."""
    shots = int(rng.integers(args.min_shots, args.shots + 1))
    ep = sample_episode(images, rng, args.ways, shots, args.targets)
    x = torch.from_numpy(ep.queries).unsqueeze(1).to(device)  # (N, S, S) -> (N, 1, S, S)
    m = torch.from_numpy(ep.memory)[None, :, None].to(device)  # (A, S, S) -> (1, A, 1, S, S)
    labels = torch.from_numpy(ep.query_labels).to(device), torch.from_numpy(ep.memory_labels).to(device)
    return x, m, labels


def class_loss(model: VMA, x: Tensor, m: Tensor, labels: tuple[Tensor, Tensor], n_classes: int) -> Tensor:
    """-log p(c|x), p(c|x) = sum over the memory drawings a of class c of q(a|x): what serving's
    posterior scores are, trained directly with the episode's labels."""
    h_m = model.h_mem(m[0]).unsqueeze(0)  # (A, D) -> (1, A, D)
    log_q = model.address_logits(h_m, x).log_softmax(-1)  # (B, A)
    query_labels, memory_labels = labels
    onehot = torch.nn.functional.one_hot(memory_labels, n_classes).to(log_q.dtype)  # (A, C)
    log_pc = torch.logsumexp(log_q.unsqueeze(-1) + onehot.log().unsqueeze(0), dim=1)  # (B, A, C) -> (B, C)
    return torch.nn.functional.nll_loss(log_pc, query_labels)


@torch.inference_mode()
def validate(model: VMA, images: np.ndarray, args: argparse.Namespace) -> dict[str, float]:
    """K=16 bound on fixed 8-way 4-shot episodes, and 5-way 1-shot accuracy, on held-out characters."""
    model.eval()
    rng = np.random.default_rng([args.seed, 12345])
    bounds, correct, total = [], 0, 0
    kls = []
    for _ in range(args.val_episodes // 4):
        ep = sample_episode(images, rng, 8, 4, 4)
        x = torch.from_numpy(ep.queries).unsqueeze(1).to(args.device)  # (N, 1, S, S)
        m = torch.from_numpy(ep.memory)[None, :, None].to(args.device)  # (1, A, 1, S, S)
        bounds.append(model.log_likelihood_bound(x, m, None, 16).mean().item())
        same = m[0, ep.query_labels * 4]  # (N, 1, S, S): one memory drawing of each query's class
        kls.append(model.kl_z(x, same).mean().item())
    for _ in range(args.val_episodes):
        ep = sample_episode(images, rng, 5, 1, 1)
        x = torch.from_numpy(ep.queries).unsqueeze(1).to(args.device)
        m = torch.from_numpy(ep.memory)[None, :, None].to(args.device)
        h_m, _ = model.embed_memory(m)
        labels = torch.from_numpy(ep.memory_labels)[None].to(args.device)  # (1, A)
        scores, _ = model.classify(x, h_m, None, labels, 5)
        correct += int((scores.argmax(-1).cpu().numpy() == ep.query_labels).sum())
        total += len(ep.query_labels)
    train_mode(model, args)
    return {"nll": -float(np.mean(bounds)), "acc_5w1s": correct / total, "kl_z": float(np.mean(kls))}


def _address_options(args: argparse.Namespace) -> dict:
    names = {"address_net": args.address_net, "address_channels": args.address_channels,
             "frame_span": args.frame_span}  # fmt: skip
    return {k: v for k, v in names.items() if v is not None}


def _warp_options(args: argparse.Namespace) -> dict:
    if args.warp_slant:
        return {"decoder_warp": True, "warp_slant": True}
    return {"decoder_warp": True} if args.decoder_warp else {}


def train_mode(model: VMA, args: argparse.Namespace) -> None:
    """model.train(), but frozen addressing nets stay in eval mode (batch norm keeps its statistics)."""
    model.train()
    if args.freeze_addressing:
        for net in (model.h_mem, model.h_query):
            net.eval().requires_grad_(False)


def make_model(args: argparse.Namespace) -> VMA:
    """A fresh model of the sizes given, or --init's weights with the addressing options given."""
    if args.init is None:
        config = VMAConfig(
            channels=args.channels, hidden_dim=args.hidden, match_dim=args.match_dim,
            z_dim=args.z_dim, k_train=args.k, **_warp_options(args), **_address_options(args),
        )  # fmt: skip
        return VMA(config)
    init, _ = load_checkpoint(args.init, args.init_dir)
    assert isinstance(init, VMA), f"{args.init} is not a VMA checkpoint"
    model = VMA(dataclasses.replace(init.config, **_address_options(args), **_warp_options(args)))
    own = model.state_dict()
    same = {
        k: v for k, v in init.state_dict().items()
        if k in own and own[k].shape == v.shape and k.split(".")[0] not in args.fresh
    }  # fmt: skip
    model.load_state_dict(same, strict=False)
    fresh = sorted({k.split(".")[0] for k in own if k not in same})
    print(f"from {args.init}: {len(same)} tensors; fresh: {', '.join(fresh) or 'none'}")
    if args.widen is not None:
        model = widen(model, args.widen)
        print(f"generative nets widened to {args.widen} feature maps")
    return model


def train(args: argparse.Namespace, model: VMA, train_imgs: np.ndarray, val_imgs: np.ndarray, argv) -> dict:
    opt = torch.optim.Adam(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    run_dir = args.runs / args.name
    best = {k: v.clone() for k, v in state_tensors(model).items()}
    meta: dict = {"step": 0, "best_nll": math.inf, "best_step": -1, "seconds": 0.0, "history": []}
    if args.resume and (run_dir / "last.json").exists():
        best, meta = load_train_state(run_dir, model, opt)
    rng = np.random.default_rng([args.seed, meta["step"]])
    t0, sec0 = time.monotonic(), meta["seconds"]
    bar = tqdm(total=args.steps, initial=meta["step"], disable=args.quiet, desc="train vma")
    ema = None
    while meta["step"] < args.steps:
        step = meta["step"]
        for group in opt.param_groups:
            group["lr"] = lr_at(step, args)
        x, m, labels = make_batch(train_imgs, rng, args, args.device)
        beta = min(1.0, step / args.kl_warmup) if args.kl_warmup > 0 else 1.0
        loss, nll = torch.zeros(()), math.nan
        if args.vimco_weight > 0:
            vimco, bound = model.vimco_loss(x, m, None, args.k, beta, args.hide_memory, args.address_update)
            loss, nll = args.vimco_weight * vimco, -bound.mean().item()
        if args.class_weight > 0:
            loss = loss + args.class_weight * class_loss(model, x, m, labels, args.ways)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip)
        opt.step()
        if args.vimco_weight == 0:
            nll = loss.item()  # the class term stands in for the bound in the progress line
        ema = nll if ema is None else 0.98 * ema + 0.02 * nll
        meta["step"] = step + 1
        bar.update(1)
        bar.set_postfix(train_nll=f"{ema:.1f}", best_val=f"{meta['best_nll']:.1f}")
        done = meta["step"] >= args.steps
        out_of_time = args.max_minutes and time.monotonic() - t0 > 60 * args.max_minutes
        if meta["step"] % args.eval_every == 0 or done or out_of_time:
            meta["seconds"] = sec0 + time.monotonic() - t0
            val = validate(model, val_imgs, args)
            meta["history"].append({"step": meta["step"], "train_nll": round(ema, 2), **val})
            bar.write(
                f"step {meta['step']}: train {ema:.2f} val nll {val['nll']:.2f} "
                f"5w1s {val['acc_5w1s']:.3f} kl_z {val['kl_z']:.2f}"
            )
            better = val["nll"] < meta["best_nll"]
            if args.select == "acc":
                better = val["acc_5w1s"] > meta.get("best_acc_5w1s", -1.0)
            if better:
                meta.update(best_nll=val["nll"], best_step=meta["step"], best_acc_5w1s=val["acc_5w1s"])
                best = {k: v.clone() for k, v in state_tensors(model).items()}
                write(model, best, args, argv, meta)
            save_train_state(run_dir, model, best, opt, meta)
            rng = np.random.default_rng([args.seed, meta["step"]])  # a resumed run sees the same batches
        if out_of_time:
            bar.write(f"stopping: --max-minutes {args.max_minutes} reached")
            break
    bar.close()
    model.load_state_dict(best)
    return meta


def write(model: VMA, best: dict[str, Tensor], args: argparse.Namespace, argv: list[str], meta: dict) -> None:
    """Save ``best`` as the checkpoint (the model's own weights are left as they are)."""
    snapshot = VMA(model.config)
    snapshot.load_state_dict(best)
    training = {
        "command": "memserve train " + shlex.join(argv),
        "steps": meta["step"],
        "best_step": meta["best_step"],
        "best_val_nll": round(meta["best_nll"], 3),
        "best_val_acc_5w1s": meta.get("best_acc_5w1s"),
        "seconds": round(meta["seconds"], 1),
        "device": args.device,
        "threads": args.threads,
        "seed": args.seed,
        "params": sum(p.numel() for p in snapshot.parameters()),
        "batch": {"ways": args.ways, "targets": args.targets, "shots": [args.min_shots, args.shots],
                  "rotations": args.rotations, "k": args.k},
        "kl_warmup": args.kl_warmup,
        "lr": args.lr, "weight_decay": args.weight_decay,
        "class_weight": args.class_weight, "vimco_weight": args.vimco_weight,
        "address_update": args.address_update,
        "hide_memory": args.hide_memory, "freeze_addressing": args.freeze_addressing, "fresh": args.fresh,
        "init": args.init, "widen": args.widen, "select": args.select,
        "history": meta["history"],
    }  # fmt: skip
    data = {"dataset": "omniglot-28x28", "train": "background alphabets", "val_frac": args.val_frac}
    card = {"data": data, "training": training, "sizes": dataclasses.asdict(model.config), "metrics": {}}
    _, card_path = save_checkpoint(snapshot, card, args.out, args.name)
    export_checkpoint(card_path)  # the serving graphs of the ONNX backend, next to it


def main(argv: list[str]) -> int:
    """``memserve train vma ...``; ``argv`` starts with ``vma``."""
    args = build_parser().parse_args(argv)
    assert args.min_shots >= 1 and args.shots >= args.min_shots, "need 1 <= --min-shots <= --shots"
    assert args.shots + args.targets <= 20, "--shots + --targets must leave them distinct of 20 drawings"
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    images, keys = load_omniglot("background", args.data)
    train_idx, val_idx = split_characters(keys, args.val_frac, args.seed)
    train_imgs, val_imgs = images[train_idx], images[val_idx]
    if args.rotations:
        train_imgs = with_rotations(train_imgs)
    print(f"training on {len(train_imgs)} classes, validating on {len(val_imgs)} held-out characters")
    assert args.vimco_weight > 0 or args.class_weight > 0, "nothing to train: both weights are 0"
    assert not args.freeze_addressing or args.init is not None, "--freeze-addressing needs --init"
    assert args.address_update == "vimco" or not args.freeze_addressing, (
        "--address-update wake trains q(a|x), which --freeze-addressing keeps fixed"
    )
    assert args.widen is None or args.init is not None, "--widen needs --init"
    model = make_model(args).to(args.device)
    train_mode(model, args)
    meta = train(args, model, train_imgs, val_imgs, argv)
    print(f"best held-out nll {meta['best_nll']:.2f} at step {meta['best_step']}: {args.out / args.name}.*")
    return 0
