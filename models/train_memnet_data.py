"""The data a MemNet trains on (``models/train.py``): windows of one series, or a generated corpus.

A series (``--data mackey-glass | santafe | PATH``) is z-scored and split (``Splits``): training
batches are random windows of its fitting part, validation uses fixed windows whose loss part lies
in the validation split, and ``fit_windows`` shrinks the windows to a series too short for them.
The corpus (``--data corpus``) is whole generated series of many families from their first point:
fresh ones for every batch, a fixed validation set drawn with a seed no batch uses.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from models.data.timeseries import Splits


def window_len(args: argparse.Namespace) -> int:
    """Steps in one training or validation window (without its final target point)."""
    return args.burn_in + args.seq_len + args.free_steps


def make_batch(z: np.ndarray, starts: np.ndarray, length: int, device: str) -> Tensor:
    """Windows z[s : s + length + 1] -> (B, length + 1, D); the extra point is the target."""
    idx = starts[:, None] + np.arange(length + 1)[None, :]  # (B, L + 1)
    return torch.from_numpy(z[idx]).to(device)  # (B, L + 1, D)


@dataclass
class Corpus:
    """Generated series for a universal model: fresh ones per batch, a fixed validation set."""

    val: np.ndarray  # (V, L + 1, 1) float32
    length: int  # steps per series (the loss runs over them)


def load_corpus(args: argparse.Namespace) -> Corpus:
    """The corpus to train on: its fixed validation series, drawn once."""
    from models.data.corpus import sample_corpus

    rng = np.random.default_rng([args.seed, 1_000_003])  # never a training batch's seed
    val = sample_corpus(rng, 256, args.corpus_length + 1, split="train")  # (V, L + 1)
    return Corpus(val=val[:, :, None].astype(np.float32), length=args.corpus_length)  # (V, L + 1, 1)


def draw_batch(data: Splits | Corpus, args: argparse.Namespace, rng: np.random.Generator) -> Tensor:
    """One training batch (B, L + 1, D): fresh corpus series, or random windows of the series."""
    if isinstance(data, Corpus):
        from models.data.corpus import sample_corpus

        xs = sample_corpus(rng, args.batch_size, data.length + 1, split="train")  # (B, L + 1)
        return torch.from_numpy(xs[:, :, None].astype(np.float32)).to(args.device)  # (B, L + 1, 1)
    hi = data.n_fit - window_len(args) - 1
    assert hi > 0, "training split too short for the window; lower --seq-len/--burn-in"
    starts = rng.integers(0, hi + 1, size=args.batch_size)
    return make_batch(data.series, starts, window_len(args), args.device)


def val_starts(splits: Splits, args: argparse.Namespace, n: int = 64) -> np.ndarray:
    """Fixed windows whose loss part lies in the validation split (burn-in may precede it)."""
    length = window_len(args)
    lo = max(0, splits.n_fit - args.burn_in)
    hi = splits.n_train - length - 1
    assert hi > lo, "validation split too short for the window; lower --seq-len/--free-steps"
    return np.unique(np.linspace(lo, hi, n).round().astype(np.int64))


def corpus_info(args: argparse.Namespace) -> dict[str, Any]:
    """The card's ``data`` for a corpus-trained model: every generator and its ranges."""
    from models.data.corpus import describe

    return {"source": "corpus", "spec": "corpus", "series_length": args.corpus_length,
            "series_per_batch": args.batch_size, "loss_from_step": args.loss_from,
            "validation": "256 series from the training families, a seed no batch uses",
            "generators": describe()}  # fmt: skip


def fit_windows(args: argparse.Namespace, splits: Splits) -> None:
    """Shrink the training windows to a short series: the validation windows' loss part must
    fit in the validation split, and training windows in the fitting part. Says what it did."""
    val = splits.n_train - splits.n_fit
    seq = min(args.seq_len, max(4, val - args.free_steps - 2))
    burn = min(args.burn_in, max(0, splits.n_fit // 2 - seq - args.free_steps - 1))
    if (seq, burn) != (args.seq_len, args.burn_in):
        print(f"short series ({splits.n_fit} fitting, {val} validation points): "
              f"--seq-len {seq} --burn-in {burn}")  # fmt: skip
        args.seq_len, args.burn_in = seq, burn
