"""VMA evaluation (models/evaluate_vma.py) and the VAE baseline (models/vae.py) on synthetic Omniglot."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from models.checkpoint import load_checkpoint, save_checkpoint
from models.data.omniglot import load_omniglot
from models.evaluate_vma import auroc, balanced_accuracy, best_threshold, few_shot, format_table
from models.evaluate_vma_nll import first_shots, memory_bound, nll_batches
from models.evaluate_vma_samples import choose_sampling
from models.vae import VAE, VAEConfig
from models.vma import VMA, VMAConfig, gauss_kl, gauss_logpdf
from tests.conftest import write_fake_omniglot

TINY_VMA = VMAConfig(channels=4, hidden_dim=16, match_dim=16, z_dim=4)
TINY_VAE = VAEConfig(channels=4, hidden_dim=16, z_dim=4)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("omniglot")
    rng = np.random.default_rng(0)
    write_fake_omniglot(d, "evaluation", 2, 12, rng, 0.02)  # 24 characters: enough for 20-way
    write_fake_omniglot(d, "background", 2, 60, rng, 0.02)  # 5% held out -> 3 per alphabet, 6 in all
    return d


@pytest.fixture(scope="module")
def ckpt_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("ckpt")
    torch.manual_seed(0)
    save_checkpoint(VMA(TINY_VMA), {"metrics": {}, "serving": {"keep": 1}}, d, "vma-tiny")
    save_checkpoint(VAE(TINY_VAE), {"metrics": {}}, d, "vae-tiny")
    return d


def test_evaluation_end_to_end_writes_metrics_threshold_and_plot(data_dir, ckpt_dir):
    from models.evaluate import main

    argv = ["vma", "--checkpoint", "vma-tiny", "--vae", "vae-tiny", "--dir", str(ckpt_dir),
            "--data", str(data_dir), "--episodes", "4", "--importance-episodes", "2", "--nll-k", "8",
            "--nll-queries", "8", "--novelty-episodes", "16", "--write", "--plot", "--quiet"]  # fmt: skip
    assert main(argv) == 0
    card = json.loads((ckpt_dir / "vma-tiny.json").read_text())
    m = card["metrics"]
    assert set(m["few_shot"]) == {"5w1s", "5w5s", "20w1s", "20w5s"}
    for r in m["few_shot"].values():
        assert 0.0 <= r["posterior"]["mean"] <= 1.0 and r["posterior"]["n"] == 4
        assert r["importance"]["n"] == 2
    for c in ("C=1", "C=8"):
        assert set(m["nll"][c]) == {"1", "2", "5", "10", "19"}
        for row in m["nll"][c].values():
            assert 100 < row["nll"] < 2000 and row["kl_a"] >= -1e-5 and row["kl_z"] >= 0
            assert row["queries"] == 8
        one = m["nll"][c]["1"]
        assert one["vs_1_shot"] == {"mean": 0.0, "se": 0.0}, "1 shot against itself, query by query"
        for s, row in m["nll"][c].items():  # a paired difference of the same queries' bounds
            assert row["vs_1_shot"]["mean"] == pytest.approx(row["nll"] - one["nll"], abs=1e-3), s
    assert np.isfinite(m["vae"]["nll"]) and m["vae"]["queries"] == 8
    for s, d in m["vae"]["vs_vma"].items():  # the VAE's queries are C = 1's, so the change pairs up
        assert d["mean"] == pytest.approx(m["nll"]["C=1"][s]["nll"] - m["vae"]["nll"], abs=1e-3), s
    rule = card["serving"]["novelty"]
    assert card["serving"]["keep"] == 1, "other serving settings survive"
    assert rule["score"] == m["novelty"]["score"] in ("address", "cosine", "bound")
    assert rule["threshold"] == pytest.approx(m["novelty"]["threshold"], abs=1e-3) and np.isfinite(
        rule["threshold"]
    )
    for name in ("address", "cosine", "bound"):
        assert 0.0 <= m["novelty"]["scores"][name]["evaluation"]["auroc"] <= 1.0
    chosen = m["novelty"]["scores"][rule["score"]]["calibration"]["auroc"]
    assert chosen == max(r["calibration"]["auroc"] for r in m["novelty"]["scores"].values())
    sq = m["samples"]
    temperatures = [1.0, 0.9, 0.8, 0.7, 0.6, 0.5]
    assert [(r["anchor"], r["temperature"]) for r in sq["settings"]] == [
        (a, t) for a in (0.0, 0.5, 1.0) for t in temperatures
    ]
    for r in [*sq["settings"], sq["real"]]:
        assert 0.0 <= r["fidelity"] <= 1.0 and 0.0 <= r["diversity"] <= 1.0
    assert sq["real"]["diversity"] > 0
    assert card["serving"]["sample_temperature"] == sq["chosen"]["temperature"]
    assert card["serving"]["sample_anchor"] == sq["chosen"]["anchor"]
    assert m["settings"]["nll_k"] == 8 and m["settings"]["seed"] == 0
    assert (ckpt_dir / "vma-tiny-samples.png").stat().st_size > 1000
    table = format_table(m)
    assert "| 5w1s |" in table and "| 19 |" in table and "VAE" in table and "| real drawings |" in table


@pytest.mark.parametrize("classes", [1, 8])
def test_nll_memories_are_nested_across_shot_counts(classes):
    """Every shot count sees the same queries, and its memory is the first drawings of each
    class of the 19-shot one: the rows of the NLL table differ by the memory alone."""
    rng = np.random.default_rng(0)
    images = rng.random((30, 20, 28, 28)).astype(np.float32)
    x, m = next(nll_batches(images, rng, classes, 8))
    assert m.shape[1] == classes * 19 and x.shape[0] == (8 if classes == 1 else classes)
    two = first_shots(m, classes, 2)
    assert two.shape[1] == classes * 2
    for c in range(classes):  # class c's first two drawings, in order
        assert torch.equal(two[:, 2 * c : 2 * c + 2], m[:, 19 * c : 19 * c + 2])
    assert torch.equal(first_shots(m, classes, 19), m)


def test_choose_sampling_keeps_samples_varied() -> None:
    rows = [
        {"anchor": 0.0, "temperature": 1.0, "fidelity": 0.4, "diversity": 0.11},
        {"anchor": 0.0, "temperature": 0.8, "fidelity": 0.5, "diversity": 0.10},
        {"anchor": 0.0, "temperature": 0.5, "fidelity": 0.6, "diversity": 0.05},
        {"anchor": 1.0, "temperature": 1.0, "fidelity": 0.55, "diversity": 0.099},
    ]
    at = lambda a, t: {"anchor": a, "temperature": t}  # noqa: E731
    assert choose_sampling(rows, real_diversity=0.125) == at(0.0, 0.8), "0.5 and anchor 1 too uniform"
    assert choose_sampling(rows, real_diversity=0.12) == at(1.0, 1.0), (
        "anchored: more faithful, varied enough"
    )
    assert choose_sampling(rows, real_diversity=0.06) == at(0.0, 0.5)
    assert choose_sampling(rows, real_diversity=0.5) == at(0.0, 1.0), "none varied enough: the prior itself"


class _Projection(torch.nn.Module):
    """A discriminative stand-in for h / h_q: a fixed random projection of the centred pixels."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        self.w = torch.randn(784, 16, generator=torch.Generator().manual_seed(seed)) / 28

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (2 * x.flatten(1) - 1) @ self.w  # (N, 1, S, S) -> (N, S S) -> (N, 16)


def test_copies_of_exemplars_are_classified_perfectly(tmp_path):
    """With h_q = h (as VMA initialises them), a query equal to an exemplar scores that exemplar
    highest (Cauchy-Schwarz): with 20 identical drawings per character every task is 100 %.

    A random-init VMA's embeddings are nearly parallel (cosines ~ 1 - 1e-6), too close for the
    summed posterior to separate reliably, so h and h_q are a shared random projection here.
    """
    write_fake_omniglot(tmp_path, "evaluation", 1, 24, np.random.default_rng(1), 0.0)
    images, _ = load_omniglot("evaluation", tmp_path)
    model = VMA(TINY_VMA).eval()
    model.h_mem = model.h_query = _Projection(0)
    args = argparse.Namespace(episodes=10, importance_episodes=0, importance_samples=1, seed=0, quiet=True)
    res = few_shot(model, images, args)
    assert all(r["posterior"]["mean"] == 1.0 for r in res.values()), res
    # A query embedding unrelated to h breaks it: then copies are no better placed than others.
    model.h_query = _Projection(1)
    res = few_shot(model, images, args)
    assert max(r["posterior"]["mean"] for r in res.values()) < 0.9, res


@pytest.mark.parametrize("shared", [True, False])
def test_memory_bound_agrees_with_the_model_bound(shared):
    torch.manual_seed(0)
    model = VMA(TINY_VMA).eval()
    x = (torch.rand(6, 1, 28, 28) < 0.2).float()
    m = (torch.rand(1 if shared else 6, 3, 1, 28, 28) < 0.2).float()
    out = memory_bound(model, x, m, 64, torch.Generator().manual_seed(0), chunk=50)
    ref = model.log_likelihood_bound(x, m, None, 64)
    assert out["bound"].shape == (6,)
    assert (out["bound"] - ref).abs().mean() < 1.5, (out["bound"], ref)
    assert (out["kl_a"] >= -1e-5).all() and (out["kl_z"] >= 0).all()
    # A larger K tightens the bound on average.
    small = memory_bound(model, x, m, 1, torch.Generator().manual_seed(1))["bound"]
    assert out["bound"].mean() > small.mean()


def test_gauss_kl_matches_monte_carlo():
    g = torch.Generator().manual_seed(0)
    mu_q, ls_q, mu_p, ls_p = (0.5 * torch.randn(3, 5, generator=g) for _ in range(4))
    z = mu_q + ls_q.exp() * torch.randn(20000, 3, 5, generator=g)  # (N, 3, 5)
    mc = (gauss_logpdf(z, mu_q, ls_q) - gauss_logpdf(z, mu_p, ls_p)).mean(0)  # (N, 3) -> (3,)
    assert torch.allclose(gauss_kl(mu_q, ls_q, mu_p, ls_p), mc, atol=0.1)


def test_novelty_threshold_helpers():
    known, novel = np.array([5.0, 6.0, 7.0]), np.array([1.0, 2.0, 3.0])
    thr = best_threshold(known, novel)
    assert 3.0 < thr < 5.0 and balanced_accuracy(known, novel, thr) == 1.0
    assert auroc(known, novel) == 1.0 and auroc(novel, known) == 0.0
    assert auroc(np.array([1.0]), np.array([1.0])) == 0.5
    assert balanced_accuracy(known, novel, 100.0) == 0.5  # everything flagged novel


def test_vae_iwae_bound_grows_with_k_and_kl_matches_samples():
    torch.manual_seed(0)
    model = VAE(TINY_VAE).eval()
    x = (torch.rand(8, 1, 28, 28) < 0.2).float()
    gen = torch.Generator().manual_seed(0)
    l1 = torch.stack([model.log_likelihood_bound(x, 1, generator=gen) for _ in range(32)]).mean(0)
    l64 = model.log_likelihood_bound(x, 64, chunk=100, generator=gen)
    assert l64.mean() > l1.mean() + 0.01
    # The analytic KL equals the sampled E_q[log q(z|x) - log p(z)].
    mu, log_std = model.posterior(x)
    z = mu + log_std.exp() * torch.randn(4000, *mu.shape)  # (N, B, z)
    zeros = torch.zeros_like(mu)
    mc = (gauss_logpdf(z, mu, log_std) - gauss_logpdf(z, zeros, zeros)).mean(0)  # (N, B) -> (B,)
    assert torch.allclose(mc, model.kl_z(x), atol=0.05 * model.kl_z(x).mean().item() + 0.02)
    assert model.sample(3, torch.Generator().manual_seed(0)).shape == (3, 28, 28)


def test_vae_training_lowers_the_loss_on_a_fixed_batch():
    torch.manual_seed(0)
    model = VAE(TINY_VAE)
    x = (torch.rand(16, 1, 28, 28) < 0.2).float()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)

    def loss_now() -> float:
        torch.manual_seed(123)
        return model.iwae_loss(x, 4)[0].item()

    before = loss_now()
    for _ in range(50):
        loss, _ = model.iwae_loss(x, 4)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss_now() < before - 20, (before, loss_now())


def test_train_vae_cli_writes_a_loadable_checkpoint(data_dir, tmp_path):
    from models.train import main

    argv = ["vae", "--data", str(data_dir), "--steps", "4", "--eval-every", "2", "--channels", "4",
            "--hidden", "16", "--z-dim", "4", "--val-images", "16", "--out", str(tmp_path),
            "--quiet"]  # fmt: skip
    assert main(argv) == 0
    model, card = load_checkpoint("vae-omniglot", tmp_path)
    assert isinstance(model, VAE) and card["kind"] == "vae"
    assert card["training"]["steps"] == 4 and card["training"]["command"].startswith("memserve train vae")
    assert np.isfinite(card["training"]["best_val_nll"])
