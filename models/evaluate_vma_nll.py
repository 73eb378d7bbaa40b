"""The likelihood part of ``memserve evaluate vma``: the K-sample bound of test drawings with
memories of 1 to 19 shots, one class alone or among others, and the VAE baseline on the same
drawings (see models/evaluate_vma.py for the whole evaluation)."""

from __future__ import annotations

import argparse
import math

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from models.data.omniglot import sample_episode
from models.vae import VAE
from models.vma import VMA, bernoulli_logpmf, gauss_kl, gauss_logpdf

SHOTS = (1, 2, 5, 10, 19)
CLASSES = (1, 8)
PAPER_NLL_C1 = {"1": 86.5, "2": 83.0, "5": 76.5, "10": 76.2, "19": 73.9}  # paper table 1, C_test = 1


def x_of(a: np.ndarray) -> Tensor:
    return torch.from_numpy(np.ascontiguousarray(a)).unsqueeze(1)  # (N, S, S) -> (N, 1, S, S)


def m_of(a: np.ndarray) -> Tensor:
    return torch.from_numpy(np.ascontiguousarray(a))[None, :, None]  # (A, S, S) -> (1, A, 1, S, S)


def std_error(v: np.ndarray) -> float:
    """Standard error of the mean (nan for fewer than two values)."""
    return float(v.std(ddof=1) / math.sqrt(len(v))) if len(v) > 1 else float("nan")


# -------------------------------------------------------------------------- NLL
@torch.inference_mode()
def memory_bound(
    model: VMA, x: Tensor, m: Tensor, k: int, gen: torch.Generator, chunk: int = 256
) -> dict[str, Tensor]:
    """L_K (as VMA.log_likelihood_bound), KL(q(a|x)||p(a)) and E_q(a|x) KL_z per row (B,).

    x (B, 1, S, S), m (B or 1, A, 1, S, S). The generative pyramid of each slot and
    q(z|m_a, x) of each (row, slot) pair are computed once; each sample then costs one decoder pass.
    """
    b, n_slots = x.shape[0], m.shape[1]
    flat = m.flatten(0, 1)  # (Bm, A, 1, S, S) -> (Bm A, 1, S, S)
    h_m = model.h_mem(flat).view(m.shape[0], n_slots, -1)  # (Bm A, D) -> (Bm, A, D)
    log_q = model.address_logits(h_m, x).log_softmax(-1)  # (B, A)
    log_p = model.address_logits(h_m).log_softmax(-1).expand_as(log_q)  # (B, A)
    feats = model.gen.pyramid(flat)
    mu_p, ls_p, c_m = model._z_prior(feats)  # (Bm A, z) each
    m_rows = m.expand(b, *m.shape[1:]).flatten(0, 1)  # (B A, 1, S, S)
    x_rows = x.unsqueeze(1).expand(b, n_slots, *x.shape[1:]).flatten(0, 1)  # (B A, 1, S, S)
    mu_q, ls_q = model.post(torch.cat([x_rows, m_rows], dim=1)).chunk(2, dim=-1)  # (B A, z) each
    slot_of_pair = torch.arange(b * n_slots) % n_slots + (torch.arange(b * n_slots) // n_slots) * (
        n_slots if m.shape[0] == b else 0
    )  # (B A,): the pyramid row each (row, slot) pair reads
    kl_z = gauss_kl(mu_q, ls_q, mu_p[slot_of_pair], ls_p[slot_of_pair]).view(b, n_slots)  # (B, A)
    q = log_q.exp()
    a = torch.multinomial(q, k, replacement=True, generator=gen)  # (B, K)
    pair = (torch.arange(b).unsqueeze(1) * n_slots + a).flatten()  # (B K,) index into the (B A) pairs
    x_s = x.unsqueeze(1).expand(b, k, *x.shape[1:]).flatten(0, 1)  # (B, 1, S, S) -> (B K, 1, S, S)
    log_w = []
    for i in range(0, b * k, chunk):
        p_i, s_i = pair[i : i + chunk], slot_of_pair[pair[i : i + chunk]]
        eps = torch.randn(len(p_i), mu_q.shape[1], generator=gen)
        z = mu_q[p_i] + ls_q[p_i].exp() * eps
        logits = model.decoder(z, c_m[s_i], [f[s_i] for f in feats])
        log_px = bernoulli_logpmf(logits, x_s[i : i + chunk])
        log_w.append(log_px + gauss_logpdf(z, mu_p[s_i], ls_p[s_i]) - gauss_logpdf(z, mu_q[p_i], ls_q[p_i]))
    log_w = torch.cat(log_w).view(b, k) + log_p.gather(1, a) - log_q.gather(1, a)  # (B K,) -> (B, K)
    kl_a = (
        torch.where(q > 0, q * (log_q - log_p), torch.zeros_like(q)).sum(-1).clamp_min(0.0)
    )  # >= 0 up to rounding
    return {"bound": torch.logsumexp(log_w, -1) - math.log(k), "kl_a": kl_a, "kl_z": (q * kl_z).sum(-1)}


def nll_batches(images: np.ndarray, rng: np.random.Generator, classes: int, n_queries: int):
    """Yield (x, m) with the most shots, max(SHOTS) drawings per class: C = 1 groups 8 one-query
    episodes with per-row memories (B, shots, 1, S, S); C > 1 one episode per batch, m
    (1, C shots, 1, S, S) grouped by class. ``first_shots`` cuts them to fewer shots, so every
    shot count sees the same queries and each smaller memory is part of the larger ones."""
    n_eps = math.ceil(n_queries / classes)
    group = 8 if classes == 1 else 1
    most = max(SHOTS)
    for start in range(0, n_eps, group):
        eps = [sample_episode(images, rng, classes, most, 1) for _ in range(min(group, n_eps - start))]
        if classes == 1:
            yield (
                x_of(np.concatenate([e.queries for e in eps])),
                torch.from_numpy(np.stack([e.memory for e in eps]))[:, :, None],
            )  # B x (shots, S, S) -> (B, shots, 1, S, S)
        else:
            yield x_of(eps[0].queries), m_of(eps[0].memory)


def first_shots(m: Tensor, classes: int, shots: int) -> Tensor:
    """The first ``shots`` drawings of each class of a memory (Bm, C most, 1, S, S) grouped by class."""
    bm, a = m.shape[:2]
    by_class = m.view(bm, classes, a // classes, *m.shape[2:])  # (Bm, C most, ...) -> (Bm, C, most, ...)
    return by_class[:, :, :shots].flatten(1, 2)  # (Bm, C, shots, ...) -> (Bm, C shots, ...)


def _paired(a: np.ndarray, b: np.ndarray) -> dict:
    """Mean of b - a over the same queries, with its standard error."""
    d = b - a
    return {"mean": float(d.mean()), "se": std_error(d)}


def nll_table(
    model: VMA, images: np.ndarray, args: argparse.Namespace
) -> tuple[dict, np.ndarray, dict[int, np.ndarray]]:
    """NLL, KL_a and KL_z per (C, shots); also the C = 1 query drawings and their bounds per shot
    count (for the VAE's paired comparison).

    Per C the queries are the same at every shot count (nested memories), so each row also
    carries its paired change from 1 shot, ``vs_1_shot`` (NLL difference, its s.e.): far
    tighter than the difference of two rows' intervals, which are mostly the spread between
    queries."""
    out: dict = {}
    vae_queries, c1_bounds = [], {}
    for classes in CLASSES:
        rng = np.random.default_rng([args.seed, 7, classes])
        gen = torch.Generator().manual_seed(args.seed * 1000 + classes * 100)
        rows = {s: {"bound": [], "kl_a": [], "kl_z": []} for s in SHOTS}
        batches = nll_batches(images, rng, classes, args.nll_queries)
        for x, m in tqdm(batches, desc=f"nll C={classes}", disable=args.quiet, leave=False):
            for shots in SHOTS:
                for key, v in memory_bound(model, x, first_shots(m, classes, shots), args.nll_k, gen).items():
                    rows[shots][key].append(v)
            if classes == 1:
                vae_queries.append(x.numpy()[:, 0])
        per_shots = {s: {key: torch.cat(t).numpy() for key, t in rows[s].items()} for s in SHOTS}
        bounds = {s: v["bound"] for s, v in per_shots.items()}
        for shots, v in per_shots.items():
            out.setdefault(f"C={classes}", {})[str(shots)] = {
                "nll": float(-v["bound"].mean()),
                "nll_se": std_error(v["bound"]),
                "kl_a": float(v["kl_a"].mean()),
                "kl_z": float(v["kl_z"].mean()),
                "queries": len(v["bound"]),
                "vs_1_shot": _paired(-bounds[SHOTS[0]], -bounds[shots]),
            }
        if classes == 1:
            c1_bounds = bounds
    out["paper_C=1"] = PAPER_NLL_C1
    return out, np.concatenate(vae_queries), c1_bounds


def vae_row(
    vae: VAE, queries: np.ndarray, c1_bounds: dict[int, np.ndarray], args: argparse.Namespace
) -> dict:
    """The VAE's K-sample bound and KL_z on the C = 1 query drawings (N, S, S), and per shot
    count the paired change of the NLL from the VAE to the VMA with that memory (``vs_vma``)."""
    gen = torch.Generator().manual_seed(args.seed)
    x = x_of(queries)
    parts = [vae.log_likelihood_bound(x[i : i + 8], args.nll_k, 512, gen) for i in range(0, len(x), 8)]
    bound = torch.cat(parts)
    b = bound.numpy()
    paired = {str(shots): _paired(-b, -vma) for shots, vma in c1_bounds.items()}
    return {
        "nll": float(-b.mean()), "nll_se": std_error(b), "kl_z": float(vae.kl_z(x).mean()), "queries": len(x),
        "vs_vma": paired,
    }  # fmt: skip
