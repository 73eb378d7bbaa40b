"""VAE baseline for VMA: the same encoder/decoder architecture without memory (paper section 4.3).

::

    p(z)      = N(0, I)
    q(z | x)  = N(mu(x), sigma(x)^2)            encoder: vma.Embedder(c, 1, 2 z_dim)
    p(x | z)  = Bernoulli(sigmoid(dec(z)))      vma.Decoder's upsampling path, no skips, no c(m_a)

Trained on the IWAE bound with K samples (K = 1 is the ELBO)::

    log w_k = log p(x | z_k) + log p(z_k) - log q(z_k | x),   z_k ~ q(z | x)
    L_K     = log (1/K) sum_k w_k  <=  log p(x)

``memserve train vae`` trains it (models/train_vae.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.vma import Embedder, VMAConfig, gauss_kl, gauss_logpdf, pyramid_sizes


@dataclass
class VAEConfig:
    """Hyper-parameters; the fields mean what VMAConfig's fields of the same names mean."""

    image_size: int = 28
    channels: int = 32
    n_levels: int = 3
    hidden_dim: int = 256
    z_dim: int = 64


def _vma_config(c: VAEConfig) -> VMAConfig:
    """The VMAConfig whose pyramid/MLP sizes vma.Embedder reads."""
    return VMAConfig(image_size=c.image_size, channels=c.channels, n_levels=c.n_levels,
                     hidden_dim=c.hidden_dim, z_dim=c.z_dim)  # fmt: skip


class PlainDecoder(nn.Module):
    """p(x | z): vma.Decoder with the memory skips and context removed: z -> top map -> upsample -> logits."""

    def __init__(self, c: VAEConfig) -> None:
        super().__init__()
        self.c = c
        self.sizes = pyramid_sizes(_vma_config(c))
        top, ch = self.sizes[-1], c.channels
        self.fc = nn.Linear(c.z_dim, ch * top * top)
        ups = []
        for level in reversed(range(c.n_levels)):
            s_out, s_in = self.sizes[level], self.sizes[level + 1]
            pad = s_out - (2 * s_in - 1)  # output_padding that restores the odd/even size
            ups.append(nn.ConvTranspose2d(ch, ch, 3, stride=2, padding=1, output_padding=pad))
        self.ups = nn.ModuleList(ups)
        self.out = nn.Conv2d(ch, 1, 3, padding=1)

    def forward(self, z: Tensor) -> Tensor:
        """z (N, z_dim) -> logits (N, 1, S, S)."""
        top = self.sizes[-1]
        y = F.relu(self.fc(z))
        y = y.view(-1, self.c.channels, top, top)  # (N, C s s) -> (N, C, s, s)
        for up in self.ups:
            y = F.relu(up(y))  # (N, C, s, s) -> (N, C, next finer s)
        return self.out(y)  # (N, C, S, S) -> (N, 1, S, S)


class VAE(nn.Module):
    """Memory-less VAE with VMA's encoder and decoder architecture; see the module docstring."""

    def __init__(self, config: VAEConfig) -> None:
        super().__init__()
        c = config
        assert c.image_size >= 4 and c.n_levels >= 1, "image too small for the pyramid"
        assert c.channels > 0 and c.z_dim > 0, "sizes must be positive"
        self.config = c
        self.encoder = Embedder(_vma_config(c), 1, 2 * c.z_dim)  # x -> q(z|x) mean, log std
        self.decoder = PlainDecoder(c)

    def _check(self, x: Tensor) -> None:
        s = self.config.image_size
        assert x.dim() == 4 and x.shape[1:] == (1, s, s), f"x must be (B, 1, {s}, {s})"

    def posterior(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """q(z|x): mean and log std, each (B, z_dim)."""
        self._check(x)
        mu, log_std = self.encoder(x).chunk(2, dim=-1)  # (B, 2 z) -> 2 x (B, z)
        return mu, log_std

    def _log_weights(self, x: Tensor, k: int, generator: torch.Generator | None = None) -> Tensor:
        """log w (B, K) for K reparameterised z ~ q(z|x)."""
        mu, log_std = self.posterior(x)
        b, d = mu.shape
        eps = torch.randn(b, k, d, generator=generator, device=mu.device, dtype=mu.dtype)
        z = mu.unsqueeze(1) + log_std.exp().unsqueeze(1) * eps  # (B, 1, z) -> (B, K, z)
        x_k = x.unsqueeze(1).expand(b, k, *x.shape[1:]).flatten(0, 1)  # (B, 1, S, S) -> (B K, 1, S, S)
        logits = self.decoder(z.flatten(0, 1))  # (B, K, z) -> (B K, z) -> (B K, 1, S, S)
        log_px = -F.binary_cross_entropy_with_logits(logits, x_k, reduction="none").sum((1, 2, 3))
        log_px = log_px.view(b, k)  # (B K,) -> (B, K)
        zeros = torch.zeros_like(mu).unsqueeze(1)  # (B, 1, z): prior mean and log std
        log_q = gauss_logpdf(z, mu.unsqueeze(1), log_std.unsqueeze(1))  # (B, 1, z) vs (B, K, z) -> (B, K)
        return log_px + gauss_logpdf(z, zeros, zeros) - log_q

    def iwae_loss(self, x: Tensor, k: int) -> tuple[Tensor, Tensor]:
        """(loss to minimise: -mean_b L_K, scalar; L_K per row (B,), detached); k = 1 is the ELBO."""
        assert k >= 1, "k must be positive"
        bound = torch.logsumexp(self._log_weights(x, k), dim=-1) - math.log(k)  # (B,)
        return -bound.mean(), bound.detach()

    @torch.inference_mode()
    def log_likelihood_bound(
        self, x: Tensor, k: int, chunk: int = 1024, generator: torch.Generator | None = None
    ) -> Tensor:
        """L_K <= log p(x) per row (B,), in nats; at most ``chunk`` rows x samples per pass."""
        assert k >= 1 and chunk >= 1, "k and chunk must be positive"
        per = max(1, chunk // x.shape[0])  # samples per pass
        parts = [self._log_weights(x, min(per, k - i), generator) for i in range(0, k, per)]
        return torch.logsumexp(torch.cat(parts, dim=-1), dim=-1) - math.log(k)  # K x (B,) -> (B,)

    @torch.inference_mode()
    def kl_z(self, x: Tensor) -> Tensor:
        """Analytic KL(q(z|x) || N(0, I)) per row (B,), in nats."""
        mu, log_std = self.posterior(x)
        return gauss_kl(mu, log_std, torch.zeros_like(mu), torch.zeros_like(log_std))

    @torch.inference_mode()
    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """z ~ N(0, I), Bernoulli means of p(x|z): (n, S, S)."""
        dev = self.decoder.fc.weight.device
        z = torch.randn(n, self.config.z_dim, generator=generator, device=dev)
        return torch.sigmoid(self.decoder(z)).squeeze(1)  # (n, 1, S, S) -> (n, S, S)
