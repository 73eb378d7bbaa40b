"""The worker's classify replies: built as plain data in one pass over a batch, they must keep the
route's response model and give each job what a pass over its own memory alone gives."""

import numpy as np
import torch

from app.kinds.vma.memory import DeviceMemory
from app.kinds.vma.replies import ClassifyResponse
from app.kinds.vma.runner import _address, _classify_bodies
from app.kinds.vma.served import NoveltyRule
from app.kinds.vma.wire import VmaJob
from models.vma import label_scores, similarity, unit_directions


def _memory(size: int, n_labels: int, scale: float, seed: int) -> tuple[DeviceMemory, torch.Tensor]:
    """A memory of `size` random embeddings, and those embeddings h(m_a) (A, 16)."""
    gen = torch.Generator().manual_seed(seed)
    h = scale * torch.randn(size, 16, generator=gen)
    labels = [f"c{i % n_labels}" for i in range(size)]
    idx = torch.tensor([i % n_labels for i in range(size)])
    mem = DeviceMemory(
        version=1, etag=None, model="m", ids=np.arange(100, 100 + size), labels=labels,
        label_names=[f"c{i}" for i in range(n_labels)], label_idx=idx,
        directions=unit_directions(h).T.contiguous(), log_prior=torch.full((size,), -float(np.log(size))),
        pix=b"\0" * (size * 98),
    )  # fmt: skip
    return mem, h


def _job(i: int, count: int, top_k: int, method: str = "posterior") -> VmaJob:
    params = {"samples": 0, "top_k": top_k, "method": method, "seed": i}
    return VmaJob(f"j{i}", f"s{i}", "m", "classify", "chan", b"\0" * (98 * count), params, "", None)


@torch.inference_mode()
def test_batched_replies_equal_per_job_ones_and_keep_the_response_model() -> None:
    # Memories of different sizes (the block is padded), label counts and top_k; the last one's
    # logits are so far apart that most q(a|x) underflow to exactly 0 next to padded slots.
    made = [_memory(7, 3, 1.0, 0), _memory(2, 2, 1.0, 1), _memory(12, 5, 1.0, 2), _memory(9, 4, 1.0, 3)]
    mems, hs = [m for m, _ in made], [h for _, h in made]
    jobs = [_job(0, 2, 5), _job(1, 1, 5), _job(2, 1, 12), _job(3, 2, 9)]
    items = [(None, job, mem) for job, mem in zip(jobs, mems, strict=True)]
    e = torch.randn(6, 16, generator=torch.Generator().manual_seed(9))
    e[-2:] *= 4000.0
    parts, log_q = _address(items, torch.zeros(6, 1, 28, 28), e)  # type: ignore[arg-type]
    bodies = _classify_bodies(parts, log_q, NoveltyRule("cosine", 0.5))
    assert (log_q[-2:].exp() == 0).sum() > 2, "the test needs q(a|x) that underflow to 0"
    start = 0
    for p, body, h in zip(parts, bodies, hs, strict=True):
        rows = e[start : start + p.x.shape[0]]
        start += p.x.shape[0]
        # the padded block's rows are what addressing this job's memory alone gives
        assert torch.allclose(p.log_q, similarity(h, rows).log_softmax(-1), rtol=1e-6, atol=1e-4)
        assert ClassifyResponse.model_validate(body).model_dump() == body
        q = p.log_q.exp()  # this job's memory alone
        scores = label_scores(q, p.mem.label_idx, len(p.mem.label_names))
        k = min(int(p.job.params["top_k"]), p.mem.size)
        for i, res in enumerate(body["results"]):
            assert list(res["scores"]) == p.mem.label_names
            assert np.allclose(list(res["scores"].values()), scores[i].numpy(), atol=1e-7)
            assert len(res["top"]) == k
            ps = [t["p"] for t in res["top"]]
            assert ps == sorted(ps, reverse=True)
            for t in res["top"]:
                slot = int(t["exemplar_id"]) - 100
                assert 0 <= slot < p.mem.size, "a padded slot was reported"
                assert t["label"] == p.mem.labels[slot] and t["p"] == float(q[i, slot])
            assert res["label"] == p.mem.label_names[int(scores[i].argmax())]
            assert res["log_likelihood_nats"] is None and isinstance(res["novel"], bool)
        assert body["method"] == "posterior" and body["samples"] == 0
