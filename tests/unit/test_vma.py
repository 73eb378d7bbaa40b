"""VMA model: shapes and masking, the K-sample bound, the VIMCO gradient, recall training, sampling."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from models.vma import VMA, VMAConfig

TINY = VMAConfig(image_size=8, n_levels=1, channels=4, hidden_dim=16, match_dim=8, z_dim=2)


pytestmark = pytest.mark.usefixtures("one_thread")


def _bits(*shape: int, generator: torch.Generator | None = None) -> torch.Tensor:
    return (torch.rand(*shape, generator=generator) < 0.5).float()


def _with_table(model: VMA, table: torch.Tensor) -> VMA:
    """Replace the z part by a fixed log p(x | m_a) table (A,), so log p(x|M) is exact."""

    def terms(x, m, mask, a, beta=1.0, hide=0.0):
        return table.expand(a.shape[0], -1).gather(1, a)

    model.log_likelihood_terms = terms  # instance attribute shadows the method
    return model


def _address_params(model: VMA) -> list[torch.nn.Parameter]:
    return [model.e_prior, *model.h_query.parameters(), *model.h_mem.parameters()]


def _exact_log_probs(model: VMA, x: torch.Tensor, m: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """log q(a|x) and log p(a|M) for one query x (1, 1, S, S) and a memory m (1, A, 1, S, S)."""
    h_m = model.h_mem(m.flatten(0, 1)).unsqueeze(0)  # (A, D) -> (1, A, D)
    return model.address_logits(h_m, x).log_softmax(-1)[0], model.address_logits(h_m).log_softmax(-1)[0]


def _expected_bound(log_q: torch.Tensor, log_p: torch.Tensor, table: torch.Tensor, k: int) -> torch.Tensor:
    """E_{a_1..a_K ~ q}[log 1/K sum_k w_k] by enumerating all A^K address tuples."""
    total = log_q.new_zeros(())
    for combo in itertools.product(range(log_q.shape[0]), repeat=k):
        a = torch.tensor(combo)
        log_w = table[a] + log_p[a] - log_q[a]
        total = total + log_q[a].sum().exp() * (torch.logsumexp(log_w, 0) - math.log(k))
    return total


# --------------------------------------------------------------------------- 1. shapes, masks
def test_shapes_and_masking() -> None:
    torch.manual_seed(0)
    model = VMA(TINY)
    b, n_slots, s = 3, 5, TINY.image_size
    m, x = _bits(b, n_slots, 1, s, s), _bits(b, 1, s, s)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 0, 1, 0, 0], [0, 0, 0, 1, 0]], dtype=torch.bool)
    h_m, pyramid = model.embed_memory(m)
    assert h_m.shape == (b, n_slots, TINY.match_dim)
    assert pyramid[0].shape == (b, n_slots, TINY.channels, s, s)
    assert pyramid[-1].shape == (b, n_slots, TINY.channels, s // 2, s // 2)

    q = model.address_logits(h_m, x, mask).softmax(-1)
    p = model.address_logits(h_m, None, mask).softmax(-1)
    assert bool((q[~mask] == 0).all()) and bool((p[~mask] == 0).all())
    torch.testing.assert_close(q.sum(-1), torch.ones(b))
    assert q[2, 3] == 1.0  # the only filled slot

    # Whatever sits in an empty slot changes nothing.
    m2 = torch.where(mask.view(b, n_slots, 1, 1, 1), m, 1.0 - m)
    labels = torch.tensor([[0, 1, 2, 0, 1]] * b)
    scores, kl = model.classify(x, h_m, mask, labels, 3)
    scores2, kl2 = model.classify(x, model.embed_memory(m2)[0], mask, labels, 3)
    torch.testing.assert_close(scores, scores2)
    torch.testing.assert_close(kl, kl2)
    assert scores.shape == (b, 3) and kl.shape == (b,)
    torch.testing.assert_close(scores.sum(-1), torch.ones(b))
    assert bool((kl >= -1e-6).all()) and abs(kl[2].item()) < 1e-6  # one slot: nothing learnt

    # Training samples never land on an empty slot (log_likelihood_terms asserts it), and the
    # loss is finite with gradients for every parameter.
    for _ in range(20):
        loss, bound = model.vimco_loss(x, m, mask, 4)
    assert bound.shape == (b,) and torch.isfinite(loss)
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())

    # A memory shared by the batch (leading dim 1) gives the same q as the same memory per row.
    q_shared = model.address_logits(h_m[:1], x, mask[:1]).softmax(-1)
    q_rows = model.address_logits(h_m[:1].expand(b, -1, -1), x, mask[:1].expand(b, -1)).softmax(-1)
    torch.testing.assert_close(q_shared, q_rows)
    assert model.log_likelihood_bound(x, m[:1], mask[:1], 3).shape == (b,)


# ----------------------------------------------------------------------- 2. bound vs exact
def test_bound_below_exact_and_tightens_with_k() -> None:
    torch.manual_seed(1)
    model = VMA(TINY)
    with torch.no_grad():
        model.e_prior.mul_(20.0)  # a prior far from uniform, so q != posterior and the gaps are visible
    s, reps = TINY.image_size, 4000
    m, x = _bits(1, 3, 1, s, s), _bits(1, 1, s, s)
    table = torch.tensor([-3.0, 0.0, -6.0])  # log p(x | m_a), z integrated out exactly
    _with_table(model, table)
    with torch.no_grad():
        log_q, log_p = _exact_log_probs(model, x, m)
    exact = torch.logsumexp(log_p + table, 0).item()

    means = {}
    for k in (1, 4, 16):
        bounds = model.log_likelihood_bound(x.expand(reps, -1, -1, -1), m, None, k)
        means[k], se = bounds.mean().item(), bounds.std().item() / math.sqrt(reps)
        expected = _expected_bound(log_q, log_p, table, k).item() if k <= 4 else None
        if expected is not None:  # the Monte Carlo mean agrees with the enumerated expectation
            assert abs(means[k] - expected) < 5 * se + 1e-4, (k, means[k], expected, se)
        assert means[k] <= exact + 5 * se + 1e-4, (k, means[k], exact)
    assert means[1] < means[4] < means[16], means
    assert exact - means[1] > 0.1  # the toy has a real gap to close


def test_bound_with_real_z_part() -> None:
    """The full model: enumerate a, estimate each z integral with many samples."""
    torch.manual_seed(2)
    model = VMA(TINY)
    s, n_slots, reps = TINY.image_size, 3, 2000
    m, x = _bits(1, n_slots, 1, s, s), _bits(1, 1, s, s)
    with torch.no_grad():
        _, log_p = _exact_log_probs(model, x, m)
        a = torch.arange(n_slots).repeat_interleave(4000).view(1, -1)  # (1, A 4000)
        terms = model.log_likelihood_terms(x, m, None, a).view(n_slots, -1)  # (A, 4000)
        log_pz = torch.logsumexp(terms, -1) - math.log(terms.shape[1])  # log p(x | m_a), nearly exact
    exact = torch.logsumexp(log_p + log_pz, 0).item()
    means = {}
    for k in (1, 4, 16):
        bounds = model.log_likelihood_bound(x.expand(reps, -1, -1, -1), m, None, k)
        means[k], se = bounds.mean().item(), bounds.std().item() / math.sqrt(reps)
        assert means[k] <= exact + 5 * se + 0.01, (k, means[k], exact)
    # Here q(z|m_a, x) is already close to the posterior, so K = 4 and K = 16 differ by ~0.01-0.1
    # nats: only K = 1 is checked strictly against both.
    assert means[1] < means[4] and means[1] < means[16] and means[4] < means[16] + 0.02, means


# ------------------------------------------------------------------------- 3. VIMCO gradient
def test_vimco_gradient_matches_enumeration() -> None:
    torch.manual_seed(3)
    model = VMA(TINY)
    with torch.no_grad():
        model.e_prior.mul_(10.0)
    s, k, reps = TINY.image_size, 3, 8000
    m, x = _bits(1, 3, 1, s, s), _bits(1, 1, s, s)
    table = torch.tensor([-2.0, 1.0, -5.0])
    _with_table(model, table)
    params = _address_params(model)

    log_q, log_p = _exact_log_probs(model, x, m)
    exact = torch.autograd.grad(_expected_bound(log_q, log_p, table, k), params)
    loss, _ = model.vimco_loss(x.expand(reps, -1, -1, -1), m, None, k)  # mean over reps draws
    estimate = torch.autograd.grad(-loss, params)

    # h_q only reaches the bound through the sampled addresses: without the score-function term
    # (or with a biased baseline) its gradient points the wrong way, so check it on its own too.
    n_query = sum(p.numel() for p in model.h_query.parameters())
    g_exact = torch.cat([g.flatten() for g in exact])
    g_est = torch.cat([g.flatten() for g in estimate])
    for name, sl in (
        ("all", slice(None)),
        ("h_q", slice(model.e_prior.numel(), model.e_prior.numel() + n_query)),
    ):
        cosine = torch.nn.functional.cosine_similarity(g_exact[sl], g_est[sl], dim=0).item()
        rel_err = ((g_est[sl] - g_exact[sl]).norm() / g_exact[sl].norm()).item()
        assert cosine > 0.95 and rel_err < 0.15, (name, cosine, rel_err)


def test_wake_update_moves_q_toward_the_posterior() -> None:
    """With many samples the wake update's gradient for q(a|x) is that of sum_a p(a|x, M) log q(a|x);
    the prior's gradient stays VIMCO's."""
    torch.manual_seed(5)
    model = VMA(TINY)
    s, k, reps = TINY.image_size, 64, 400
    m, x = _bits(1, 3, 1, s, s), _bits(1, 1, s, s)
    table = torch.tensor([-2.0, 1.0, -5.0])
    _with_table(model, table)
    log_q, log_p = _exact_log_probs(model, x, m)
    posterior = (log_p + table).softmax(0).detach()
    query = list(model.h_query.parameters())
    exact = torch.autograd.grad((posterior * log_q).sum(), query)
    xs = x.expand(reps, -1, -1, -1)
    wake, _ = model.vimco_loss(xs, m, None, k, address_update="wake")
    estimate = torch.autograd.grad(-wake, query)
    g_exact = torch.cat([g.flatten() for g in exact])
    g_est = torch.cat([g.flatten() for g in estimate])
    cosine = torch.nn.functional.cosine_similarity(g_exact, g_est, dim=0).item()
    rel_err = ((g_est - g_exact).norm() / g_exact.norm()).item()
    # VIMCO's estimate points the same way here but is ~40x shorter: its signal fades as K
    # tightens the bound, which is why the wake update exists.
    assert cosine > 0.95 and rel_err < 0.1, (cosine, rel_err)
    torch.manual_seed(6)
    g_wake = torch.autograd.grad(model.vimco_loss(xs, m, None, k, address_update="wake")[0], model.e_prior)
    torch.manual_seed(6)
    g_vimco = torch.autograd.grad(model.vimco_loss(xs, m, None, k)[0], model.e_prior)
    torch.testing.assert_close(g_wake, g_vimco)


# ------------------------------------------------------------------------- 4. train to recall
@pytest.mark.parametrize("address_update", ["vimco", "wake"])
def test_train_to_recall(address_update: str) -> None:
    """Paper fig. 2A: the queries are the memory entries; q(a|x) learns to point at x itself,
    by VIMCO's score-function term or by the wake update."""
    torch.manual_seed(4)
    config = VMAConfig(image_size=8, n_levels=1, channels=8, hidden_dim=64, match_dim=32, z_dim=4)
    model = VMA(config)
    steps, n_mem, n_slots, s = 500, 4, 8, config.image_size
    opt = torch.optim.Adam(model.parameters(), lr=5e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 1.0 - i / steps)
    for _ in range(steps):
        m = _bits(n_mem, n_slots, 1, s, s)  # fresh patterns each step: the matching must generalise
        x = m.flatten(0, 1)  # (G, A, 1, S, S) -> (G A, 1, S, S): every entry is a query
        loss, _ = model.vimco_loss(x, m.repeat_interleave(n_slots, 0), None, 4, address_update=address_update)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    m = _bits(16, n_slots, 1, s, s)
    with torch.no_grad():
        h_m, _ = model.embed_memory(m)
        q = model.address_logits(h_m, m[:, 0]).softmax(-1)  # query = slot 0 of each memory
    # Seeds 4-6 reach 0.95-0.97; dropping VIMCO's score-function term leaves q at chance (~0.25).
    assert q[:, 0].mean().item() > 0.9, q[:, 0]


# ------------------------------------------------------------------------------ 5. sampling
def test_sample_deterministic_and_restricted() -> None:
    torch.manual_seed(5)
    model = VMA(TINY)
    s, n_slots = TINY.image_size, 6
    h_m, pyramid = model.embed_memory(_bits(1, n_slots, 1, s, s))
    mask = torch.tensor([True, True, True, True, False, False])
    one = (h_m[0], [f[0] for f in pyramid])

    x1, a1 = model.sample(*one, mask, 64, generator=torch.Generator().manual_seed(7))
    x2, a2 = model.sample(*one, mask, 64, generator=torch.Generator().manual_seed(7))
    x3, _ = model.sample(*one, mask, 64, generator=torch.Generator().manual_seed(8))
    assert x1.shape == (64, s, s) and a1.shape == (64,)
    assert torch.equal(x1, x2) and torch.equal(a1, a2)
    assert not torch.equal(x1, x3)
    assert bool(((x1 >= 0) & (x1 <= 1)).all())
    assert set(a1.tolist()) <= {0, 1, 2, 3} and len(set(a1.tolist())) > 1

    restrict = torch.tensor([False, True, False, True, True, False])  # slot 4 is empty
    _, a = model.sample(*one, mask, 200, generator=torch.Generator().manual_seed(9), restrict=restrict)
    assert set(a.tolist()) == {1, 3}

    xb, ab = model.sample(h_m.expand(2, -1, -1), [f.expand(2, -1, -1, -1, -1) for f in pyramid], None, 5)
    assert xb.shape == (2, 5, s, s) and ab.shape == (2, 5)


@torch.inference_mode()
def test_anchored_samples_vary_around_the_exemplars_own_z() -> None:
    """anchor 0 is the prior's sampler; anchor 1 centres z on q(z|m_a, x = m_a); 0.5 halfway."""
    torch.manual_seed(8)
    model = VMA(TINY)
    s, n = TINY.image_size, 5
    m_a = _bits(n, 1, s, s)
    noise = torch.randn(n, TINY.z_dim)
    plain = model.sample_from(m_a, noise)
    torch.testing.assert_close(model.sample_from(m_a, noise, torch.zeros(n)), plain)
    mu_p, log_std, c_m, feats = model.z_prior(m_a)
    mu_self, _ = model.z_posterior(m_a, m_a)
    for share in (0.5, 1.0):
        z = mu_p + share * (mu_self - mu_p) + log_std.exp() * noise
        expected = torch.sigmoid(model.decode(z, c_m, feats)).squeeze(1)
        torch.testing.assert_close(model.sample_from(m_a, noise, torch.full((n,), share)), expected)
    mixed = model.sample_from(m_a, noise, torch.tensor([0.0, 1.0, 0.0, 1.0, 0.0]))  # per row
    torch.testing.assert_close(mixed[0::2], plain[0::2])
    assert not torch.allclose(mixed[1], plain[1]), "the anchor moved row 1's z"
