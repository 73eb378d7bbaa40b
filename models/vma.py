"""VMA: Variational Memory Addressing in generative models (Bornschein et al., NeurIPS 2017).

A VAE with a discrete latent address ``a`` into a memory ``M = {m_1 .. m_A}`` of exemplars::

    p(x | M)   = sum_a p(a | M) ∫ p(z | m_a) p(x | z, m_a) dz
    p(a | M)   ∝ exp S(m_a, e_p)                       learned query point e_p, shares h
    q(a | x)   ∝ exp S(m_a, x)
    S(m_a, x)  = <h(m_a), h_q(x)> / ||h(m_a)||          (paper eq. 5-6)
    p(z | m_a) = N(mu_p(m_a), sigma_p(m_a)^2)          conditional Gaussian prior
    q(z | m_a, x) = N(mu_q(x, m_a), sigma_q(x, m_a)^2)
    p(x | z, m_a) = Bernoulli(sigmoid(dec(z, pyramid(m_a))))

Training maximises the K-sample bound (paper eq. 7), a_k ~ q(a|x), z_k ~ q(z|m_{a_k}, x)::

    log w_k = log p(x | z_k, m_{a_k}) + log p(z_k | m_{a_k}) - log q(z_k | m_{a_k}, x)
              + log p(a_k | M) - log q(a_k | x)
    L_K     = log (1/K) sum_k w_k  <=  log p(x | M)

and its gradient with VIMCO (paper eq. 8; Mnih & Rezende 2016): z is reparameterised, the
discrete a gets the score-function term with the leave-one-out learning signal
``L_K - L_K^{-k}``, where ``L_K^{-k}`` is L_K with log w_k replaced by the mean of the other
K - 1 log-weights. Everything is computed in log space with logsumexp; nothing is clamped.

Choices the paper leaves open, and what this implementation does:

* **Separate trunks for h and h_q.** The memory embedding h(m_a) and the query embedding
  h_q(x) have the same architecture (conv pyramid + MLP into ``match_dim``) but separate
  weights: memory entries and queries play different roles (in few-shot use a query is a
  new drawing, not a copy), and the paper's section 4.2 only says "the same architecture".
  The prior's query point e_p lives in the same matching space and shares h (paper).
* **h_q starts as a copy of h** and is trained apart: by Cauchy-Schwarz, S(m_a, m_a) >=
  S(m_b, m_a) at initialisation, so a query equal to an exemplar already points at it and
  VIMCO sharpens an informative q(a|x) instead of first aligning two random embeddings (with
  random separate inits, recall training on random patterns stalled at uniform q).
* **Pixels enter every pyramid centred** (2x - 1): with {0, 1} inputs the mean intensity
  dominates the features and distinct exemplars start with nearly parallel embeddings.
* **Conv pyramid.** ``2 * n_levels`` 3x3 convs, every second one with stride 2 (28 -> 14 ->
  7 -> 4 for the default three levels), ReLU after each. The feature map after the first
  conv of each level and the top map are the "pyramid" the decoder's skips read.
* **Parameter tying (paper 4.2).** One generative pyramid over m_a feeds p(z|m_a) (MLP on its
  top map) and the decoder (a ``z_dim`` vector from its top map, plus the skips). q(z|m_a, x)
  has its own pyramid over the 2-channel image [x, m_a].
* **Decoder skips.** The decoder maps [z, c(m_a)] to the top resolution and upsamples with
  3x3 transposed convs; before each one the pyramid map of m_a at that scale is concatenated,
  and a last 3x3 conv on [up, finest map] gives the pixel logits.
* **Decoder warp (``decoder_warp``, beyond the paper).** Before the decoder reads m_a's
  pyramid, every map is rescaled and shifted along each axis (optionally slanted too,
  ``warp_slant``) by amounts a linear map of [z, c(m_a)] chooses, so a drawing that is the
  exemplar drawn smaller or elsewhere can copy its strokes (``AxisWarp``). Off by default; it
  starts at the identity when added to a trained model.
* **Gaussians** are parameterised by mean and log standard deviation (no clamps).
* **Memory layout: per-row memories with a mask.** ``m`` is (B, A, 1, S, S) with a bool
  ``mask`` (B, A), False = empty slot: its address logit is -inf, so it gets q(a|x) = 0,
  p(a|M) = 0, is never sampled and contributes nothing. Serving pads per-session memories of
  different sizes to a common A. A memory shared by the whole batch (the paper's training
  setup) is passed with leading dim 1 and broadcast, so it is embedded only once.
* **Classification** p(c|x) ≈ sum_{a: label(a) = c} q(a|x) (paper section 4.3); the
  importance-weighted variant and novelty thresholds are left to the caller.
* **The prior over addresses** is learned (paper); the empty-memory case is an error: every
  row must have at least one filled slot.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.vma_addressing import Conv4Embedder

_LOG_2PI = math.log(2.0 * math.pi)


@dataclass
class VMAConfig:
    """Hyper-parameters of a VMA model; the defaults train on a CPU."""

    image_size: int = 28  # S; Bernoulli pixels, one channel
    channels: int = 32  # feature maps per conv layer
    n_levels: int = 3  # stride-2 convs: 28 -> 14 -> 7 -> 4
    hidden_dim: int = 256  # MLP hidden units after the pyramids
    match_dim: int = 128  # h space of the addressing similarity
    z_dim: int = 64
    k_train: int = 4  # VIMCO samples per query (paper: K = 4)
    # Addressing nets h, h_q (models.vma_addressing): "pyramid" (versions 1-2) or "conv4".
    address_net: str = "pyramid"
    address_channels: int = 64  # conv4's feature maps
    frame_span: int = 0  # conv4 only: re-frame drawings so the ink spans this many px (0: off)
    # The decoder reads m_a's pyramid rescaled and shifted by amounts [z, c(m_a)] choose,
    # and with warp_slant also slanted (rows shifted in proportion to their height).
    decoder_warp: bool = False
    warp_slant: bool = False


def pyramid_sizes(c: VMAConfig) -> list[int]:
    """Spatial size at each pyramid level, finest first, top last: 28 -> [28, 14, 7, 4]."""
    sizes = [c.image_size]
    for _ in range(c.n_levels):
        sizes.append((sizes[-1] + 1) // 2)  # 3x3 conv, stride 2, padding 1
    return sizes


class ConvPyramid(nn.Module):
    """Downscaling 3x3 convs; returns the map after the first conv of each level, then the top map."""

    def __init__(self, c: VMAConfig, in_channels: int) -> None:
        super().__init__()
        layers = []
        for level in range(c.n_levels):
            cin = in_channels if level == 0 else c.channels
            layers.append(nn.Conv2d(cin, c.channels, 3, stride=1, padding=1))
            layers.append(nn.Conv2d(c.channels, c.channels, 3, stride=2, padding=1))
        self.layers = nn.ModuleList(layers)

    def forward(self, x: Tensor) -> list[Tensor]:
        # Pixels in {0, 1} centred to {-1, 1}: otherwise the shared mean intensity dominates every
        # feature and distinct exemplars start with nearly parallel embeddings.
        x = 2.0 * x - 1.0
        feats = []
        for i, layer in enumerate(self.layers):
            x = F.relu(layer(x))
            if i % 2 == 0:
                feats.append(x)  # full resolution of this level: a skip source
        feats.append(x)  # top map
        return feats


class Embedder(nn.Module):
    """Image -> vector: conv pyramid, flatten the top map, one-hidden-layer MLP."""

    def __init__(self, c: VMAConfig, in_channels: int, out_dim: int) -> None:
        super().__init__()
        top = pyramid_sizes(c)[-1]
        self.pyramid = ConvPyramid(c, in_channels)
        self.mlp = nn.Sequential(
            nn.Linear(c.channels * top * top, c.hidden_dim), nn.ReLU(), nn.Linear(c.hidden_dim, out_dim)
        )

    def head(self, top: Tensor) -> Tensor:
        return self.mlp(top.flatten(1))  # (N, C, s, s) -> (N, C s s) -> (N, out)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.pyramid(x)[-1])


class AxisWarp(nn.Module):
    """Rescale, shift and optionally slant maps by amounts chosen per row: the decoder's skips from m_a.

    Drawings of one character by different people differ by a shift, a size or a slant more
    than by their strokes, and 3x3 convolutions move a stroke by a pixel or two only. With the
    warp, z can say "this exemplar, smaller, further left and leaning", and the decoder copies
    m_a's strokes where they belong. It starts as the identity (zero weights), so a model
    trained without it computes exactly what it did.

    Output pixel (row i, column k) reads the input bilinearly (border padding, as
    ``grid_sample`` would) at y = t2 v_i + t3 and x = t0 u_k + t1 + t4 v_i, in normalised
    units, t4 being the slant. Without rotation the resampling is separable: one (s, s)
    interpolation matrix per axis (with a slant, one per row for the columns), applied as
    matrix products, which ONNX Runtime runs several times faster than its ``GridSample``.
    """

    def __init__(self, in_dim: int, slant: bool) -> None:
        super().__init__()
        self.slant = slant
        self.theta = nn.Linear(in_dim, 5 if slant else 4)
        nn.init.zeros_(self.theta.weight)
        nn.init.zeros_(self.theta.bias)
        identity = [1.0, 0.0, 1.0, 0.0] + ([0.0] if slant else [])
        self.register_buffer("identity", torch.tensor(identity), persistent=False)

    def transforms(self, v: Tensor) -> Tensor:
        """v (N, in_dim) -> (N, 4 or 5): t0 .. t3 (and the slant t4) of the class docstring."""
        return self.identity + self.theta(v)

    @staticmethod
    def _weights(src: Tensor, s: int) -> Tensor:
        """Normalised source coordinates (..., s) -> bilinear weights (..., s, s) over s input pixels."""
        pix = torch.arange(s, dtype=src.dtype, device=src.device)
        at = (((src + 1) * s - 1) / 2).clamp(0, s - 1)  # input pixel coordinate, border padding
        return (1 - (at.unsqueeze(-1) - pix).abs()).relu()  # (..., s, 1) - (s,) -> (..., s, s)

    def forward(self, f: Tensor, t: Tensor) -> Tensor:
        """f (N, C, s, s), t as ``transforms`` gives -> f resampled (N, C, s, s)."""
        s = f.shape[-1]
        t = t.to(f.dtype)
        u = (2 * torch.arange(s, dtype=f.dtype, device=f.device) + 1) / s - 1  # pixel centres
        n, c = f.shape[:2]
        w_y = self._weights(t[:, 2:3] * u + t[:, 3:4], s)  # (N, s, s)
        x_src = t[:, 0:1] * u + t[:, 1:2]  # (N, s) per output column
        if not self.slant:
            # One (C s, s) @ (s, s) product per row of the batch for each axis, the maps' last two
            # dims swapped between them: far fewer, larger products than one per map and channel.
            w_x = self._weights(x_src, s)  # (N, s, s)
            g = f.reshape(n, c * s, s) @ w_x.transpose(1, 2)  # columns: (N, C s_j, s_l) -> (N, C s_j, s_k)
            g = g.view(n, c, s, s).transpose(2, 3).reshape(n, c * s, s)  # (N, C s_k, s_j)
            g = g @ w_y.transpose(1, 2)  # rows: (N, C s_k, s_j) -> (N, C s_k, s_i)
            return g.view(n, c, s, s).transpose(2, 3)  # (N, C, s_i, s_k)
        g = w_y.unsqueeze(1) @ f  # rows resampled: (N, 1, s, s) @ (N, C, s, s) -> (N, C, s, s)
        x_src = x_src.unsqueeze(1) + (t[:, 4:5] * u).unsqueeze(-1)  # (N, 1, s) + (N, s, 1) -> (N, s_i, s_k)
        w_x = self._weights(x_src, s)  # (N, s_i, s_k, s_l)
        rows = g.transpose(1, 2) @ w_x.transpose(-1, -2)  # (N, s_i, C, s_l) @ (N, s_i, s_l, s_k)
        return rows.transpose(1, 2)  # (N, s_i, C, s_k) -> (N, C, s_i, s_k)


class Decoder(nn.Module):
    """p(x | z, m_a): [z, c(m_a)] -> top map, upsampled with skips from m_a's pyramid -> logits."""

    def __init__(self, c: VMAConfig) -> None:
        super().__init__()
        self.c = c
        self.sizes = pyramid_sizes(c)
        top = self.sizes[-1]
        ch = c.channels
        self.fc = nn.Linear(2 * c.z_dim, ch * top * top)
        ups = []
        for level in reversed(range(c.n_levels)):
            s_out, s_in = self.sizes[level], self.sizes[level + 1]
            pad = s_out - (2 * s_in - 1)  # output_padding that restores the odd/even size
            ups.append(nn.ConvTranspose2d(2 * ch, ch, 3, stride=2, padding=1, output_padding=pad))
        self.ups = nn.ModuleList(ups)
        self.out = nn.Conv2d(2 * ch, 1, 3, padding=1)
        self.warp = AxisWarp(2 * c.z_dim, c.warp_slant) if c.decoder_warp else None
        # Channels-last maps throughout when set (see models.vma_bf16): oneDNN's bfloat16
        # kernels work in that layout and would otherwise reorder every map twice.
        self.channels_last = False

    def forward(self, z: Tensor, c_m: Tensor, feats: list[Tensor]) -> Tensor:
        """z, c_m (N, z_dim); feats finest-first as ConvPyramid returns them -> logits (N, 1, S, S)."""
        top = self.sizes[-1]
        zc = torch.cat([z, c_m], dim=-1)
        y = F.relu(self.fc(zc))
        y = y.view(-1, self.c.channels, top, top)  # (N, C s s) -> (N, C, s, s)
        if self.channels_last:
            y = y.contiguous(memory_format=torch.channels_last)
        skips = feats[::-1]  # top map first, then coarse to fine
        if self.warp is not None:
            t = self.warp.transforms(zc)
            skips = [self.warp(f, t) for f in skips]
        for up, skip in zip(self.ups, skips[:-1], strict=True):
            y = F.relu(up(torch.cat([y, skip], dim=1)))  # (N, 2C, s, s) -> (N, C, next finer s)
        return self.out(torch.cat([y, skips[-1]], dim=1))  # (N, 2C, S, S) -> (N, 1, S, S)


def gauss_logpdf(z: Tensor, mu: Tensor, log_std: Tensor) -> Tensor:
    """Diagonal Gaussian log density summed over the last dim."""
    return (-0.5 * ((z - mu) / log_std.exp()).square() - log_std - 0.5 * _LOG_2PI).sum(-1)


def bernoulli_logpmf(logits: Tensor, x: Tensor) -> Tensor:
    """log p(x) of Bernoulli pixels with these logits, summed over (C, H, W): (N, C, H, W) -> (N,).

    Written out, not `F.binary_cross_entropy_with_logits`: ONNX Runtime's graph of that gives
    -inf for a confident pixel that is wrong, where this form stays finite.
    """
    log1p_exp = (-logits.abs()).exp().log1p()  # log(1 + e^-|l|) without overflow
    return (x * logits - logits.clamp(min=0) - log1p_exp).sum((1, 2, 3))


def gauss_kl(mu_q: Tensor, ls_q: Tensor, mu_p: Tensor, ls_p: Tensor) -> Tensor:
    """KL(N(mu_q, e^ls_q) || N(mu_p, e^ls_p)) of diagonal Gaussians, summed over the last dim."""
    var_ratio = (2 * (ls_q - ls_p)).exp()
    return 0.5 * (var_ratio + ((mu_q - mu_p) / ls_p.exp()).square() - 1.0 - 2 * (ls_q - ls_p)).sum(-1)


def label_scores(p: Tensor, labels: Tensor, n_classes: int) -> Tensor:
    """Per-class sums of address probabilities: p (B, T), labels (B or 1, T) -> (B, n_classes)."""
    scores = torch.zeros(p.shape[0], n_classes, dtype=p.dtype, device=p.device)
    return scores.scatter_add_(1, labels.expand_as(p), p)


def address_kl(log_q: Tensor, log_p: Tensor) -> Tensor:
    """KL(q(a|x) || p(a)) in nats (B,), from log q (B, A) and log p (B or 1, A)."""
    q = log_q.exp()
    # Empty slots have q = p = 0; where() keeps their 0 * (-inf - -inf) out of the sum.
    return torch.where(q > 0, q * (log_q - log_p), torch.zeros_like(q)).sum(-1)


def _gather_slots(t: Tensor, a: Tensor) -> Tensor:
    """t (B, A, *rest), a (B, K) -> (B * K, *rest): the slot each sampled address picks."""
    b, k = a.shape
    idx = a.view(b, k, *([1] * (t.dim() - 2))).expand(b, k, *t.shape[2:])  # (B, K) -> (B, K, *rest)
    return t.gather(1, idx).flatten(0, 1)  # (B, K, *rest) -> (B K, *rest)


def address_embedder(c: VMAConfig) -> nn.Module:
    """h or h_q: image (N, 1, S, S) -> (N, match_dim), of the kind ``c.address_net`` names."""
    if c.address_net == "conv4":
        return Conv4Embedder(c.image_size, c.address_channels, c.frame_span, c.match_dim)
    return Embedder(c, 1, c.match_dim)


class VMA(nn.Module):
    """Variational Memory Addressing; see the module docstring for equations and choices."""

    def __init__(self, config: VMAConfig) -> None:
        super().__init__()
        c = config
        assert c.image_size >= 4 and c.n_levels >= 1, "image too small for the pyramid"
        assert c.channels > 0 and c.z_dim > 0 and c.match_dim > 0, "sizes must be positive"
        assert c.k_train >= 2, "VIMCO needs at least two samples"
        assert c.address_net in ("pyramid", "conv4"), "address_net must be 'pyramid' or 'conv4'"
        assert c.frame_span == 0 or c.address_net == "conv4", "frame_span needs address_net='conv4'"
        assert c.decoder_warp or not c.warp_slant, "warp_slant needs decoder_warp"
        self.config = c
        self.h_mem = address_embedder(c)  # h(m_a)
        self.h_query = address_embedder(c)  # h_q(x)
        self.e_prior = nn.Parameter(torch.randn(c.match_dim) / math.sqrt(c.match_dim))  # e_p
        self.gen = Embedder(c, 1, 2 * c.z_dim)  # pyramid(m_a) -> p(z|m_a) mean, log std
        top = pyramid_sizes(c)[-1]
        self.gen_context = nn.Linear(c.channels * top * top, c.z_dim)  # c(m_a) for the decoder
        self.post = Embedder(c, 2, 2 * c.z_dim)  # [x, m_a] -> q(z|m_a, x) mean, log std
        self.decoder = Decoder(c)
        # h_q starts as a copy of h (trained apart afterwards): by Cauchy-Schwarz a query equal to
        # an exemplar then already scores highest on it, so addressing is informative from step 0
        # instead of waiting for two random embeddings to align.
        self.h_query.load_state_dict(self.h_mem.state_dict())

    # -------------------------------------------------------------- memory
    def _check_memory(self, m: Tensor) -> None:
        s = self.config.image_size
        assert m.dim() == 5 and m.shape[2:] == (1, s, s), f"m must be (B, A, 1, {s}, {s})"

    def embed_memory(self, m: Tensor) -> tuple[Tensor, list[Tensor]]:
        """m (B, A, 1, S, S) -> h_m (B, A, match_dim) and m's generative pyramid.

        The pyramid is a list of (B, A, C, s, s) maps, finest first, top last; together with
        h_m it is all that ``sample`` and ``address_logits`` need, so serving computes both
        once per exemplar and caches them.
        """
        self._check_memory(m)
        b, n_slots = m.shape[:2]
        flat = m.flatten(0, 1)  # (B, A, 1, S, S) -> (B A, 1, S, S)
        h_m = self.h_mem(flat).view(b, n_slots, -1)  # (B A, D) -> (B, A, D)
        feats = [f.view(b, n_slots, *f.shape[1:]) for f in self.gen.pyramid(flat)]  # (B A, ..) -> (B, A, ..)
        return h_m, feats

    def address_logits(self, h_m: Tensor, x: Tensor | None = None, mask: Tensor | None = None) -> Tensor:
        """Logits of q(a|x) (B, A), or of the prior p(a|M) when x is None; empty slots -> -inf.

        h_m (B, A, D) or (1, A, D) for a memory shared by every row of x.
        """
        assert h_m.dim() == 3 and h_m.shape[2] == self.config.match_dim, "h_m must be (B, A, match_dim)"
        if x is None:
            e = self.e_prior.view(1, -1)  # (D,) -> (1, D)
        else:
            assert x.dim() == 4 and x.shape[1] == 1, "x must be (B, 1, S, S)"
            e = self.h_query(x)  # (B, D)
        logits = similarity(h_m, e)  # (B, A)
        if mask is not None:
            assert mask.dim() == 2 and mask.shape[-1] == h_m.shape[1], "mask must be (B, A)"
            logits = logits.expand(max(logits.shape[0], mask.shape[0]), -1)  # shared memory: (1, A) -> (B, A)
            assert bool(mask.any(dim=-1).all()), "every row needs at least one filled slot"
            logits = logits.masked_fill(~mask, float("-inf"))
        return logits

    # ----------------------------------------------------------- z and x
    def _z_prior(self, feats: list[Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        """Top map of m_a's pyramid (N, C, s, s) -> p(z|m_a) mean, log std and decoder context c(m_a)."""
        top = feats[-1]
        mu, log_std = self.gen.head(top).chunk(2, dim=-1)  # (N, 2 z) -> 2 x (N, z)
        return mu, log_std, self.gen_context(top.flatten(1))

    def log_likelihood_terms(
        self, x: Tensor, m: Tensor, mask: Tensor | None, a: Tensor, beta: float = 1.0, hide: float = 0.0
    ) -> Tensor:
        """log p(x|z, m_a) + log p(z|m_a) - log q(z|m_a, x), one reparameterised z ~ q each.

        x (B, 1, S, S), m (B or 1, A, 1, S, S), a (B, K) addresses -> (B, K). ``hide`` (training
        only) is the share of queries (all K samples of each) whose decoder gets no skips or
        context from m_a.
        """
        self._check_memory(m)
        b, k = a.shape
        assert x.shape[0] == b, "x and a batch sizes differ"
        if mask is not None:
            assert bool(mask.expand(b, -1).gather(1, a).all()), "an address points at an empty slot"
        m_a = _gather_slots(m.expand(b, *m.shape[1:]), a)  # (B K, 1, S, S)
        x_k = x.unsqueeze(1).expand(b, k, *x.shape[1:]).flatten(0, 1)  # (B, 1, S, S) -> (B K, 1, S, S)
        feats = self.gen.pyramid(m_a)
        mu_p, log_std_p, c_m = self._z_prior(feats)
        mu_q, log_std_q = self.post(torch.cat([x_k, m_a], dim=1)).chunk(2, dim=-1)  # (B K, z) each
        z = mu_q + log_std_q.exp() * torch.randn_like(mu_q)
        dec_feats = feats
        if hide > 0:
            # The decoder's skips let it copy m_a and ignore z (z collapses); without them for a
            # share of queries it must draw x from z, so z learns how drawings vary. Whole rows:
            # a hidden sample among seen ones of the same query would get ~0 importance weight
            # and so no gradient.
            keep = (torch.rand(b, 1, device=x.device) >= hide).to(x.dtype).repeat_interleave(k, 0)  # (B K, 1)
            dec_feats = [f * keep.view(-1, 1, 1, 1) for f in feats]  # (B K, C, s, s) each
            c_m = c_m * keep
        logits = self.decoder(z, c_m, dec_feats)
        log_px = bernoulli_logpmf(logits, x_k)
        # beta < 1 (training's KL warm-up only) discounts z's KL term; beta = 1 is the bound.
        terms = log_px + beta * (gauss_logpdf(z, mu_p, log_std_p) - gauss_logpdf(z, mu_q, log_std_q))
        return terms.view(b, k)  # (B K,) -> (B, K)

    # ------------------------------------------------------------ bounds
    def _log_weights(
        self, x: Tensor, m: Tensor, mask: Tensor | None, k: int, beta: float = 1.0, hide: float = 0.0
    ) -> tuple[Tensor, Tensor]:
        """K samples a ~ q(a|x), z ~ q(z|m_a, x): log w (B, K) and log q(a_k|x) (B, K)."""
        h_m = self.h_mem(m.flatten(0, 1)).view(*m.shape[:2], -1)  # (B A, D) -> (B, A, D)
        log_q = self.address_logits(h_m, x, mask).log_softmax(-1)  # (B, A)
        log_p = self.address_logits(h_m, None, mask).log_softmax(-1)  # (B or 1, A)
        a = torch.multinomial(log_q.detach().exp(), k, replacement=True)  # (B, K)
        log_qa = log_q.gather(1, a)
        log_pa = log_p.expand_as(log_q).gather(1, a)
        return self.log_likelihood_terms(x, m, mask, a, beta, hide) + log_pa - log_qa, log_qa

    def vimco_loss(
        self,
        x: Tensor,
        m: Tensor,
        mask: Tensor | None,
        k: int | None = None,
        beta: float = 1.0,
        hide: float = 0.0,
        address_update: str = "vimco",
    ) -> tuple[Tensor, Tensor]:
        """VIMCO surrogate (scalar, mean over rows; minimise it) and the bound L_K per row, detached.

        The surrogate's gradient is the VIMCO estimator of grad L_K (paper eq. 8):
        sum_k w~_k grad log w_k + sum_k (L_K - L_K^{-k}) grad log q(a_k|x).
        ``beta`` < 1 scales z's KL term inside log w (a KL warm-up for the first steps of
        training: with the decoder's skips from m_a, a full KL from step 0 lets z collapse);
        the result is then not a bound. beta = 1 is the objective. ``hide`` > 0 hides m_a
        from the decoder for that share of queries (see ``log_likelihood_terms``).

        ``address_update="wake"`` trains q(a|x) by the wake update instead: sum_k w~_k grad
        log q(a_k|x), which moves q(a|x) toward the slots that explain x best, the
        self-normalised estimate of the posterior p(a|x, M). It has a far smaller variance
        than VIMCO's score-function term, which with a few samples barely tells apart drawings
        of one character; every other gradient is VIMCO's.
        """
        assert address_update in ("vimco", "wake"), "address_update must be 'vimco' or 'wake'"
        k = self.config.k_train if k is None else k
        assert k >= 2, "VIMCO needs at least two samples for its leave-one-out baseline"
        assert 0.0 <= beta <= 1.0, "beta must lie in [0, 1]"
        assert 0.0 <= hide < 1.0, "hide must lie in [0, 1)"
        log_w, log_qa = self._log_weights(x, m, mask, k, beta, hide)
        if address_update == "wake":
            # Same values; log q(a_k|x) inside log w no longer carries a gradient, so q(a|x)
            # gets the wake update alone.
            log_w = log_w + log_qa - log_qa.detach()
            bound = torch.logsumexp(log_w, dim=-1) - math.log(k)  # (B,)
            w_norm = log_w.detach().softmax(-1)  # w~_k (B, K)
            return -(bound + (w_norm * log_qa).sum(-1)).mean(), bound.detach()
        bound = torch.logsumexp(log_w, dim=-1) - math.log(k)  # (B,)
        lw = log_w.detach()
        mean_others = (lw.sum(-1, keepdim=True) - lw) / (k - 1)  # (B, K)
        # Row j of the (K, K) block is log w with entry j replaced by the mean of the others.
        eye = torch.eye(k, dtype=torch.bool, device=lw.device)
        loo = torch.where(eye, mean_others.unsqueeze(-1), lw.unsqueeze(1))  # (B, 1, K) -> (B, K, K)
        bound_loo = torch.logsumexp(loo, dim=-1) - math.log(k)  # (B, K)
        signal = bound.detach().unsqueeze(-1) - bound_loo  # (B, K)
        surrogate = bound + (signal * log_qa).sum(-1)
        return -surrogate.mean(), bound.detach()

    @torch.inference_mode()
    def kl_z(self, x: Tensor, m_a: Tensor) -> Tensor:
        """KL(q(z|m_a, x) || p(z|m_a)) in nats (N,), analytic, for paired x and m_a (N, 1, S, S)."""
        assert x.shape == m_a.shape and x.dim() == 4, "x and m_a must both be (N, 1, S, S)"
        mu_p, log_std_p, _ = self._z_prior(self.gen.pyramid(m_a))
        mu_q, log_std_q = self.post(torch.cat([x, m_a], dim=1)).chunk(2, dim=-1)  # (N, z) each
        return gauss_kl(mu_q, log_std_q, mu_p, log_std_p)

    @torch.inference_mode()
    def log_likelihood_bound(self, x: Tensor, m: Tensor, mask: Tensor | None, k: int) -> Tensor:
        """Importance-sampled bound L_K <= log p(x|M) per row (B,), in nats; K >= 1."""
        assert k >= 1, "k must be positive"
        log_w, _ = self._log_weights(x, m, mask, k)
        return torch.logsumexp(log_w, dim=-1) - math.log(k)

    # ----------------------------------------------------------- serving
    @torch.inference_mode()
    def classify(
        self, x: Tensor, h_m: Tensor, mask: Tensor | None, labels: Tensor, n_classes: int
    ) -> tuple[Tensor, Tensor]:
        """Class scores p(c|x) ≈ sum_{a: label a = c} q(a|x) (B, n_classes), and KL(q(a|x) || p(a|M)) (B,).

        labels (B or 1, A) int64 in [0, n_classes); labels of empty slots are ignored.
        """
        log_q = self.address_logits(h_m, x, mask).log_softmax(-1)  # (B, A)
        log_p = self.address_logits(h_m, None, mask).log_softmax(-1).expand_as(log_q)
        labels = labels.expand_as(log_q)
        if mask is not None:
            labels = labels.masked_fill(~mask.expand_as(labels), 0)  # q = 0 there: adds nothing
        assert bool(((labels >= 0) & (labels < n_classes)).all()), "labels must lie in [0, n_classes)"
        return label_scores(log_q.exp(), labels, n_classes), address_kl(log_q, log_p)

    @torch.inference_mode()
    def sample(
        self,
        h_m: Tensor,
        pyramid: list[Tensor],
        mask: Tensor | None,
        n: int,
        generator: torch.Generator | None = None,
        restrict: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """a ~ p(a|M) (restricted to slots where ``restrict`` is True), z ~ p(z|m_a), x ~ p(x|z, m_a).

        h_m and pyramid as ``embed_memory`` returns them, for B memories -> pixel probabilities
        (B, n, S, S) and addresses (B, n). One memory may be given without the batch dim
        (h_m (A, D), maps (A, C, s, s), mask/restrict (A,)); then the results are (n, S, S), (n,).
        Deterministic for a given ``generator``.
        """
        single = h_m.dim() == 2
        if single:
            h_m, pyramid = h_m.unsqueeze(0), [f.unsqueeze(0) for f in pyramid]  # add B = 1
            mask = None if mask is None else mask.unsqueeze(0)
            restrict = None if restrict is None else restrict.unsqueeze(0)
        b, n_slots = h_m.shape[:2]
        allowed = torch.ones(b, n_slots, dtype=torch.bool, device=h_m.device)
        allowed = allowed if mask is None else allowed & mask
        allowed = allowed if restrict is None else allowed & restrict
        probs = self.address_logits(h_m, None, allowed).softmax(-1)  # (B, A)
        a = torch.multinomial(probs, n, replacement=True, generator=generator)  # (B, n)
        feats = [_gather_slots(f, a) for f in pyramid]  # (B n, C, s, s) each
        noise = torch.randn(b * n, self.config.z_dim, generator=generator, device=h_m.device)
        x = self._decode_prior(feats, noise)
        s = self.config.image_size
        x = x.view(b, n, s, s)  # (B n, S, S) -> (B, n, S, S)
        return (x[0], a[0]) if single else (x, a)

    def _decode_prior(self, feats: list[Tensor], noise: Tensor) -> Tensor:
        """z = mu_p + sigma_p * noise ~ p(z|m_a), then Bernoulli means of p(x|z, m_a) (N, S, S)."""
        mu, log_std, c_m = self._z_prior(feats)
        return torch.sigmoid(self.decoder(mu + log_std.exp() * noise, c_m, feats)).squeeze(1)

    @torch.inference_mode()
    def sample_from(self, m_a: Tensor, noise: Tensor, anchor: Tensor | None = None) -> Tensor:
        """Samples given their exemplars: m_a (N, 1, S, S), noise (N, z_dim) -> pixel probabilities (N, S, S).

        Serving batches the exemplars picked for many sessions into one call; with the same
        noise and no ``anchor`` the result equals ``sample``'s for the same addresses.
        ``anchor`` (N,): see ``decode_samples``.
        """
        return decode_samples(self, m_a, noise, anchor)

    # The three parts serving composes (the ONNX backend runs the same parts as graphs).
    def z_prior(self, m_a: Tensor) -> tuple[Tensor, Tensor, Tensor, list[Tensor]]:
        """m_a (N, 1, S, S) -> p(z|m_a) mean and log std (N, z), decoder context c(m_a) (N, z), pyramid."""
        feats = self.gen.pyramid(m_a)
        mu, log_std, c_m = self._z_prior(feats)
        return mu, log_std, c_m, feats

    def z_posterior(self, x: Tensor, m_a: Tensor) -> tuple[Tensor, Tensor]:
        """x, m_a (N, 1, S, S) -> q(z|m_a, x) mean and log std, (N, z) each."""
        mu, log_std = self.post(torch.cat([x, m_a], dim=1)).chunk(2, dim=-1)  # (N, 2z) -> 2 x (N, z)
        return mu, log_std

    def decode(self, z: Tensor, c_m: Tensor, feats: list[Tensor]) -> Tensor:
        """Logits of p(x|z, m_a) (N, 1, S, S) from z, c(m_a) and m_a's pyramid as ``z_prior`` returns them."""
        return self.decoder(z, c_m, feats)

    def log_weight(self, x: Tensor, m_a: Tensor, eps: Tensor) -> Tensor:
        """One importance log weight per row (N,) for x, m_a (N, 1, S, S) and z's noise eps (N, z)."""
        return single_log_weights(self, x, m_a, eps)

    @torch.inference_mode()
    def memory_embedding(self, m: Tensor) -> Tensor:
        """h(m_a) (N, match_dim) for exemplars m (N, 1, S, S): computed once per exemplar and cached."""
        assert m.dim() == 4 and m.shape[1] == 1, "m must be (N, 1, S, S)"
        return self.h_mem(m)

    def similarity(self, h_m: Tensor, e: Tensor) -> Tensor:
        """S = <h(m_a), e> / ||h(m_a)||: h_m (A, D), e (N, D) query embeddings (or e_p) -> logits (N, A)."""
        return similarity(h_m, e)

    def prior_query(self) -> Tensor:
        """The learned query point e_p (1, match_dim) of the address prior p(a|M)."""
        return self.e_prior.view(1, -1)  # (D,) -> (1, D)

    @torch.inference_mode()
    def query_embedding(self, x: Tensor) -> Tensor:
        """h_q(x) (N, match_dim) for queries x (N, 1, S, S): what addressing compares with h(m_a)."""
        assert x.dim() == 4 and x.shape[1] == 1, "x must be (N, 1, S, S)"
        return self.h_query(x)

    @torch.inference_mode()
    def candidate_log_weights(
        self,
        x: Tensor,
        m_a: Tensor,
        samples: int,
        generator: torch.Generator | None = None,
        eps: Tensor | None = None,
        prior: Prior | None = None,
    ) -> Tensor:
        """log E_{z~q(z|m_a,x)}[p(x|z,m_a) p(z|m_a) / q(z|m_a,x)] per candidate, estimated with ``samples`` z.

        x (N, 1, S, S), m_a (N, T, 1, S, S): T candidate exemplars per query -> (N, T), in nats.
        Adding log p(a) gives log w_a; by Jensen each is a lower bound on average, so
        logsumexp over any subset of addresses bounds log p(x|M) from below (serving uses the
        top addresses under q(a|x), which carry nearly all of the mass). ``eps`` (N, T, K, z_dim)
        gives the standard normal noise of z explicitly (serving draws it per request, so a
        request's result does not depend on what else shares its batch). ``prior``: ``z_prior``
        of the N T candidates computed before (see `importance_log_weights`).
        """
        eps = candidate_noise(eps, x, m_a, samples, self.config.z_dim, generator)
        return importance_log_weights(self, x, m_a, eps, prior)


Prior = tuple[Tensor, Tensor, Tensor, list[Tensor]]  # z_prior's: mu, log std, c(m_a) (N, z); the pyramid


class VMAParts(Protocol):
    """The networks serving composes; `VMA` itself, or the ONNX backend's graphs of them."""

    def z_prior(self, m_a: Tensor) -> tuple[Tensor, Tensor, Tensor, list[Tensor]]: ...

    def z_posterior(self, x: Tensor, m_a: Tensor) -> tuple[Tensor, Tensor]: ...

    def decode(self, z: Tensor, c_m: Tensor, feats: list[Tensor]) -> Tensor: ...

    def log_weight(self, x: Tensor, m_a: Tensor, eps: Tensor) -> Tensor: ...


def unit_directions(h_m: Tensor) -> Tensor:
    """h(m_a) / ||h(m_a)||, the memory side of `similarity`: (A, D) -> (A, D)."""
    return h_m / h_m.norm(dim=-1, keepdim=True)


def similarity(h_m: Tensor, e: Tensor) -> Tensor:
    """S = <h(m_a), e> / ||h(m_a)||, the address logits: unit memory directions, the query's norm
    sets the sharpness. One memory h_m (A, D) for N query embeddings (or e_p) e (N, D) -> (N, A);
    or a memory per row, h_m (B|1, A, D) with e (B|1, D) -> (B, A)."""
    assert e.dim() == 2 and h_m.shape[-1] == e.shape[-1], "e must be (N, D), h_m (A, D) or (B, A, D)"
    if h_m.dim() == 2:
        return torch.matmul(e, unit_directions(h_m).T)  # (N, D) @ (D, A) -> (N, A)
    assert h_m.dim() == 3, "h_m must be (A, D) or (B, A, D)"
    dots = torch.matmul(h_m, e.unsqueeze(-1)).squeeze(-1)  # (B|1, A, D) @ (B|1, D, 1) -> (B, A)
    return dots / h_m.norm(dim=-1)


def decode_samples(parts: VMAParts, m_a: Tensor, noise: Tensor, anchor: Tensor | None = None) -> Tensor:
    """z = mu + sigma_p * noise, then Bernoulli means of p(x|z, m_a): (N, S, S).

    Without ``anchor`` (or where it is 0), mu = mu_p and z ~ p(z|m_a), the paper's sampler.
    ``anchor`` (N,) in [0, 1] moves each row's mu that share of the way to the mean of
    q(z|m_a, x = m_a), the z that redraws the exemplar itself: the samples then vary around the
    exemplar's own style instead of around the prior's average drawing of its character, which
    for a complex character is a blurred, rounded one. The spread stays the prior's.
    """
    assert m_a.dim() == 4 and noise.dim() == 2 and noise.shape[0] == m_a.shape[0], (
        "m_a must be (N, 1, S, S) and noise (N, z_dim)"
    )
    mu, log_std, c_m, feats = parts.z_prior(m_a)
    assert noise.shape == mu.shape, "noise must be (N, z_dim)"
    if anchor is not None and bool((anchor != 0).any()):
        assert anchor.shape == (m_a.shape[0],), "anchor must be (N,)"
        mu_self, _ = parts.z_posterior(m_a, m_a)
        mu = mu + anchor.to(mu.dtype).unsqueeze(-1) * (mu_self - mu)  # (N,) -> (N, 1)
    return torch.sigmoid(parts.decode(mu + log_std.exp() * noise, c_m, feats)).squeeze(1)


def candidate_noise(
    eps: Tensor | None, x: Tensor, m_a: Tensor, samples: int, z_dim: int, generator: torch.Generator | None
) -> Tensor:
    """The standard normal noise of z for ``candidate_log_weights``: ``eps`` when given (checked),
    else drawn (N, T, samples, z_dim) from ``generator`` on x's device and dtype."""
    assert samples >= 1, "samples must be positive"
    if eps is None:
        shape = (*m_a.shape[:2], samples, z_dim)  # (N, T, K, z)
        eps = torch.randn(shape, generator=generator, device=x.device, dtype=x.dtype)
    assert eps.shape[2] == samples, "eps must be (N, T, samples, z_dim)"
    return eps


def importance_log_weights(
    parts: VMAParts, x: Tensor, m_a: Tensor, eps: Tensor, prior: Prior | None = None
) -> Tensor:
    """log E_{z~q}[p(x|z,m_a) p(z|m_a) / q(z|m_a,x)] per candidate, with the noise of z given.

    x (N, 1, S, S), m_a (N, T, 1, S, S), eps (N, T, K, z_dim) -> (N, T); see
    ``VMA.candidate_log_weights``. ``prior``: what ``parts.z_prior`` gives for the N T candidates
    (rows in m_a's order), computed before: serving keeps it per exemplar, and then only
    q(z|m_a, x) and the decoder run here.
    """
    n, t = m_a.shape[:2]
    samples = eps.shape[2]
    assert x.shape[0] == n and m_a.shape[2:] == x.shape[1:], "x (N,1,S,S) and m_a (N,T,1,S,S) disagree"
    assert eps.shape[:3] == (n, t, samples), "eps must be (N, T, K, z_dim)"
    m_r = m_a.unsqueeze(2).expand(n, t, samples, *m_a.shape[2:]).flatten(0, 2)  # (N T K, 1, S, S)
    x_r = x.unsqueeze(1).expand(n, t * samples, *x.shape[1:]).flatten(0, 1)  # (N T K, 1, S, S)
    eps_r = eps.reshape(n * t * samples, -1)  # (N, T, K, z) -> (N T K, z)
    if prior is None:
        log_w = parts.log_weight(x_r, m_r, eps_r)
    else:
        mu, log_std, c_m, feats = (
            prior
            if samples == 1
            else (
                [f.repeat_interleave(samples, dim=0) for f in part]
                if isinstance(part, list)
                else part.repeat_interleave(samples, dim=0)
                for part in prior
            )
        )  # each (N T, ...) -> (N T K, ...); kept as they are (and in their layout) for K = 1
        assert mu.shape[0] == n * t * samples, "prior must have one row per candidate"
        log_w = single_log_weights(parts, x_r, m_r, eps_r, (mu, log_std, c_m, feats))
    log_w = log_w.view(n, t, samples)  # (N T K,) -> (N, T, K)
    return torch.logsumexp(log_w, dim=-1) - math.log(samples)


def single_log_weights(
    parts: VMAParts, x: Tensor, m_a: Tensor, eps: Tensor, prior: Prior | None = None
) -> Tensor:
    """log p(x|z,m_a) + log p(z|m_a) - log q(z|m_a,x) for z = mu_q + sigma_q * eps, one per row.

    x, m_a (N, 1, S, S), eps (N, z_dim) -> (N,). What `VMAParts.log_weight` computes, composed
    from the three parts; ``prior``, when given, is ``parts.z_prior(m_a)`` computed before.
    """
    mu_p, log_std_p, c_m, feats = parts.z_prior(m_a) if prior is None else prior
    mu_q, log_std_q = parts.z_posterior(x, m_a)
    assert eps.shape == mu_q.shape, "eps must be (N, z_dim)"
    z = mu_q + log_std_q.exp() * eps
    logits = parts.decode(z, c_m, feats)
    return bernoulli_logpmf(logits, x) + gauss_logpdf(z, mu_p, log_std_p) - gauss_logpdf(z, mu_q, log_std_q)
