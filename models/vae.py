"""VAE baseline for VMA: the same encoder/decoder architecture without memory (paper section 4.3).

::

    p(z)      = N(0, I)
    q(z | x)  = N(mu(x), sigma(x)^2)            encoder: vma.Embedder(c, 1, 2 z_dim)
    p(x | z)  = Bernoulli(sigmoid(dec(z)))      vma.Decoder's upsampling path, no skips, no c(m_a)

Trained on the IWAE bound with K samples (K = 1 is the ELBO)::

    log w_k = log p(x | z_k) + log p(z_k) - log q(z_k | x),   z_k ~ q(z | x)
    L_K     = log (1/K) sum_k w_k  <=  log p(x)

``memserve train vae --data PATH`` trains it on the background alphabets' training characters
(the split and rotations VMA trains on) with batch 32, K = 4 and VMA's learning-rate schedule,
and keeps the weights with the best held-out K = 16 bound.
"""

from __future__ import annotations

import argparse
import math
import shlex
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from models.vma import Embedder, VMAConfig, _gauss_logpdf, _scales, gauss_kl


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
        self.sizes = _scales(_vma_config(c))
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
        log_q = _gauss_logpdf(z, mu.unsqueeze(1), log_std.unsqueeze(1))  # (B, 1, z) vs (B, K, z) -> (B, K)
        return log_px + _gauss_logpdf(z, zeros, zeros) - log_q

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


# ---------------------------------------------------------------------------- training
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="memserve train vae", description=__doc__.split("\n")[0])
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
    from models.checkpoint import state_tensors
    from models.train_vma import lr_at  # VMA's warm-up + cosine schedule

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


def train_main(argv: list[str]) -> int:
    """``memserve train vae ...``; ``argv`` starts with ``vae``. Writes ``<out>/<name>.*``."""
    from models.checkpoint import save_checkpoint
    from models.data.omniglot import load_omniglot, split_characters, with_rotations

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
