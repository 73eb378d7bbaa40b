"""The serving novelty rule: which score the card names, and what each gives with and without samples."""

import pytest
import torch

from app.kinds.vma.runner import _Addressing, _novel
from app.kinds.vma.served import NoveltyRule, novelty_rule
from app.kinds.vma.wire import auto_samples


def _addressing(best_logit: list[float], log_w: list[list[float]] | None, norm: float = 2.0) -> _Addressing:
    n = len(best_logit)
    return _Addressing(
        job=None, mem=None, x=torch.zeros(n, 1, 28, 28), log_q=torch.zeros(n, 3),  # type: ignore[arg-type]
        best_logit=torch.tensor(best_logit), best_cosine=torch.tensor(best_logit) / norm, kl=torch.zeros(n),
        cand=torch.zeros(n, 1, dtype=torch.long),
        samples=1, log_w=None if log_w is None else torch.tensor(log_w),
    )  # fmt: skip


def test_card_forms():
    assert novelty_rule({}) is None
    assert novelty_rule({"serving": {"novelty_threshold_nats": -150.5}}) == NoveltyRule("bound", -150.5)
    card = {"serving": {"novelty": {"score": "address", "threshold": 3.25}, "novelty_threshold_nats": -1.0}}
    assert novelty_rule(card) == NoveltyRule("address", 3.25), "the two-score form wins over the old key"
    with pytest.raises(AssertionError, match="must be one of"):
        novelty_rule({"serving": {"novelty": {"score": "pixels", "threshold": 0.0}}})


def test_address_score_needs_no_samples():
    p = _addressing([1.0, 5.0], None)  # samples: 0, no bound
    assert _novel(p, NoveltyRule("address", 3.0)) == [True, False]
    assert _novel(p, NoveltyRule("cosine", 1.0)) == [True, False]  # 0.5 and 2.5
    assert _novel(p, NoveltyRule("cosine", 3.0)) == [True, True]
    assert _novel(p, NoveltyRule("bound", -100.0)) == [None, None]
    assert _novel(p, None) == [None, None]


def test_bound_score_uses_the_best_single_exemplar():
    p = _addressing([9.0, 9.0], [[-120.0, -90.0], [-130.0, -125.0]])
    assert _novel(p, NoveltyRule("bound", -100.0)) == [False, True]
    assert _novel(p, NoveltyRule("address", 3.0)) == [False, False], "the address score ignores the bound"


def test_a_classify_request_that_asks_no_samples_gets_what_the_novelty_rule_needs() -> None:
    # The bound only where the flag is computed from it; cosine and address scores need no decoder.
    assert auto_samples("bound") == 1
    assert auto_samples("cosine") == 0 and auto_samples("address") == 0 and auto_samples(None) == 0
