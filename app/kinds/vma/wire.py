"""VMA jobs on the wire: add exemplars, classify drawings, draw samples.

Like point jobs, a VMA job carries everything needed to run it again: the drawings as packed
pixels (98 bytes each) in field ``v``, the rest in a JSON header ``h``. Adding is
idempotent through the commit script (a job's stored reply is returned instead of adding
twice); classifying and sampling change nothing, so re-running them is harmless.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from app.queue.messages import job_model_version
from app.store.exemplars import PIX_BYTES, pack_pixels, unpack_pixels
from app.store.keys import new_job_id

OPS = ("add", "classify", "sample")
# A classify job's `samples` when the request left it to the model: the worker takes 1 where the
# model's novelty rule is on the likelihood bound, else 0 (`auto_samples`).
AUTO_SAMPLES = -1


def auto_samples(novelty_score: str | None) -> int:
    """Decoder evaluations per drawing for a classify request that did not ask for any."""
    return 1 if novelty_score == "bound" else 0


@dataclass(frozen=True)
class VmaJob:
    """One request's work for one VMA session."""

    job_id: str
    sid: str
    model: str
    op: str
    reply_to: str
    pixels: bytes = b""  # N * PIX_BYTES
    params: dict[str, Any] = field(default_factory=dict)
    request_id: str = ""
    model_version: str | None = None  # the session's; None from an API that predates versions

    @classmethod
    def new(
        cls, sid: str, model: str, op: str, reply_to: str, images: np.ndarray | None, request_id: str = "",
        model_version: str | None = None, **params: Any,
    ) -> VmaJob:  # fmt: skip
        """A job with a fresh id; ``images`` (N, 28, 28) binary, or None for sampling."""
        assert op in OPS, f"op must be one of {OPS}"
        pixels = b"" if images is None else pack_pixels(images)
        return cls(new_job_id(), sid, model, op, reply_to, pixels, params, request_id, model_version)

    @property
    def count(self) -> int:
        return len(self.pixels) // PIX_BYTES

    def images(self) -> np.ndarray:
        return unpack_pixels(self.pixels)

    def to_fields(self) -> dict[str, bytes]:
        head = {
            "op": self.op, "job": self.job_id, "sid": self.sid, "model": self.model,
            "mv": self.model_version, "reply_to": self.reply_to, "rid": self.request_id, "p": self.params,
        }  # fmt: skip
        return {"h": orjson.dumps(head), "v": self.pixels}

    @classmethod
    def from_fields(cls, f: dict[bytes, bytes]) -> VmaJob:
        """The job stored in a stream entry; KeyError or ValueError when it is malformed."""
        h = orjson.loads(f[b"h"])
        job = cls(
            job_id=str(h["job"]), sid=str(h["sid"]), model=str(h["model"]), op=str(h["op"]),
            reply_to=str(h["reply_to"]), pixels=f.get(b"v", b""), params=dict(h.get("p") or {}),
            request_id=str(h.get("rid", "")), model_version=job_model_version(h),
        )  # fmt: skip
        if job.op not in OPS or len(job.pixels) % PIX_BYTES:
            raise ValueError(f"bad vma job: op {job.op!r}, {len(job.pixels)} pixel bytes")
        return job
