"""A loaded VMA checkpoint as the worker serves it: the engine, what its card says about
serving (novelty rule, sample temperature), and the bytes each unit of its work takes."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any

import torch

from app.kinds.vma.memory import VMAEngine
from app.kinds.vma.requests import MAX_TEMPERATURE
from app.worker.budget import tensor_bytes
from models.vma import VMA

PIX_FLOATS = 28 * 28  # one drawing as floats on the device


@dataclass(frozen=True)
class VmaCosts:
    """Bytes per unit of a VMA model's work, from `tensor_bytes` of small probes."""

    decoder_eval: int  # one z sample of one candidate in the likelihood bound
    embed: int  # one drawing through h (exemplars) or h_q (queries)
    sample: int  # one drawing decoded from p(x|z, m_a)

    @classmethod
    def measure(cls, model: VMA) -> VmaCosts:
        """Probe ``model`` (the PyTorch module: the ONNX graphs compute the same tensors)."""
        dev = next(model.parameters()).device
        s, z, k = model.config.image_size, model.config.z_dim, 64
        x = torch.zeros(4, 1, s, s, device=dev)
        m_a = torch.zeros(1, 1, 1, s, s, device=dev)
        eps = torch.zeros(1, 1, k, z, device=dev)
        return cls(
            decoder_eval=tensor_bytes(lambda: model.candidate_log_weights(x[:1], m_a, k, eps=eps), k),
            embed=max(tensor_bytes(lambda: model.query_embedding(x), 4),
                      tensor_bytes(lambda: model.memory_embedding(x), 4)),
            sample=tensor_bytes(
                lambda: model.sample_from(x, torch.zeros(4, z, device=dev), torch.ones(4, device=dev)), 4
            ),  # anchored, the dearer form: q(z|m_a, m_a) too
        )  # fmt: skip


NOVELTY_SCORES = ("address", "cosine", "bound")


@dataclass(frozen=True)
class NoveltyRule:
    """Which score flags a drawing as novel and below what threshold (from the card's evaluation).

    ``address``: the largest address logit max_a S(m_a, x); ``cosine``: that logit over
    ||h_q(x)||, the largest cosine between the drawing's and an exemplar's embedding (both with
    every request); ``bound``: the best single-exemplar log p(x|m_a) in nats, only when the
    request has samples.
    """

    score: str
    threshold: float


def novelty_rule(card: dict[str, Any]) -> NoveltyRule | None:
    """The card's ``serving.novelty`` {score, threshold}; cards from before it name only
    ``novelty_threshold_nats``, a threshold on the bound."""
    serving = card.get("serving") or {}
    rule = serving.get("novelty")
    if rule is not None:
        score = rule.get("score")
        assert score in NOVELTY_SCORES, f"serving.novelty.score must be one of {NOVELTY_SCORES}"
        return NoveltyRule(str(rule["score"]), float(rule["threshold"]))
    legacy = serving.get("novelty_threshold_nats")
    return None if legacy is None else NoveltyRule("bound", float(legacy))


def sample_temperature(card: dict[str, Any]) -> float:
    """The card's ``serving.sample_temperature``, chosen by ``memserve evaluate vma``; 1 (the
    model's own prior) for a card that names none."""
    t = float((card.get("serving") or {}).get("sample_temperature", 1.0))
    assert 0.0 <= t <= MAX_TEMPERATURE, f"serving.sample_temperature must be in [0, {MAX_TEMPERATURE}]"
    return t


def sample_anchor(card: dict[str, Any]) -> float:
    """The card's ``serving.sample_anchor``, chosen by ``memserve evaluate vma`` with the
    temperature; 0 (the model's own prior) for a card that names none."""
    a = float((card.get("serving") or {}).get("sample_anchor", 0.0))
    assert 0.0 <= a <= 1.0, "serving.sample_anchor must be in [0, 1]"
    return a


class ServedVMA:
    """One loaded VMA checkpoint and what its card says about serving it."""

    def __init__(
        self, model: VMAEngine, card: dict[str, Any], device: torch.device, costs: VmaCosts,
        precision: dict[str, str] | None = None, on_gpu: bool = False,
    ) -> None:  # fmt: skip
        """``precision``: the arithmetic options this worker resolved (its heartbeat reports them);
        ``on_gpu``: whether its arithmetic runs on a GPU (torch's device or ONNX Runtime's)."""
        self.token = secrets.token_hex(8)  # names this loaded model in caches (never reused)
        self.model = model  # on `device` already
        self.card = card
        self.device = device
        self.costs = costs
        self.novelty = novelty_rule(card)
        self.sample_temperature = sample_temperature(card)
        self.sample_anchor = sample_anchor(card)
        self.precision = precision
        self.on_gpu = on_gpu
