"""API side of the job queue: submit a job to a Redis stream and wait for its reply.

Each API process subscribes to one pub/sub channel of its own (a sharded channel on Redis
Cluster); workers publish a job's reply there and also keep it under the job's reply key, so
a reply published while the subscription was down is still found (at the deadline) rather
than lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from typing import Any, Protocol

import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from app.errors import QueueFull, ReplyTimeout
from app.queue.admission import Admission
from app.queue.messages import Reply, parse_reply, unframe_replies
from app.store import scripts
from app.store.client import is_cluster
from app.store.keys import GROUP, Keys

log = logging.getLogger(__name__)


async def ensure_group(r: aioredis.Redis, stream: str) -> None:
    """Create the stream and its consumer group if they do not exist yet."""
    try:
        await r.xgroup_create(stream, GROUP, id="0", mkstream=True)
    except ResponseError as e:
        if "BUSYGROUP" not in str(e):
            raise


class Job(Protocol):
    """What the queue needs of a job: its id, its session, and its stream fields."""

    @property
    def job_id(self) -> str: ...

    @property
    def sid(self) -> str: ...

    def to_fields(self) -> dict[str, bytes]: ...


POINTS_RETRY_HINT = "the chunk may still be applied: retry it with the same seq to get its predictions"


class JobQueue:
    """Submits jobs and routes replies back to the coroutines waiting for them."""

    def __init__(
        self, r: aioredis.Redis, keys: Keys, queue_cap: int, admission: Admission | None = None
    ) -> None:
        self.r = r
        self.keys = keys
        self.queue_cap = queue_cap
        self.admission = admission
        self.api_id = secrets.token_hex(8)
        self.channel = keys.reply_channel(self.api_id)
        self._waiting: dict[str, asyncio.Future[Reply]] = {}
        self._submit = r.register_script(scripts.SUBMIT)
        self._listener: asyncio.Task[None] | None = None
        self._subscribed = asyncio.Event()
        self._flushes: set[asyncio.Task[None]] = set()
        self._to_submit: list[tuple[str, dict[str, bytes], asyncio.Future[bytes | None]]] = []

    async def start(self) -> None:
        self._listener = asyncio.create_task(self._listen(), name="reply-listener")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._subscribed.wait(), timeout=5)

    async def stop(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._listener

    async def _listen(self) -> None:
        # Reconnects with a pause when Redis goes away; waiters still find their reply under
        # the reply key at their deadline.
        while True:
            pubsub = self.r.pubsub(ignore_subscribe_messages=True)
            try:
                await (self._listen_sharded(pubsub) if is_cluster(self.r) else self._listen_plain(pubsub))
            except asyncio.CancelledError:
                raise
            except Exception as e:
                log.warning("reply subscription lost (%s); reconnecting", e)
                await asyncio.sleep(0.5)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()

    async def _listen_plain(self, pubsub: Any) -> None:
        await pubsub.subscribe(self.channel)
        self._subscribed.set()
        async for msg in pubsub.listen():
            if msg.get("type") == "message":
                self._deliver(msg["data"])

    async def _listen_sharded(self, pubsub: Any) -> None:
        """On a cluster, workers SPUBLISH (app.queue.reader): subscribe on the channel's shard."""
        await pubsub.ssubscribe(self.channel)
        while True:
            # Without a subscription (its shard unknown, or dropped as its slot moved) the read
            # below returns at once: start over rather than spin.
            if not pubsub.shard_channels:
                raise ConnectionError(f"no shard subscription for {self.channel}")
            self._subscribed.set()
            msg = await pubsub.get_sharded_message(ignore_subscribe_messages=True, timeout=1.0)
            if msg is not None and msg.get("type") == "smessage":
                self._deliver(msg["data"])

    def _deliver(self, message: bytes) -> None:
        try:
            replies = [parse_reply(raw) for raw in unframe_replies(message)]
        except ValueError:
            log.warning("dropping an undecodable reply message")
            return
        for reply in replies:
            fut = self._waiting.get(reply.job_id)
            if fut is not None and not fut.done():
                fut.set_result(reply)

    def _submit_soon(self, stream: str, fields: dict[str, bytes]) -> asyncio.Future[bytes | None]:
        """Queue a submit; all submits made in one event-loop tick share one round trip."""
        fut: asyncio.Future[bytes | None] = asyncio.get_running_loop().create_future()
        self._to_submit.append((stream, fields, fut))
        if len(self._to_submit) == 1:
            task = asyncio.create_task(self._flush())
            self._flushes.add(task)  # a reference, so the task is not collected mid-flight
            task.add_done_callback(self._flushes.discard)
        return fut

    async def _flush(self) -> None:
        batch, self._to_submit = self._to_submit, []
        try:
            async with self.r.pipeline(transaction=False) as p:
                for stream, fields, _fut in batch:
                    args: list[Any] = [self._cap(stream)]
                    for k, v in fields.items():
                        args += [k, v]
                    await self._submit(keys=[stream], args=args, client=p)
                results = await p.execute()
            if len(results) != len(batch):  # never answer a request with another's result
                raise RuntimeError(f"{len(batch)} jobs submitted, {len(results)} results")
            for (*_rest, fut), res in zip(batch, results, strict=True):
                if not fut.done():
                    fut.set_result(res)
        except Exception as e:
            for *_rest, fut in batch:  # no request may wait forever on a lost submit
                if not fut.done():
                    fut.set_exception(e)

    def _cap(self, stream: str) -> int:
        """Jobs that may wait on ``stream``: what admission allows, within the fixed cap."""
        if self.admission is None:
            return self.queue_cap
        return self.admission.cap(_kind(stream))

    async def run(self, stream: str, job: Job, timeout_s: float, hint: str = POINTS_RETRY_HINT) -> Reply:
        """Queue `job` on `stream` and return the worker's reply; `hint` ends the timeout's message."""
        fut: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        self._waiting[job.job_id] = fut
        try:
            entry = await self._submit_soon(stream, job.to_fields())
            if entry is None:
                cap, wait = self._cap(stream), 1
                if self.admission is not None:
                    wait = self.admission.retry_after_s(_kind(stream))
                raise QueueFull(
                    f"{cap} jobs are already waiting, as many as the workers answer within the request "
                    f"timeout; retry in {wait} s",
                    headers={"Retry-After": str(wait)},
                )
            try:
                return await asyncio.wait_for(asyncio.shield(fut), timeout=timeout_s)
            except TimeoutError:
                raw: Any = await self.r.get(self.keys.reply(job.sid, job.job_id))
                if raw is not None:
                    return parse_reply(raw)
                raise ReplyTimeout(f"no worker answered within {timeout_s:g} s; {hint}") from None
        finally:
            self._waiting.pop(job.job_id, None)


def _kind(stream: str) -> str:
    """The model kind of a job stream (`Keys.stream`)."""
    return stream.rsplit(":", 1)[-1]
