"""One-shot samples of a VMA checkpoint: do they keep the exemplar's character, how varied are they.

Part of ``memserve evaluate vma`` (models/evaluate_vma.py calls ``sample_quality`` and
``plot_samples``). Samples are z = mu + t * sigma_p * noise at a *temperature* t, with mu moved
a share *anchor* of the way from p(z|m_a)'s mean to q(z|m_a, x = m_a)'s (``models.vma.decode_samples``):
anchor 0 and t = 1 is the model's own prior, smaller t draws nearer the mean, anchor 1 varies the
samples around the exemplar's own style. Per (anchor, temperature):

* **fidelity**: a memory of one exemplar each of ``WAYS`` evaluation characters; ``N`` samples
  of one of them, binarised at 0.5 (the drawings are binary), are classified by the model's own
  q(a|x) over that memory. Fidelity is the share assigned to the exemplar they were drawn from.
  The same classifier on ``N`` real drawings of the character (in place of the samples) gives
  the reference: what a drawing of the character scores.
* **diversity**: the mean pairwise per-pixel |difference| between the ``N`` binarised samples,
  next to that between ``N`` real drawings of one character.

``choose_sampling`` picks the served default: the (anchor, temperature) of highest fidelity
among those whose diversity is at least ``KEEP_DIVERSITY`` of the real drawings' (samples
should still vary like drawings do, not collapse onto one mean drawing).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from models.vma import VMA

TEMPERATURES = (1.0, 0.9, 0.8, 0.7, 0.6, 0.5)
ANCHORS = (0.0, 0.5, 1.0)
KEEP_DIVERSITY = 0.8  # of the real drawings' pixel diversity
WAYS = 20  # characters in the fidelity memory
N = 8  # samples (and real drawings) per character


def _pairwise_l1(imgs: Tensor) -> float:
    """Mean over pairs i < j of the per-pixel mean |imgs_i - imgs_j|; imgs (n, S, S)."""
    flat = imgs.flatten(1)  # (n, S, S) -> (n, S S)
    d = (flat[:, None] - flat[None, :]).abs().mean(-1)  # (n, n)
    n = len(imgs)
    return float(d.sum() / (n * (n - 1)))


def draw(model: VMA, exemplar: Tensor, noise: Tensor, temperature: float, anchor: float = 0.0) -> Tensor:
    """Bernoulli means (n, S, S) of samples of one exemplar (1, 1, S, S), noise (n, z_dim)."""
    n = len(noise)
    return model.sample_from(exemplar.expand(n, -1, -1, -1), temperature * noise, torch.full((n,), anchor))


@torch.inference_mode()
def sample_quality(
    model: VMA,
    images: np.ndarray,
    seed: int,
    chars: int = 100,
    temperatures: tuple[float, ...] = TEMPERATURES,
    anchors: tuple[float, ...] = ANCHORS,
) -> dict:
    """Fidelity and diversity per (anchor, temperature), and of real drawings; see the module docstring.

    images (characters, drawings, S, S). Every setting sees the same episodes and noise.
    """
    assert images.shape[1] > N, f"need more than {N} drawings per character"
    rng = np.random.default_rng([seed, 7])
    episodes = []
    for _ in range(chars):
        ways = rng.choice(len(images), min(WAYS, len(images)), replace=False)
        exemplars = np.stack([images[c, rng.integers(images.shape[1])] for c in ways])  # (W, S, S)
        real = images[ways[0], rng.choice(images.shape[1], N, replace=False)]  # (N, S, S)
        episodes.append((torch.from_numpy(exemplars).unsqueeze(1), torch.from_numpy(real)))  # m (W, 1, S, S)
    gen = torch.Generator().manual_seed(seed + 7)
    noise = [torch.randn(N, model.config.z_dim, generator=gen) for _ in episodes]

    def scored(m: Tensor, x: Tensor) -> tuple[float, float]:
        h_m = model.h_mem(m).unsqueeze(0)  # (W, D) -> (1, W, D)
        picked = model.address_logits(h_m, x.unsqueeze(1)).argmax(-1)  # (N, W) -> (N,)
        return float((picked == 0).float().mean()), _pairwise_l1(x)

    real = np.array([scored(m, x) for m, x in episodes])  # (chars, 2)
    rows = []
    for a in anchors:
        for t in temperatures:
            drawn = [
                (draw(model, m[:1], e, t, a) > 0.5).float() for (m, _), e in zip(episodes, noise, strict=True)
            ]
            got = np.array([scored(m, x) for (m, _), x in zip(episodes, drawn, strict=True)])  # (chars, 2)
            rows.append({
                "anchor": a, "temperature": t,
                "fidelity": float(got[:, 0].mean()), "diversity": float(got[:, 1].mean()),
            })  # fmt: skip
    reference = {"fidelity": float(real[:, 0].mean()), "diversity": float(real[:, 1].mean())}
    return {
        "settings": rows,
        "real": reference,
        "chosen": choose_sampling(rows, reference["diversity"]),
        "ways": min(WAYS, len(images)),
        "n": N,
        "characters": chars,
    }


def choose_sampling(rows: list[dict], real_diversity: float, keep: float = KEEP_DIVERSITY) -> dict:
    """{"anchor", "temperature"} of highest fidelity whose diversity is at least ``keep`` x the real
    drawings'; anchor 0 at temperature 1 (the model's prior) when none is."""
    ok = [r for r in rows if r["diversity"] >= keep * real_diversity]
    best = max(ok, key=lambda r: r["fidelity"]) if ok else {"anchor": 0.0, "temperature": 1.0}
    return {"anchor": float(best["anchor"]), "temperature": float(best["temperature"])}


def format_samples(s: dict) -> list[str]:
    """Markdown table lines for docs/vma.md."""
    lines = [
        f"| samples at anchor | temperature | fidelity ({s['ways']}-way) % | pixel diversity | served |",
        "|---|---|---|---|---|",
    ]
    chosen = (s["chosen"]["anchor"], s["chosen"]["temperature"])
    for r in s["settings"]:
        served = "yes" if (r["anchor"], r["temperature"]) == chosen else ""
        a, t, fid, div = r["anchor"], r["temperature"], 100 * r["fidelity"], r["diversity"]
        lines.append(f"| {a:g} | {t:.1f} | {fid:.1f} | {div:.3f} | {served} |")
    real = s["real"]
    lines.append(f"| real drawings | | {100 * real['fidelity']:.1f} | {real['diversity']:.3f} | |")
    return lines


@torch.inference_mode()
def plot_samples(
    model: VMA, images: np.ndarray, out: Path, seed: int, temperature: float = 1.0, anchor: float = 0.0,
    rows: int = 8, n: int = 8,
) -> None:  # fmt: skip
    """Grid: one evaluation character per row, its exemplar (the whole memory), then n one-shot samples."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rng = np.random.default_rng([seed, 5])
    gen = torch.Generator().manual_seed(seed + 5)
    chars = rng.choice(len(images), min(rows, len(images)), replace=False)
    fig, axes = plt.subplots(len(chars), n + 1, figsize=(n + 1, len(chars)), squeeze=False)
    for r, c in enumerate(chars):
        exemplar = images[c, rng.integers(images.shape[1])]
        noise = torch.randn(n, model.config.z_dim, generator=gen)
        samples = draw(model, torch.from_numpy(exemplar)[None, None], noise, temperature, anchor)  # (n, S, S)
        for j, img in enumerate([exemplar, *samples.numpy()]):
            axes[r, j].imshow(img, cmap="gray_r", vmin=0, vmax=1)
            axes[r, j].set_xticks([]), axes[r, j].set_yticks([])
    axes[0, 0].set_title("exemplar", fontsize=8)
    title = f"one-shot samples (Bernoulli means), anchor {anchor:g}, temperature {temperature:g}"
    axes[0, n // 2].set_title(title, fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=80)
    plt.close(fig)
