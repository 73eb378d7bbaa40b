"""What every runner (one per model kind) shares: its wiring, the batch outcome, the checks
that refuse a job before it runs."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Generic, TypeVar

import redis

from app.jobs.messages import frame_replies
from app.jobs.reader import Delivery
from app.store.keys import Keys

Served = TypeVar("Served")


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


@dataclass(frozen=True)
class Refusal:
    """A job answered with an error instead of being run."""

    status: int
    slug: str
    detail: str


class Runner(Generic[Served]):
    """Base of the runners: the Redis client, key schema, loaded models and retry limits."""

    def __init__(
        self, r: redis.Redis, keys: Keys, models: dict[str, Served], reply_ttl_s: int, max_deliveries: int
    ) -> None:
        self.r = r
        self.keys = keys
        self.models = models
        self.reply_ttl_s = reply_ttl_s
        self.max_deliveries = max_deliveries

    def cannot_run(self, delivery: Delivery, model: str) -> Refusal | None:
        """Why a job may not run here at all: it failed too often, or its model is not loaded."""
        if delivery.deliveries > self.max_deliveries:
            return Refusal(500, "job-failed", "the job failed repeatedly")
        if model not in self.models:
            return Refusal(503, "model-unavailable", f"model {model} is not loaded")
        return None
