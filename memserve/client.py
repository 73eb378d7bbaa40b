"""`Client` and `AsyncClient`: the memserve HTTP API (v1) as typed methods, with safe retries.

Both send the same requests (memserve._wire) and retry them the same way: a points chunk with a
`seq` (what `Stream` sends), a read (GET, samples, classify) on a dropped connection, a read
timeout, 429, 503 and 504, honouring ``Retry-After``; a write without a seq only when nothing
can have happened (the connection was never made, or a 429 or 503 problem+json refusal). The
server applies a chunk retried with the same seq exactly once. Non-2xx replies raise
`ProblemError` or one of its subclasses.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Iterable, Sequence
from types import TracebackType
from typing import Any, Literal, Self, TypeVar

import httpx

from memserve import _wire
from memserve._wire import (
    AddedExemplars,
    Call,
    ClassifyReply,
    ExemplarPage,
    Health,
    ImageLike,
    ModelList,
    PointsReply,
    ProblemError,
    SampleSet,
    SessionInfo,
    SessionPage,
    TenantInfo,
)

T = TypeVar("T")
log = logging.getLogger("memserve.client")
Kind = Literal["memnet", "vma"]
Method = Literal["posterior", "importance"]
Format = Literal["png", "probs"]


class _Base:
    def __init__(
        self, base_url: str, api_key: str | None, timeout: float, retries: int, backoff_s: float,
        max_retry_after_s: float,
    ) -> None:  # fmt: skip
        self.base_url = base_url.rstrip("/")
        self.retries = retries
        self.backoff_s = backoff_s
        self.max_retry_after_s = max_retry_after_s
        self._timeout = httpx.Timeout(timeout)
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}

    @staticmethod
    def _request(call: Call[Any], request_id: str) -> dict[str, Any]:
        return {
            "method": call.method, "url": call.path, "params": call.params, "json": call.json,
            "content": call.content, "headers": {**call.headers, "X-Request-ID": request_id},
        }  # fmt: skip

    def _wait(
        self, call: Call[Any], attempt: int, outcome: httpx.TransportError | ProblemError
    ) -> float | None:
        """Seconds to wait before trying `call` again, or None: raise `outcome`."""
        if attempt >= self.retries:
            return None
        if isinstance(outcome, ProblemError):
            wait = _wire.retry_problem(call, outcome, attempt, self.backoff_s, self.max_retry_after_s)
        else:
            wait = _wire.retry_transport(call, outcome, attempt, self.backoff_s)
        if wait is not None:
            why = (
                str(outcome) if isinstance(outcome, ProblemError) else f"{type(outcome).__name__}: {outcome}"
            )
            log.info("retry %d of %s %s in %.2f s: %s", attempt + 1, call.method, call.path, wait, why)
        return wait

    @staticmethod
    def _done(call: Call[T], resp: httpx.Response) -> T | ProblemError:
        if resp.is_success or resp.status_code in call.accept:
            return call.parse(resp)
        return _wire.problem(resp)


class Client(_Base):
    """A synchronous client of one memserve service.

    `timeout` bounds each HTTP request (keep it above the server's MEMSERVE_REQUEST_TIMEOUT_S for
    points, samples and classify); `retries` is how often one call is sent again at most, after
    ``backoff_s * 2**attempt`` seconds (with jitter) or the server's ``Retry-After`` when it gives
    one no longer than `max_retry_after_s`. Use it as a context manager, or `close()` it.
    """

    def __init__(
        self, base_url: str = "http://127.0.0.1:8000", api_key: str | None = None, timeout: float = 30.0,
        retries: int = 5, backoff_s: float = 0.2, *, max_retry_after_s: float = 60.0,
    ) -> None:  # fmt: skip
        super().__init__(base_url, api_key, timeout, retries, backoff_s, max_retry_after_s)
        self._http = httpx.Client(base_url=self.base_url, timeout=self._timeout, headers=self._headers)

    def _run(self, call: Call[T]) -> T:
        request = self._request(call, uuid.uuid4().hex)
        attempt = 0
        while True:
            try:
                out = self._done(call, self._http.request(**request))
                if not isinstance(out, ProblemError):
                    return out
                failure: httpx.TransportError | ProblemError = out
            except httpx.TransportError as e:
                failure = e
            wait = self._wait(call, attempt, failure)
            if wait is None:
                raise failure
            time.sleep(wait)
            attempt += 1

    def close(self) -> None:
        """Close the connections."""
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- sessions
    def create_session(
        self, kind: Kind, model: str | None = None, ttl_s: int | None = None, capacity: int | None = None
    ) -> SessionInfo:
        """Start a MemNet or VMA session (model: the kind's default; ttl_s: idle seconds to expiry)."""
        return self._run(_wire.create_session(kind, model, ttl_s, capacity))

    def get_session(self, sid: str) -> SessionInfo:
        """The session's model, step, version, expiry and memory footprint (NotFound if unknown)."""
        return self._run(_wire.get_session(sid))

    def list_sessions(self, offset: int = 0, limit: int = 100) -> SessionPage:
        """A page of the caller's live sessions."""
        return self._run(_wire.list_sessions(offset, limit))

    def delete_session(self, sid: str) -> None:
        """End the session and drop its memory."""
        self._run(_wire.delete_session(sid))

    def export_session(self, sid: str) -> bytes:
        """The whole session as one binary document (restore it with `import_session`)."""
        return self._run(_wire.export_session(sid))

    def import_session(self, data: bytes, ttl_s: int | None = None) -> SessionInfo:
        """Restore an exported document as a new session (ttl_s: instead of the document's)."""
        return self._run(_wire.import_session(data, ttl_s))

    def fork_session(self, sid: str) -> SessionInfo:
        """Copy the session server-side to a new id; both then go on independently."""
        return self._run(_wire.fork_session(sid))

    def models(self) -> ModelList:
        """Every version of every model, its card, and the workers that loaded it."""
        return self._run(_wire.models())

    def tenant(self) -> TenantInfo:
        """The tenant of the API key, its limits and its live sessions."""
        return self._run(_wire.tenant())

    def health(self) -> Health:
        """Liveness and readiness (Redis, workers, models; `reasons` when not ready)."""
        return self._run(_wire.ready(self._run(_wire.live())))

    # -- MemNet
    def points(
        self,
        sid: str,
        values: Any,
        seq: int | None = None,
        horizon: int = 0,
        level: Iterable[float] | None = None,
    ) -> PointsReply:
        """Apply a chunk of points (T x D, or T numbers when D = 1) starting at `seq`; a forecast of
        `horizon` steps after it; prediction intervals at `level` percents (e.g. [80, 95]).

        With a seq the call is retried as is on 429, 503, 504 and connection errors; the server
        applies it once. Without one it is appended wherever the session is, and retried only when
        nothing can have happened. Conflict (seq-conflict, with `expected_seq`) if seq is not the
        session's step.
        """
        return self._run(_wire.points(sid, values, seq, horizon, level))

    def stream(self, sid: str, seq: int | None = None) -> Stream:
        """A `Stream` that sends chunks to the session and keeps their seq (from the session's step
        at the first send when `seq` is None)."""
        return Stream(self, sid, seq)

    # -- VMA
    def add_exemplars(self, sid: str, exemplars: Iterable[tuple[ImageLike, str | int]]) -> AddedExemplars:
        """Add labelled drawings (PNG bytes, an image path, or a 28 x 28 array in [0, 1], 1 = ink);
        all or none are added (at most 256 per call)."""
        return self._run(_wire.add_exemplars(sid, exemplars))

    def list_exemplars(
        self, sid: str, offset: int = 0, limit: int = 100, images: bool = False
    ) -> ExemplarPage:
        """The session's exemplars in the order they were added (images: with their PNGs)."""
        return self._run(_wire.list_exemplars(sid, offset, limit, images))

    def delete_exemplar(self, sid: str, eid: int) -> None:
        """Remove one exemplar."""
        self._run(_wire.delete_exemplar(sid, eid))

    def samples(
        self, sid: str, n: int = 8, label: str | int | None = None, exemplar_id: int | None = None,
        seed: int | None = None, format: Format = "png", temperature: float | None = None,
        anchor: float | None = None,
    ) -> SampleSet:  # fmt: skip
        """One-shot samples from the memory (or one label's or one exemplar's): PNG bytes (format
        "png") or 28 x 28 ink probabilities (format "probs"); `SampleSet.arrays()` gives arrays of either.
        ``temperature`` below 1 keeps samples nearer the exemplar's character; ``anchor`` (0 to 1)
        varies them around the exemplar's own style rather than the character's average (defaults:
        the model's)."""
        return self._run(_wire.samples(sid, n, label, exemplar_id, seed, format, temperature, anchor))

    def classify(
        self, sid: str, images: ImageLike | Sequence[ImageLike], method: Method | None = None,
        samples: int | None = None, top_k: int | None = None, seed: int | None = None,
    ) -> ClassifyReply:  # fmt: skip
        """Scores per label, top addresses, KL and a novelty flag per drawing (one drawing, a list of
        them, or an (N, 28, 28) array); with ``samples`` >= 1 also a log-likelihood bound (the
        posterior method's default is 0: no bound, about half the work)."""
        return self._run(_wire.classify(sid, images, method, samples, top_k, seed))


class AsyncClient(_Base):
    """The asynchronous twin of `Client`: the same methods, awaitable; `async with` or `await close()`."""

    def __init__(
        self, base_url: str = "http://127.0.0.1:8000", api_key: str | None = None, timeout: float = 30.0,
        retries: int = 5, backoff_s: float = 0.2, *, max_retry_after_s: float = 60.0,
    ) -> None:  # fmt: skip
        super().__init__(base_url, api_key, timeout, retries, backoff_s, max_retry_after_s)
        self._http = httpx.AsyncClient(base_url=self.base_url, timeout=self._timeout, headers=self._headers)

    async def _run(self, call: Call[T]) -> T:
        request = self._request(call, uuid.uuid4().hex)
        attempt = 0
        while True:
            try:
                out = self._done(call, await self._http.request(**request))
                if not isinstance(out, ProblemError):
                    return out
                failure: httpx.TransportError | ProblemError = out
            except httpx.TransportError as e:
                failure = e
            wait = self._wait(call, attempt, failure)
            if wait is None:
                raise failure
            await asyncio.sleep(wait)
            attempt += 1

    async def close(self) -> None:
        """Close the connections."""
        await self._http.aclose()

    aclose = close

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    # -- sessions
    async def create_session(
        self, kind: Kind, model: str | None = None, ttl_s: int | None = None, capacity: int | None = None
    ) -> SessionInfo:
        """See `Client.create_session`."""
        return await self._run(_wire.create_session(kind, model, ttl_s, capacity))

    async def get_session(self, sid: str) -> SessionInfo:
        """See `Client.get_session`."""
        return await self._run(_wire.get_session(sid))

    async def list_sessions(self, offset: int = 0, limit: int = 100) -> SessionPage:
        """See `Client.list_sessions`."""
        return await self._run(_wire.list_sessions(offset, limit))

    async def delete_session(self, sid: str) -> None:
        """See `Client.delete_session`."""
        await self._run(_wire.delete_session(sid))

    async def export_session(self, sid: str) -> bytes:
        """See `Client.export_session`."""
        return await self._run(_wire.export_session(sid))

    async def import_session(self, data: bytes, ttl_s: int | None = None) -> SessionInfo:
        """See `Client.import_session`."""
        return await self._run(_wire.import_session(data, ttl_s))

    async def fork_session(self, sid: str) -> SessionInfo:
        """See `Client.fork_session`."""
        return await self._run(_wire.fork_session(sid))

    async def models(self) -> ModelList:
        """See `Client.models`."""
        return await self._run(_wire.models())

    async def tenant(self) -> TenantInfo:
        """See `Client.tenant`."""
        return await self._run(_wire.tenant())

    async def health(self) -> Health:
        """See `Client.health`."""
        return await self._run(_wire.ready(await self._run(_wire.live())))

    # -- MemNet
    async def points(
        self,
        sid: str,
        values: Any,
        seq: int | None = None,
        horizon: int = 0,
        level: Iterable[float] | None = None,
    ) -> PointsReply:
        """See `Client.points`."""
        return await self._run(_wire.points(sid, values, seq, horizon, level))

    def stream(self, sid: str, seq: int | None = None) -> AsyncStream:
        """An `AsyncStream` (see `Client.stream`)."""
        return AsyncStream(self, sid, seq)

    # -- VMA
    async def add_exemplars(
        self, sid: str, exemplars: Iterable[tuple[ImageLike, str | int]]
    ) -> AddedExemplars:
        """See `Client.add_exemplars`."""
        return await self._run(_wire.add_exemplars(sid, exemplars))

    async def list_exemplars(
        self, sid: str, offset: int = 0, limit: int = 100, images: bool = False
    ) -> ExemplarPage:
        """See `Client.list_exemplars`."""
        return await self._run(_wire.list_exemplars(sid, offset, limit, images))

    async def delete_exemplar(self, sid: str, eid: int) -> None:
        """See `Client.delete_exemplar`."""
        await self._run(_wire.delete_exemplar(sid, eid))

    async def samples(
        self, sid: str, n: int = 8, label: str | int | None = None, exemplar_id: int | None = None,
        seed: int | None = None, format: Format = "png", temperature: float | None = None,
        anchor: float | None = None,
    ) -> SampleSet:  # fmt: skip
        """See `Client.samples`."""
        return await self._run(_wire.samples(sid, n, label, exemplar_id, seed, format, temperature, anchor))

    async def classify(
        self, sid: str, images: ImageLike | Sequence[ImageLike], method: Method | None = None,
        samples: int | None = None, top_k: int | None = None, seed: int | None = None,
    ) -> ClassifyReply:  # fmt: skip
        """See `Client.classify`."""
        return await self._run(_wire.classify(sid, images, method, samples, top_k, seed))


class Stream:
    """A MemNet session's stream that keeps the seq of the next chunk.

    `send` posts a chunk at `seq` and moves `seq` to the reply's step. A lost reply (dropped
    connection, read timeout, 503, 504) or a 429 is retried with the same seq, which the server
    applies once. A Conflict (another writer moved the session) is raised and `seq` is left as it
    was: `resync()` takes the session's step if skipping ahead is what you want.
    """

    def __init__(self, client: Client, sid: str, seq: int | None = None) -> None:
        self.client = client
        self.sid = sid
        self.seq = seq

    def send(self, values: Any, horizon: int = 0, level: Iterable[float] | None = None) -> PointsReply:
        """Apply the next chunk (T x D, or T numbers when D = 1); see `Client.points`."""
        if self.seq is None:
            self.resync()
        reply = self.client.points(self.sid, values, self.seq, horizon, level)
        self.seq = reply.step
        return reply

    def resync(self) -> int:
        """Set `seq` to the session's step, and return it."""
        self.seq = self.client.get_session(self.sid).step
        return self.seq


class AsyncStream:
    """The asynchronous twin of `Stream`."""

    def __init__(self, client: AsyncClient, sid: str, seq: int | None = None) -> None:
        self.client = client
        self.sid = sid
        self.seq = seq

    async def send(self, values: Any, horizon: int = 0, level: Iterable[float] | None = None) -> PointsReply:
        """See `Stream.send`."""
        if self.seq is None:
            await self.resync()
        reply = await self.client.points(self.sid, values, self.seq, horizon, level)
        self.seq = reply.step
        return reply

    async def resync(self) -> int:
        """See `Stream.resync`."""
        self.seq = (await self.client.get_session(self.sid)).step
        return self.seq
