"""MemNet jobs on the wire: a chunk of points for one session.

Two stream fields: a JSON header ``h`` and the raw float32 points ``v`` (few arguments to pack).
The job carries its points, so a job re-delivered after a worker died is re-run by any worker.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import orjson

from app.queue.messages import job_model_version
from app.store.keys import new_job_id


def digest(data: bytes) -> str:
    """Short content hash of a chunk, to tell a client's retry from a different chunk."""
    return hashlib.blake2b(data, digest_size=12).hexdigest()


@dataclass(frozen=True)
class PointsJob:
    """A chunk of T points of dimension D for one MemNet session."""

    job_id: str
    sid: str
    model: str
    seq: int | None
    values: bytes  # T*D float32 little-endian, client units
    length: int
    dim: int
    horizon: int
    reply_to: str
    request_id: str = ""
    model_version: str | None = None  # the session's; None from an API that predates versions
    levels: tuple[float, ...] = ()  # interval levels in percent; () for none

    def to_fields(self) -> dict[str, bytes]:
        """Two stream fields: a JSON header and the raw values (few arguments to pack)."""
        head = {
            "op": "points", "job": self.job_id, "sid": self.sid, "model": self.model,
            "mv": self.model_version, "seq": self.seq, "t": self.length, "d": self.dim,
            "horizon": self.horizon, "reply_to": self.reply_to, "rid": self.request_id,
            "lv": list(self.levels),
        }  # fmt: skip
        return {"h": orjson.dumps(head), "v": self.values}

    @classmethod
    def from_fields(cls, f: dict[bytes, bytes]) -> PointsJob:
        """The job stored in a stream entry; KeyError or ValueError when it is malformed."""
        h = orjson.loads(f[b"h"])
        values = f[b"v"]
        job = cls(
            job_id=str(h["job"]), sid=str(h["sid"]), model=str(h["model"]),
            seq=None if h["seq"] is None else int(h["seq"]), values=values,
            length=int(h["t"]), dim=int(h["d"]), horizon=int(h["horizon"]),
            reply_to=str(h["reply_to"]), request_id=str(h.get("rid", "")),
            model_version=job_model_version(h), levels=tuple(float(v) for v in h.get("lv") or ()),
        )  # fmt: skip
        if len(values) != 4 * job.length * job.dim:
            raise ValueError(f"{len(values)} value bytes for {job.length} x {job.dim} points")
        return job

    @property
    def digest(self) -> str:
        return digest(self.values)


def points_job(
    sid: str,
    model: str,
    chunk: np.ndarray,
    seq: int | None,
    horizon: int,
    reply_to: str,
    request_id: str = "",
    model_version: str | None = None,
    levels: tuple[float, ...] = (),
) -> PointsJob:
    """A job that carries its points, so it can be re-run by any worker."""
    return PointsJob(
        job_id=new_job_id(), sid=sid, model=model, seq=seq,
        values=np.ascontiguousarray(chunk, dtype="<f4").tobytes(),
        length=int(chunk.shape[0]), dim=int(chunk.shape[1]), horizon=horizon,
        reply_to=reply_to, request_id=request_id, model_version=model_version, levels=levels,
    )  # fmt: skip
