"""Moving-average jobs on the wire: one JSON field ``h`` carrying the values themselves."""

from __future__ import annotations

from dataclasses import dataclass

import orjson

from app.queue.messages import job_model_version
from app.store.keys import new_job_id


@dataclass(frozen=True)
class AverageJob:
    job_id: str
    sid: str
    model: str
    model_version: str | None
    values: tuple[float, ...]
    reply_to: str

    def to_fields(self) -> dict[str, bytes]:
        head = {
            "op": "average", "job": self.job_id, "sid": self.sid, "model": self.model,
            "mv": self.model_version, "values": self.values, "reply_to": self.reply_to,
        }  # fmt: skip
        return {"h": orjson.dumps(head)}

    @classmethod
    def from_fields(cls, f: dict[bytes, bytes]) -> AverageJob:
        """The job stored in a stream entry; KeyError or ValueError when it is malformed."""
        h = orjson.loads(f[b"h"])
        values = tuple(float(v) for v in h["values"])
        return cls(
            str(h["job"]), str(h["sid"]), str(h["model"]), job_model_version(h), values, str(h["reply_to"])
        )


def average_job(sid: str, model: str, version: str, values: list[float], reply_to: str) -> AverageJob:
    return AverageJob(new_job_id(), sid, model, version, tuple(values), reply_to)
