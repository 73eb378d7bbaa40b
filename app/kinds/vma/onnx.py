"""VMA on ONNX Runtime: the exported graphs.

The arithmetic around the graphs (similarities, softmaxes, importance weights, label scores) is
the same PyTorch code the torch backend runs (`models.vma`), on the CPU: it is small next to
the graphs, and sharing it is what keeps the two backends equal.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from app.worker.onnx import Graph, Placement
from models.export import feat_names
from models.vma import (
    VMA,
    Prior,
    VMAConfig,
    candidate_noise,
    decode_samples,
    importance_log_weights,
    similarity,
    single_log_weights,
)  # fmt: skip


class OnnxVMA:
    """VMA's serving operations on the exported graphs; the arithmetic between them is `models.vma`'s."""

    def __init__(
        self, model: VMA, paths: dict[str, Path], placement: Placement, threads: int, int8_query: bool = False
    ) -> None:
        """``int8_query``: run h_q(x) on the export's ``query_embedding_int8`` graph (when it has one)."""
        self.config: VMAConfig = model.config
        self.placement = placement
        self.query_graph = (
            "query_embedding_int8" if int8_query and "query_embedding_int8" in paths else "query_embedding"
        )
        unused = {"query_embedding", "query_embedding_int8"} - {self.query_graph}
        self.graphs = {
            name: Graph(path, placement, threads) for name, path in paths.items() if name not in unused
        }
        self._e_prior = model.prior_query().detach().cpu().clone()
        self._feats = feat_names(model)

    def memory_embedding(self, m: Tensor) -> Tensor:
        """h(m_a) (N, match_dim) for exemplars m (N, 1, S, S)."""
        return self.graphs["memory_embedding"](m=m)[0]

    def query_embedding(self, x: Tensor) -> Tensor:
        """h_q(x) (N, match_dim) for queries x (N, 1, S, S)."""
        return self.graphs[self.query_graph](x=x)[0]

    def similarity(self, h_m: Tensor, e: Tensor) -> Tensor:
        return similarity(h_m, e)

    def prior_query(self) -> Tensor:
        return self._e_prior

    def z_prior(self, m_a: Tensor) -> tuple[Tensor, Tensor, Tensor, list[Tensor]]:
        mu, log_std, c_m, *feats = self.graphs["z_prior"](m_a=m_a)
        return mu, log_std, c_m, feats

    def z_posterior(self, x: Tensor, m_a: Tensor) -> tuple[Tensor, Tensor]:
        mu, log_std = self.graphs["z_posterior"](x=x, m_a=m_a)
        return mu, log_std

    def decode(self, z: Tensor, c_m: Tensor, feats: list[Tensor]) -> Tensor:
        return self.graphs["decoder"](z=z, c_m=c_m, **dict(zip(self._feats, feats, strict=True)))[0]

    def log_weight(self, x: Tensor, m_a: Tensor, eps: Tensor) -> Tensor:
        """As `VMA.log_weight`: one call of the ``log_weight`` graph, where the export has it (the
        pyramid of m_a then stays inside ONNX Runtime); else the three graphs composed."""
        if "log_weight" in self.graphs:
            return self.graphs["log_weight"](x=x, m_a=m_a, eps=eps)[0]
        return single_log_weights(self, x, m_a, eps)

    def candidate_log_weights(
        self, x: Tensor, m_a: Tensor, samples: int, generator: torch.Generator | None = None,
        eps: Tensor | None = None, prior: Prior | None = None,
    ) -> Tensor:  # fmt: skip
        """As `VMA.candidate_log_weights`."""
        eps = candidate_noise(eps, x, m_a, samples, self.config.z_dim, generator)
        return importance_log_weights(self, x, m_a, eps, prior)

    def sample_from(self, m_a: Tensor, noise: Tensor, anchor: Tensor | None = None) -> Tensor:
        """As `VMA.sample_from`."""
        return decode_samples(self, m_a, noise, anchor)
