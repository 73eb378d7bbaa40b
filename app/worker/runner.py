"""What every runner (one per model kind) shares: its wiring, the batch outcome, the checks
that refuse a job before it runs."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import redis

from app.catalog import ModelKey
from app.errors import JobFailed, MemserveError, ModelUnavailable
from app.queue.messages import frame_replies
from app.queue.reader import Delivery
from app.store.keys import Keys
from app.store.worker_sessions import WorkerSessions

Served = TypeVar("Served")
log = logging.getLogger(__name__)


@dataclass
class Outcome:
    """What a batch did: entries to acknowledge, jobs to run again, counters."""

    ack: list[bytes] = field(default_factory=list)
    retry: list[Delivery] = field(default_factory=list)
    replies: list[tuple[str, bytes]] = field(default_factory=list)
    steps: int = 0

    def messages(self) -> list[tuple[str, bytes]]:
        """One message per waiting API process, carrying all of its replies of this batch."""
        by_channel: dict[str, list[bytes]] = {}
        for channel, payload in self.replies:
            by_channel.setdefault(channel, []).append(payload)
        return [(channel, frame_replies(payloads)) for channel, payloads in by_channel.items()]


class Runner(Generic[Served]):
    """Base of the runners: the Redis client, key schema, loaded models and retry limits.

    ``models`` holds every loaded version by (name, version) and ``latest`` the newest loaded
    version of each name; the worker's `ModelSet` adds to both between batches (hot reload).
    """

    def __init__(
        self,
        r: redis.Redis,
        keys: Keys,
        models: dict[ModelKey, Served],
        reply_ttl_s: int,
        max_deliveries: int,
        latest: dict[str, ModelKey] | None = None,
    ) -> None:
        self.r = r
        self.keys = keys
        self.models = models
        self.latest = latest if latest is not None else {}
        self.reply_ttl_s = reply_ttl_s
        self.max_deliveries = max_deliveries
        self.sessions = WorkerSessions(r, keys, reply_ttl_s)  # a kind's reads and commits of its state
        # Called with a job's model and version when they are not loaded, before the job is
        # refused: the worker rescans its checkpoint directory (`ModelSet.ensure`).
        self.on_missing: Callable[[str, str | None], object] | None = None

    kind = ""  # the model kind whose stream this runner serves

    def process(self, deliveries: list[Delivery]) -> Outcome:
        """Run a batch of this kind's jobs: commit their results, and say what to acknowledge."""
        raise NotImplementedError

    def beat(self) -> dict[str, Any]:
        """What this kind adds to the worker's heartbeat (its cache's hits and misses, say)."""
        return {}

    def batch_cap(self, in_hand: int) -> int | None:
        """This kind's jobs per batch at most, with ``in_hand`` of them read and waiting; None: all
        of them. The worker keeps the jobs past the cap for its next batches."""
        return None

    def key_of(self, name: str, version: str | None) -> ModelKey | None:
        """The loaded version a job runs on: the one it names, or, for a job that names none
        (queued by an API from before versions), the newest loaded; None when not loaded."""
        key = (name, version) if version is not None else self.latest.get(name)
        return key if key in self.models else None

    def served(self, name: str, version: str | None) -> Served:
        """The loaded model of a job that `cannot_run` let through."""
        key = self.key_of(name, version)
        assert key is not None, f"model {name} version {version} is not loaded"
        return self.models[key]

    def cannot_run(self, delivery: Delivery, model: str, version: str | None) -> MemserveError | None:
        """Why a job may not run here at all: it failed too often, or its model is not loaded."""
        if delivery.attempts > self.max_deliveries:
            tries = delivery.attempts - 1
            log.error("job %s set aside after %d runs alone without an answer", delivery.entry_id, tries)
            detail = (
                f"the job was set aside: the worker running it failed or died each of the {tries} "
                "times it ran alone; it will not be run again"
            )
            return JobFailed(detail)
        if self.key_of(model, version) is None and self.on_missing is not None:
            self.on_missing(model, version)
        if self.key_of(model, version) is None:
            which = f"model {model}" if version is None else f"model {model} version {version}"
            detail = (
                f"{which} is not loaded on this worker: no complete checkpoint of it is in its "
                "checkpoint directory (not copied there yet, or removed)"
            )
            return ModelUnavailable(detail)
        return None
