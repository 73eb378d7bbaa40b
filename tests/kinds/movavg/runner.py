"""Runs moving-average jobs one at a time: the session's last values are kept in its state hash.

Kept to the least a kind needs: the session's fields go through the runner's `sessions` store,
which applies each job at most once (a re-delivered job gets the reply its first run kept).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import orjson
import torch

from app.errors import MemserveError
from app.queue.messages import error_reply, ok_reply
from app.queue.reader import Delivery
from app.worker.runner import Outcome, Runner
from tests.kinds.movavg.model import MovAvg
from tests.kinds.movavg.wire import AverageJob

log = logging.getLogger(__name__)


@dataclass
class ServedMovAvg:
    model: MovAvg


class MovAvgRunner(Runner[ServedMovAvg]):
    kind = "movavg"

    def process(self, deliveries: list[Delivery]) -> Outcome:
        out = Outcome()
        for d in deliveries:
            out.ack.append(d.entry_id)
            try:
                job = AverageJob.from_fields(d.fields)
            except (KeyError, ValueError) as e:
                log.error("dropping malformed movavg job %s: %s", d.entry_id, e)
                continue
            try:
                error = self.cannot_run(d, job.model, job.model_version)
                if error is not None:
                    raise error
                reply = self._run(job)
                out.steps += len(job.values)
            except MemserveError as e:
                reply = error_reply(job.job_id, e)
                self.sessions.keep_reply(job.sid, job.job_id, reply)
            out.replies.append((job.reply_to, reply))
        return out

    def _run(self, job: AverageJob) -> bytes:
        got = self.sessions.read(job.sid, job.job_id, ("step", "tail"))
        if got.reply is not None:  # applied before: answer as then
            return got.reply
        step, tail = got.values
        model = self.served(job.model, job.model_version).model
        window = model.config.window
        series = [*orjson.loads(tail or b"[]"), *job.values]
        with torch.inference_mode():
            averages = [
                float(model(torch.tensor(series[max(0, i - window + 1) : i + 1], dtype=torch.float64)))
                for i in range(len(series) - len(job.values), len(series))
            ]
        step = int(step or 0) + len(job.values)
        reply = ok_reply(job.job_id, {"averages": averages, "step": step})
        fields = {"step": step, "tail": orjson.dumps(series[-(window - 1) :] if window > 1 else [])}
        return self.sessions.commit(job.sid, job.job_id, fields, reply)
