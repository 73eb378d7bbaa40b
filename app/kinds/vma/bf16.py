"""A VMA engine whose decoder runs in bfloat16 (`models.vma_bf16`); the rest is its base's.

The base is either backend's engine (the PyTorch module or the ONNX graphs). The bound and the
samples are composed here from the base's z_prior and z_posterior and the bfloat16 decoder, so
the fused ``log_weight`` graph is not used; z_prior's pyramid comes back already in the
decoder's dtype and layout, which is how the worker's prior cache keeps it (half the bytes).
"""

from __future__ import annotations

import torch
from torch import Tensor

from app.kinds.vma.memory import VMAEngine
from models.vma import VMA, Prior, candidate_noise, decode_samples, importance_log_weights, single_log_weights
from models.vma_bf16 import Bf16Decoder


class Bf16Decoding:
    """``base`` with its decoder replaced by a bfloat16 copy of ``model``'s."""

    def __init__(self, base: VMAEngine, model: VMA) -> None:
        self.base = base
        self.config = base.config
        self.decoder = Bf16Decoder(model.decoder)

    def memory_embedding(self, m: Tensor) -> Tensor:
        return self.base.memory_embedding(m)

    def query_embedding(self, x: Tensor) -> Tensor:
        return self.base.query_embedding(x)

    def similarity(self, h_m: Tensor, e: Tensor) -> Tensor:
        return self.base.similarity(h_m, e)

    def prior_query(self) -> Tensor:
        return self.base.prior_query()

    def z_prior(self, m_a: Tensor) -> Prior:
        mu, log_std, c_m, feats = self.base.z_prior(m_a)
        return mu, log_std, c_m, Bf16Decoder.maps(feats)

    def z_posterior(self, x: Tensor, m_a: Tensor) -> tuple[Tensor, Tensor]:
        return self.base.z_posterior(x, m_a)

    def decode(self, z: Tensor, c_m: Tensor, feats: list[Tensor]) -> Tensor:
        return self.decoder(z, c_m, feats)

    def log_weight(self, x: Tensor, m_a: Tensor, eps: Tensor) -> Tensor:
        return single_log_weights(self, x, m_a, eps)

    def candidate_log_weights(
        self, x: Tensor, m_a: Tensor, samples: int, generator: torch.Generator | None = None,
        eps: Tensor | None = None, prior: Prior | None = None,
    ) -> Tensor:  # fmt: skip
        """As `VMA.candidate_log_weights`, with the bfloat16 decoder."""
        eps = candidate_noise(eps, x, m_a, samples, self.config.z_dim, generator)
        return importance_log_weights(self, x, m_a, eps, prior)

    def sample_from(self, m_a: Tensor, noise: Tensor, anchor: Tensor | None = None) -> Tensor:
        """As `VMA.sample_from`, with the bfloat16 decoder."""
        return decode_samples(self, m_a, noise, anchor)
