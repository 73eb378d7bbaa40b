"""Evaluate a VMA checkpoint on the Omniglot evaluation alphabets (never trained on).

``python -m models.evaluate vma --checkpoint vma-omniglot [--vae vae-omniglot] [--write] [--plot]``

Everything is seeded (``--seed``) and deterministic for a given checkpoint and thread count.

* **Few-shot classification** (paper section 4.3, table 2): ``--episodes`` episodes each of
  5-way 1-shot, 5-way 5-shot, 20-way 1-shot and 20-way 5-shot, one query per class per
  episode (another drawing of the same character). Two classifiers:

  - ``posterior``: p(c|x) ≈ sum_{a: label a = c} q(a|x)  (``VMA.classify``; the paper's numbers);
  - ``importance``: the top T = min(|M|, 16) addresses under q(a|x), ``--importance-samples``
    z per candidate: log w_a = log p(a) + log E_q[p(x|z,m_a) p(z|m_a) / q(z|m_a,x)]
    (``VMA.candidate_log_weights``), p(c|x) ∝ sum_{a in top T, label a = c} w_a. It costs
    T x S decoder passes per query, so it runs on the first ``--importance-episodes`` episodes.

  Accuracy is the mean over episodes of the per-episode accuracy; the 95% interval is the
  normal approximation mean ± 1.96 sd / sqrt(n) over episodes.
* **NLL bound** (paper table 1; models/evaluate_vma_nll.py): L_K with K = ``--nll-k``
  (a ~ q(a|x), z ~ q(z|m_a,x)) of ``--nll-queries`` test drawings, the memory holding 1, 2, 5,
  10 or 19 other drawings of the query's character, alone (C = 1) or among 7 other characters
  with as many shots (C = 8).
  Also KL(q(a|x) || p(a|M)) and KL_z = E_{q(a|x)} KL(q(z|m_a,x) || p(z|m_a)), both in nats and
  both exact given x (a sum over all addresses of analytic Gaussian KLs). The estimator is
  the one of ``VMA.log_likelihood_bound``, computed with the pyramids of each (query, slot)
  pair shared by all samples that pick that slot. Per C the queries are the same at every shot
  count and each memory holds the smaller ones, so the change from 1 shot is reported paired
  (mean ± 1.96 s.e. of the per-query differences). The VAE baseline (``--vae``, no memory)
  gets the same bound and KL_z on the drawings of the C = 1 queries, and the paired change
  from it to the VMA at each shot count.
* **Novelty**: three scores, each as the service computes it: ``address``, the largest
  address logit max_a S(m_a, x) (how strongly x points at any one exemplar; no decoder),
  ``cosine``, that logit over ||h_q(x)|| (the largest cosine of the two embeddings), and
  ``bound``, the best single-exemplar bound max_{a in top NOVELTY_TOP under q(a|x)} log p(x|m_a)
  (1 z sample, no log p(a)). On the held-out *background* characters
  (``split_characters(keys, 0.05, 0)[1]``) each is computed for queries whose character is in a
  5-way 1-shot memory and for the same queries against 5 other characters; the threshold
  maximising balanced accuracy (novel: score < threshold) is kept, and the score with the
  higher AUROC there goes into ``card["serving"]["novelty"]`` with its threshold. Balanced
  accuracy and AUROC of both on the evaluation alphabets are reported.
* **Samples** (models/evaluate_vma_samples.py): per sampling anchor and temperature, the share
  of one-shot samples that the model's own q(a|x) gives back to their exemplar in a 20-way
  memory (fidelity), and their pixel diversity, each next to real drawings'; the served default
  is chosen from them (``--write`` stores it as ``serving.sample_anchor`` and
  ``serving.sample_temperature``).
* ``--plot`` writes ``<dir>/<name>-samples.png``: evaluation characters by row, the exemplar
  (the whole memory) first, then one-shot samples (Bernoulli means) as served.

Cost: the NLL bound dominates (K decoder passes per query and setting, about 0.6 ms each on
one CPU thread). Measured with one thread on a 2-core CPU shared with a training run: few-shot
107 s, NLL 286 s with 48 queries, novelty 6 s; the default 96 queries make it about 11 minutes
(plus about 1 minute for a VAE baseline). ``--nll-queries`` and ``--nll-k`` trade time for precision.
"""

from __future__ import annotations

import argparse
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from models.checkpoint import load_checkpoint, read_card, resolve_card_path, write_card
from models.data.omniglot import load_omniglot, sample_episode, split_characters
from models.evaluate_vma_nll import SHOTS, m_of, nll_table, std_error, vae_row, x_of
from models.evaluate_vma_samples import format_samples, plot_samples, sample_quality
from models.vae import VAE
from models.vma import VMA, label_scores, similarity

TASKS = ((5, 1), (5, 5), (20, 1), (20, 5))  # (ways, shots)
PAPER_ACC = {"5w1s": 0.91, "5w5s": 0.97, "20w1s": 0.77, "20w5s": 0.90}  # q(a|x), paper table 2
IMPORTANCE_TOP = 16
NOVELTY_TOP = 1  # as serving by default (posterior, samples = 1): the top address, one z
NOVELTY_SCORES = ("address", "cosine", "bound")  # see novelty_scores


def mean_ci(values: list[float] | np.ndarray) -> dict:
    """Mean and normal-approximation 95% interval over the given per-episode values."""
    v = np.asarray(values, dtype=np.float64)
    half = 1.96 * std_error(v)
    return {"mean": float(v.mean()), "ci95": [float(v.mean() - half), float(v.mean() + half)], "n": len(v)}


# ------------------------------------------------------------------ classification
@torch.inference_mode()
def importance_scores(
    model: VMA, x: Tensor, m: Tensor, labels: Tensor, n_classes: int, samples: int, gen: torch.Generator
) -> Tensor:
    """Importance-weighted p(c|x) (B, n_classes) over the top min(A, 16) addresses under q(a|x).

    x (B, 1, S, S), m (1, A, 1, S, S) shared memory, labels (A,) in [0, n_classes).
    """
    n_slots = m.shape[1]
    h_m = model.h_mem(m[0]).unsqueeze(0)  # (A, D) -> (1, A, D)
    log_q = model.address_logits(h_m, x).log_softmax(-1)  # (B, A)
    log_p = model.address_logits(h_m).log_softmax(-1)[0]  # (A,)
    top = log_q.topk(min(n_slots, IMPORTANCE_TOP), dim=-1).indices  # (B, T)
    log_w = model.candidate_log_weights(x, m[0][top], samples, gen) + log_p[top]  # m_a (B, T, 1, S, S)
    return label_scores(log_w.softmax(-1), labels[top], n_classes)  # (B, T) weights -> (B, classes)


@torch.inference_mode()
def few_shot(model: VMA, images: np.ndarray, args: argparse.Namespace) -> dict:
    """Accuracy of both classifiers on each task in TASKS; see the module docstring."""
    out = {}
    for ways, shots in TASKS:
        rng = np.random.default_rng([args.seed, ways, shots])
        gen = torch.Generator().manual_seed(args.seed * 1000 + ways * 10 + shots)
        post, imp = [], []
        for e in tqdm(range(args.episodes), desc=f"{ways}-way {shots}-shot", disable=args.quiet, leave=False):
            ep = sample_episode(images, rng, ways, shots, 1)
            x, m = x_of(ep.queries), m_of(ep.memory)
            labels = torch.from_numpy(ep.memory_labels)
            h_m = model.h_mem(m[0]).unsqueeze(0)  # (A, D) -> (1, A, D)
            scores, _ = model.classify(x, h_m, None, labels[None], ways)
            post.append(float((scores.argmax(-1).numpy() == ep.query_labels).mean()))
            if e < args.importance_episodes:
                s = importance_scores(model, x, m, labels, ways, args.importance_samples, gen)
                imp.append(float((s.argmax(-1).numpy() == ep.query_labels).mean()))
        task = f"{ways}w{shots}s"
        out[task] = {"posterior": mean_ci(post), "paper_posterior": PAPER_ACC[task]}
        if imp:
            out[task]["importance"] = mean_ci(imp)
    return out


# ---------------------------------------------------------------------- novelty
@torch.inference_mode()
def novelty_scores(model: VMA, x: Tensor, m: Tensor, gen: torch.Generator) -> dict[str, Tensor]:
    """The two serving novelty scores (B,) each; higher = more like something in memory.

    ``address``: the largest address logit max_a S(m_a, x) of q(a|x), how strongly x points at
    any one exemplar; ``cosine``: the same divided by ||h_q(x)||, the largest cosine between the
    query's and an exemplar's embedding (neither needs the decoder, so both come with
    ``samples: 0``). ``bound``: the 1-sample log p(x|m_a) of the top NOVELTY_TOP addresses, best
    of them. x (B, 1, S, S), m (B, A, 1, S, S).
    """
    b, n_slots = m.shape[:2]
    h_m = model.h_mem(m.flatten(0, 1)).view(b, n_slots, -1)  # (B A, D) -> (B, A, D)
    e = model.h_query(x)  # (B, D)
    logits = similarity(h_m, e)  # (B, A): S(m_a, x)
    top = logits.topk(min(n_slots, NOVELTY_TOP), dim=-1).indices  # (B, T)
    m_a = m[torch.arange(b).unsqueeze(1), top]  # (B, T, 1, S, S)
    bound = model.candidate_log_weights(x, m_a, 1, gen).max(-1).values
    best = logits.max(-1).values
    return {"address": best, "cosine": best / e.norm(dim=-1), "bound": bound}


def novelty_pairs(
    model: VMA, images: np.ndarray, episodes: int, seed: int, quiet: bool
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Scores of queries whose character is in a 5-way 1-shot memory, and of the same queries
    against a memory of 5 other characters: (known, novel), each {score name: (E,)}."""
    rng = np.random.default_rng([seed, 99])
    gen = torch.Generator().manual_seed(seed + 99)
    known: dict[str, list[Tensor]] = {name: [] for name in NOVELTY_SCORES}
    novel: dict[str, list[Tensor]] = {name: [] for name in NOVELTY_SCORES}
    for start in tqdm(range(0, episodes, 32), desc="novelty", disable=quiet, leave=False):
        eps = [sample_episode(images, rng, 6, 1, 1) for _ in range(min(32, episodes - start))]
        x = x_of(np.stack([e.queries[0] for e in eps]))  # class 0's query
        mem = torch.from_numpy(np.stack([e.memory for e in eps]))[:, :, None]  # (E, 6, 1, S, S)
        for into, slots in ((known, mem[:, :5]), (novel, mem[:, 1:])):
            for name, score in novelty_scores(model, x, slots, gen).items():
                into[name].append(score)
    return (
        {k: torch.cat(v).numpy() for k, v in known.items()},
        {k: torch.cat(v).numpy() for k, v in novel.items()},
    )


def auroc(known: np.ndarray, novel: np.ndarray) -> float:
    """P(score of a known query > score of a novel one), ties counted half (Mann-Whitney)."""
    diff = known[:, None] - novel[None, :]
    return float((diff > 0).mean() + 0.5 * (diff == 0).mean())


def balanced_accuracy(known: np.ndarray, novel: np.ndarray, threshold: float) -> float:
    """Mean of the recall on novel (score < threshold) and on known (score >= threshold) queries."""
    return float(0.5 * ((novel < threshold).mean() + (known >= threshold).mean()))


def best_threshold(known: np.ndarray, novel: np.ndarray) -> float:
    """The threshold (a midpoint between sorted scores) with the highest balanced accuracy."""
    s = np.unique(np.concatenate([known, novel]))
    cands = np.concatenate([[s[0] - 1.0], (s[1:] + s[:-1]) / 2, [s[-1] + 1.0]])
    return float(max(cands, key=lambda t: balanced_accuracy(known, novel, t)))


def novelty(model: VMA, background: tuple[np.ndarray, list[str]], evaluation: np.ndarray, args) -> dict:
    """Calibrate each score's threshold on held-out background characters, report both on the
    evaluation set, and pick for serving the score with the higher calibration AUROC."""
    images, keys = background
    val = images[split_characters(keys, 0.05, 0)[1]]
    k_cal, n_cal = novelty_pairs(model, val, args.novelty_episodes, args.seed, args.quiet)
    k_ev, n_ev = novelty_pairs(model, evaluation, args.novelty_episodes, args.seed + 1, args.quiet)

    def summary(known: np.ndarray, novel: np.ndarray, thr: float) -> dict:
        return {
            "balanced_accuracy": balanced_accuracy(known, novel, thr),
            "auroc": auroc(known, novel),
            "pairs": len(known),
            "mean_known": float(known.mean()),
            "mean_novel": float(novel.mean()),
        }

    scores = {}
    for name in NOVELTY_SCORES:
        thr = best_threshold(k_cal[name], n_cal[name])
        scores[name] = {
            "threshold": thr,
            "calibration": {
                "set": "background held-out characters",
                **summary(k_cal[name], n_cal[name], thr),
            },
            "evaluation": {"set": "evaluation alphabets", **summary(k_ev[name], n_ev[name], thr)},
        }
    chosen = max(NOVELTY_SCORES, key=lambda n: scores[n]["calibration"]["auroc"])
    return {"score": chosen, "threshold": scores[chosen]["threshold"], "scores": scores}


# ------------------------------------------------------------------------ table
def _pct(d: dict | None) -> str:
    return "–" if d is None else f"{100 * d['mean']:.1f} ± {50 * (d['ci95'][1] - d['ci95'][0]):.1f}"


def _nll(d: dict) -> str:
    return f"{d['nll']:.1f} ± {1.96 * d['nll_se']:.1f}"


def _diff(d: dict) -> str:
    return f"{d['mean']:+.1f} ± {1.96 * d['se']:.1f}"


def format_table(metrics: dict) -> str:
    """Markdown tables (few-shot accuracy, NLL / KL, novelty) for docs/vma.md."""
    lines = ["| task | q(a\\|x) % | importance % | paper q(a\\|x) % |", "|---|---|---|---|"]
    for task, r in metrics["few_shot"].items():
        imp, paper = _pct(r.get("importance")), 100 * r["paper_posterior"]
        lines.append(f"| {task} | {_pct(r['posterior'])} | {imp} | {paper:.0f} |")
    nll = metrics["nll"]
    vae = metrics.get("vae")
    lines += [
        "",
        "| shots | NLL C=1 | NLL C=8 | paper C=1 | C=1 from 1 shot | C=1 from the VAE "
        "| KL(a) C=1 | KL(a) C=8 | KL(z) C=1 | KL(z) C=8 |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for s in map(str, SHOTS):
        c1, c8 = nll["C=1"][s], nll["C=8"][s]
        kls = f"{c1['kl_a']:.2f} | {c8['kl_a']:.2f} | {c1['kl_z']:.1f} | {c8['kl_z']:.1f}"
        vs_vae = _diff(vae["vs_vma"][s]) if vae and "vs_vma" in vae else "–"
        paired = f"{_diff(c1['vs_1_shot'])} | {vs_vae}" if "vs_1_shot" in c1 else "– | –"
        lines.append(f"| {s} | {_nll(c1)} | {_nll(c8)} | {nll['paper_C=1'][s]} | {paired} | {kls} |")
    if vae:
        lines.append(f"| VAE (no memory) | {_nll(vae)} | | | | | | | {vae['kl_z']:.1f} | |")
    nv, st = metrics["novelty"], metrics["settings"]
    lines += [
        "",
        "| novelty score | threshold | AUROC | balanced accuracy | served |",
        "|---|---|---|---|---|",
    ]
    for name, r in nv["scores"].items():
        ev, served = r["evaluation"], "yes" if name == nv["score"] else ""
        acc = f"{100 * ev['balanced_accuracy']:.1f} %"
        lines.append(f"| {name} | {r['threshold']:.2f} | {ev['auroc']:.3f} | {acc} | {served} |")
    if "samples" in metrics:
        lines += ["", *format_samples(metrics["samples"])]
    lines += [
        "",
        f"Settings: {st['episodes']} episodes per task ({st['importance_episodes']} with the importance "
        f"method, S = {st['importance_samples']}), NLL K = {st['nll_k']} on {st['nll_queries']} queries, "
        f"seed {st['seed']}, {st['seconds']:.0f} s with {st['threads']} thread(s) "
        f"({', '.join(f'{k} {v:.0f} s' for k, v in metrics['seconds'].items())}).",
    ]
    return "\n".join(lines)


# --------------------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="memserve evaluate vma", description=__doc__.split("\n")[0])
    p.add_argument("kind", choices=["vma"])
    p.add_argument("--checkpoint", default="vma-omniglot", help="checkpoint name or .json path")
    p.add_argument("--vae", default=None, help="VAE baseline checkpoint name (same --dir)")
    p.add_argument("--dir", default="checkpoints", help="checkpoint folder")
    p.add_argument("--data", type=Path, default=None, help="data folder holding omniglot/ (or the npz)")
    p.add_argument("--episodes", type=int, default=1000, help="episodes per few-shot task")
    p.add_argument("--importance-episodes", type=int, default=100, help="of those, scored by importance")
    p.add_argument("--importance-samples", type=int, default=1, help="z samples per candidate address")
    p.add_argument("--nll-k", type=int, default=1000, help="importance samples of the NLL bound")
    p.add_argument("--nll-queries", type=int, default=96, help="test drawings per NLL setting")
    p.add_argument("--novelty-episodes", type=int, default=500, help="query pairs per novelty set")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--write", action="store_true", help="store metrics and the novelty threshold in the card")
    p.add_argument("--plot", action="store_true", help="save <dir>/<name>-samples.png")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


@torch.inference_mode()
def evaluate(model: VMA, vae: VAE | None, args: argparse.Namespace) -> dict:
    """All metrics for the card; see the module docstring."""
    t0 = time.monotonic()
    evaluation, _ = load_omniglot("evaluation", args.data)
    background = load_omniglot("background", args.data)
    metrics: dict = {"set": "omniglot evaluation alphabets", "seconds": {}}
    t = time.monotonic()
    metrics["few_shot"] = few_shot(model, evaluation, args)
    metrics["seconds"]["few_shot"], t = round(time.monotonic() - t, 1), time.monotonic()
    metrics["nll"], queries, c1_bounds = nll_table(model, evaluation, args)
    if vae is not None:
        metrics["vae"] = vae_row(vae, queries, c1_bounds, args)
    metrics["seconds"]["nll"], t = round(time.monotonic() - t, 1), time.monotonic()
    metrics["novelty"] = novelty(model, background, evaluation, args)
    metrics["seconds"]["novelty"] = round(time.monotonic() - t, 1)
    t = time.monotonic()
    metrics["samples"] = sample_quality(model, evaluation, args.seed)
    metrics["seconds"]["samples"] = round(time.monotonic() - t, 1)
    metrics["settings"] = {
        "episodes": args.episodes,
        "importance_episodes": min(args.importance_episodes, args.episodes),
        "importance_samples": args.importance_samples,
        "importance_top": IMPORTANCE_TOP,
        "queries_per_class": 1,
        "nll_k": args.nll_k,
        "nll_queries": args.nll_queries,
        "novelty_episodes": args.novelty_episodes,
        "seed": args.seed,
        "threads": args.threads,
        "vae": args.vae,
        "ci95": "normal approx. over episodes (accuracy), 1.96 x s.e. over queries (NLL)",
        "seconds": round(time.monotonic() - t0, 1),
    }
    metrics["evaluated"] = datetime.now(UTC).isoformat(timespec="seconds")
    return metrics


def main(argv: list[str]) -> int:
    """``python -m models.evaluate vma ...``: print the tables; --write / --plot as documented."""
    args = build_parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    model, card = load_checkpoint(args.checkpoint, args.dir)
    assert isinstance(model, VMA), f"{args.checkpoint} is not a vma checkpoint"
    vae = None
    if args.vae:
        vae, _ = load_checkpoint(args.vae, args.dir)
        assert isinstance(vae, VAE), f"{args.vae} is not a vae checkpoint"
    metrics = evaluate(model, vae, args)
    print(format_table(metrics))
    card_path = resolve_card_path(args.checkpoint, args.dir)
    if args.write:
        fresh = read_card(card_path)  # re-read: never write back a stale copy
        fresh["metrics"] = metrics
        serving = fresh.setdefault("serving", {})
        serving.pop("novelty_threshold_nats", None)  # the form before there were two scores
        serving["novelty"] = {
            "score": metrics["novelty"]["score"],
            "threshold": round(metrics["novelty"]["threshold"], 4),
        }
        serving["sample_temperature"] = metrics["samples"]["chosen"]["temperature"]
        serving["sample_anchor"] = metrics["samples"]["chosen"]["anchor"]
        write_card(card_path, fresh)
        print(f"wrote metrics and the novelty threshold into {card_path}")
    if args.plot:
        out = card_path.with_name(f"{card.get('name', card_path.stem)}-samples.png")
        chosen = metrics["samples"]["chosen"]
        images = load_omniglot("evaluation", args.data)[0]
        plot_samples(model, images, out, args.seed, chosen["temperature"], chosen["anchor"])
        print(f"wrote {out}")
    return 0
