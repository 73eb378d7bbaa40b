"""The worker process: loads checkpoints, reads batches of jobs, runs the models.

Start it with `memserve worker` or, from `memserve serve`, as a spawned process. It
heartbeats into Redis (the API's readiness and other workers' orphan claiming read it),
and on SIGTERM/SIGINT it finishes the batch in hand, acknowledges it and exits.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import redis
import torch
from redis.exceptions import RedisClusterException

from app import registry
from app.config import Settings, SettingsError, cpu_set
from app.logs import log_context, setup_logging
from app.queue.messages import job_header
from app.queue.reader import BatchReader, Delivery
from app.runtime import tune_gc
from app.store.client import sync_client
from app.store.keys import Keys, entry_ms
from app.store.worker_stats import WorkerStats
from app.store.workers import WorkerRegistry
from app.worker.backends import open_backend
from app.worker.budget import WorkBudget
from app.worker.model_set import ModelSet
from app.worker.runner import Outcome, Runner

log = logging.getLogger("memserve.worker")

# What a lost or failing-over Redis raises: plain clients raise RedisError, cluster clients
# also RedisClusterException (no node reachable, slots moving), which is not one.
REDIS_DOWN = (redis.RedisError, RedisClusterException)


@dataclass
class Counters:
    """Cumulative work done, published in the heartbeat (the benchmark reads them)."""

    batches: int = 0
    jobs: int = 0
    steps: int = 0
    reclaimed: int = 0
    errors: int = 0


class Worker:
    """One worker: a consumer of the `workers` group on every model kind's stream."""

    def __init__(self, settings: Settings, worker_id: str | None = None) -> None:
        self.settings = settings
        registry.register_extra(settings.extra_kinds)
        # Each kind's worker half, before any checkpoint is loaded: importing it registers a
        # model class `models.checkpoint` does not list (app.registry, Kind.worker).
        halves = {kind.name: kind.worker() for kind in registry.kinds()}
        self.keys = Keys(settings.key_prefix)
        self.id = worker_id or f"{socket.gethostname()}-{os.getpid()}-{os.urandom(3).hex()}"
        self.r = sync_client(settings)
        self.registry = WorkerRegistry(self.r, self.keys)
        self.backend = open_backend(settings)
        self.device = self.backend.device
        self.counters = Counters()
        self.stats = WorkerStats()  # batch sizes and times per kind, for the API's /metrics
        self.stopping = threading.Event()
        self.model_set = ModelSet(settings, self.backend)
        self._load_models()
        ms = self.model_set
        self.budget = WorkBudget.for_worker(settings, self.device)
        # One runner per served kind, built by the kind's own worker half (app.registry).
        self.by_kind: dict[str, Runner[Any]] = {}
        for name, half in halves.items():
            runner = half.runner(self.r, self.keys, ms.models[name], settings, ms.latest, self.budget)
            runner.on_missing = ms.ensure
            self.by_kind[name] = runner
        self.runners: dict[str, Runner[Any]] = {}  # by stream: the kinds this worker has a model of
        self._add_streams()
        self.reader = BatchReader(
            self.r, self.keys, list(self.runners), self.id, settings.max_batch, settings.max_wait_ms
        )
        self._retry: list[Delivery] = []
        self._next: list[Delivery] = []  # read with the last acknowledgement
        self._held: list[Delivery] = []  # read, past their kind's batch cap: for the next batches

    def _load_models(self) -> None:
        if self.model_set.load_new():
            return
        skipped = "; ".join(f"{n} {v}: {why}" for (n, v), why in self.model_set.scanner.skipped.items())
        raise SettingsError(
            f"no complete MemNet or VMA checkpoint in {self.settings.checkpoint_dir}"
            + (f" ({skipped})" if skipped else "")
            + ": set MEMSERVE_CHECKPOINT_DIR"
        )

    def _add_streams(self) -> list[str]:
        """Read a kind's stream once this worker has a model of the kind (one loaded later too);
        the streams added."""
        added = []
        for kind, runner in self.by_kind.items():
            stream = self.keys.stream(kind)
            if self.model_set.models[kind] and stream not in self.runners:
                self.runners[stream] = runner
                added.append(stream)
        return added

    def _reload(self) -> None:
        """Load the versions dropped into the checkpoint directory since the last look."""
        if self.model_set.poll():
            for stream in self._add_streams():
                self.reader.add_stream(stream)
            self.heartbeat()  # tell the API at once: it hands new versions out only once loaded

    def heartbeat(self) -> None:
        """Publish liveness and counters; expires unless renewed."""
        c = self.counters
        beat = {
            "id": self.id, "pid": os.getpid(), "host": socket.gethostname(),
            **self.backend.describe(), **self.model_set.beat, "cpus": sorted(os.sched_getaffinity(0)),
            "batches": c.batches, "jobs": c.jobs, "steps": c.steps,
            "reclaimed": c.reclaimed, "errors": c.errors, "time": time.time(),
            **{k: v for runner in self.by_kind.values() for k, v in runner.beat().items()},
            "stats": self.stats.snapshot(),
        }  # fmt: skip
        self.registry.beat(self.id, beat, self.settings.heartbeat_ttl_s)

    def _register(self) -> bool:
        """Join the consumer group and heartbeat; False while Redis is unreachable (a worker that
        starts during a Redis outage waits for it, as a running one does)."""
        try:
            self.reader.ensure_group()
            self.heartbeat()
            return True
        except REDIS_DOWN as e:
            log.warning("redis unreachable at start (%s); retrying in 1 s", e)
            return False

    def _heartbeat_loop(self) -> None:
        while not self.stopping.wait(self.settings.heartbeat_interval_s):
            try:
                self.heartbeat()
            except REDIS_DOWN as e:
                log.warning("heartbeat failed: %s", e)

    def live_workers(self) -> set[str]:
        """Ids of the workers whose heartbeat has not expired (one range query, no SCAN)."""
        return self.registry.live_ids()

    def run(self) -> None:
        """Serve until asked to stop."""
        while not self._register() and not self.stopping.wait(1.0):
            pass
        threading.Thread(target=self._heartbeat_loop, name="heartbeat", daemon=True).start()
        where = self.backend.describe()
        log.info(
            "worker %s ready (%s backend on %s%s, max_batch %d)",
            self.id, where["backend"], where["device"],
            f" via {where['provider']}" if where["provider"] else "", self.settings.max_batch,
        )  # fmt: skip
        next_claim = 0.0
        while not self.stopping.is_set():
            try:
                if time.monotonic() >= next_claim:
                    claimed = self.reader.claim_orphans(self.live_workers())
                    claimed += self.reader.claim_stuck(self.settings.stuck_job_s)
                    self.counters.reclaimed += len(claimed)
                    self._retry += claimed
                    next_claim = time.monotonic() + self.settings.claim_interval_s
                self._reload()
                self._one_batch()
            except REDIS_DOWN as e:
                # Unacknowledged jobs stay pending; they are re-run once Redis is back.
                log.warning("redis error: %s; retrying in 1 s", e)
                self.stopping.wait(1.0)
        self._finish_in_hand()
        self.registry.leave(self.id)
        log.info("worker %s stopped", self.id)

    def _finish_in_hand(self) -> None:
        """Run the jobs in hand when asked to stop (read ahead, held past a cap, to run again);
        each batch takes at least one of them, and none are read meanwhile."""
        for _ in range(self.settings.max_batch * 4):
            if not (self._next or self._retry or self._held):
                return
            try:
                self._one_batch()
            except REDIS_DOWN as e:
                log.warning("could not finish the jobs in hand (%s); another worker will", e)
                return

    def _one_batch(self) -> None:
        batch, isolated = self._take_batch()
        if not isolated:
            batch = self._cap(batch)
        if not batch:
            return
        started = time.perf_counter()
        suspect = batch[0] if isolated and batch[0].deliveries > 1 else None
        if suspect is not None:
            self.reader.attempt(suspect)
        if self.settings.fault_batch_delay_ms:
            time.sleep(self.settings.fault_batch_delay_ms / 1000)
        crash_on = self.settings.fault_crash_request
        if crash_on and crash_on in _request_ids(batch) and batch[0].attempts <= self.settings.max_deliveries:
            log.error("fault injection: dying with a batch of %d jobs in hand", len(batch))
            os._exit(137)  # as the kernel's OOM killer would: no cleanup, no acknowledgement
        # Every line logged while the batch runs names the requests of its jobs (read from the
        # jobs only if a line is actually logged).
        with log_context(request_ids=lambda: _request_ids(batch)):
            try:
                outs = self._process(batch)
            except REDIS_DOWN:
                self._retry = batch
                raise
            except Exception:
                # Unknown failure: try again, counting it; past max_deliveries a job is refused.
                log.exception("batch of %d jobs failed", len(batch))
                self.counters.errors += 1
                for d in batch:
                    d.deliveries += 1
                self._retry = batch
                return
        # Replies first (an acked job was answered), then the jobs waiting meanwhile.
        acks = {stream: out.ack for stream, out in outs.items()}
        messages = [m for out in outs.values() for m in out.messages()]
        # A job run alone leaves the jobs read with the last acknowledgement waiting in _next.
        # Jobs in hand count against the read, so that a worker holds no more than it would
        # without caps: the jobs it holds are no other worker's to take.
        room = max(self.settings.max_batch - len(self._held), 0)
        read_next = 0 if isolated or self.stopping.is_set() else room
        try:
            taken = self.reader.ack(acks, messages, read_next=read_next)
            if suspect is not None and suspect.entry_id in acks.get(suspect.stream, ()):
                self.reader.forget_attempts([suspect])
        except REDIS_DOWN:
            self._retry = batch  # committed but neither answered nor acknowledged: the re-run replies
            raise
        if read_next:
            self._next = taken
        busy_s = (time.perf_counter() - started) / max(1, sum(len(out.ack) for out in outs.values()))
        for stream, out in outs.items():
            self._retry += out.retry
            self.counters.jobs += len(out.ack)
            self.counters.steps += out.steps
            self.stats.batch_done(self.runners[stream].kind, len(out.ack), out.steps, busy_s * len(out.ack))
        self.counters.batches += 1
        if self.settings.access_log:
            self._log_jobs(batch, outs)

    def _take_batch(self) -> tuple[list[Delivery], bool]:
        """The next batch, and whether it is one job taken alone: jobs to run again first, then
        those read with the last acknowledgement, else new ones. While a job delivered before
        without an answer waits, jobs run one at a time, in order: such a job may be what failed
        or killed a worker, and alone it can take no batch-mate down with it again; past
        max_deliveries it is refused (`cannot_run`)."""
        retry, self._retry = self._retry, []
        if any(d.deliveries > 1 for d in retry):
            self._retry = retry[1:]
            return retry[:1], True
        batch = retry + self._held + self._next
        self._held, self._next = [], []
        if not batch:
            batch = self.reader.read_batch(block_ms=500)
        elif len(batch) < self.settings.max_batch and retry:
            batch += self.reader.read_batch(block_ms=None)
        return batch, False

    def _cap(self, batch: list[Delivery]) -> list[Delivery]:
        """The batch within each kind's cap (`Runner.batch_cap`), in order; the rest held for the
        next batches, ahead of the jobs read after them."""
        in_hand = Counter(d.stream for d in batch)
        caps = {stream: self.runners[stream].batch_cap(n) for stream, n in in_hand.items()}
        taken: Counter[str] = Counter()
        keep: list[Delivery] = []
        for d in batch:
            cap = caps[d.stream]
            if cap is not None and taken[d.stream] >= cap:
                self._held.append(d)
                continue
            taken[d.stream] += 1
            keep.append(d)
        return keep

    def _log_jobs(self, batch: list[Delivery], outs: dict[str, Outcome]) -> None:
        """One line per job answered (MEMSERVE_ACCESS_LOG), with the request id it came with."""
        acked = {entry_id for out in outs.values() for entry_id in out.ack}
        now_ms = time.time() * 1000
        for d in batch:
            if d.entry_id not in acked:
                continue
            head = job_header(d.fields)
            extra = {
                "job": head.get("job", ""), "sid": head.get("sid", ""), "op": head.get("op", ""),
                "kind": self.runners[d.stream].kind, "deliveries": d.deliveries,
                "batch_jobs": len(batch), "since_queued_ms": round(now_ms - entry_ms(d.entry_id), 1),
            }  # fmt: skip
            if head.get("rid"):
                extra["request_id"] = str(head["rid"])
            log.info("%s job %s done", extra["op"], extra["job"], extra=extra)

    def _process(self, batch: list[Delivery]) -> dict[str, Outcome]:
        """Each stream's jobs to the runner of its model kind."""
        by_stream: dict[str, list[Delivery]] = {}
        for d in batch:
            by_stream.setdefault(d.stream, []).append(d)
        outs: dict[str, Outcome] = {}
        for stream, ds in by_stream.items():
            started = time.perf_counter()
            outs[stream] = self.runners[stream].process(ds)
            self.stats.batch_ran(self.runners[stream].kind, len(ds), time.perf_counter() - started)
        return outs


def _request_ids(batch: list[Delivery]) -> list[str]:
    """The request ids the batch's jobs came with (for log lines about the batch)."""
    return [str(rid) for d in batch if (rid := job_header(d.fields).get("rid"))]


def worker_cores(spec: str) -> set[int]:
    """The cores of ``MEMSERVE_WORKER_CPUS``, checked against those this process may use."""
    cores = cpu_set(spec)
    allowed = os.sched_getaffinity(0)
    if not cores <= allowed:
        raise SettingsError(f"MEMSERVE_WORKER_CPUS={spec}: this process may run on cores {sorted(allowed)}")
    return cores


def pin_cpus(spec: str) -> None:
    """Keep this process on the cores of ``MEMSERVE_WORKER_CPUS`` (nothing when it is empty)."""
    if cores := worker_cores(spec):
        # Per thread on Linux: the ones that exist already (some libraries start theirs on
        # import) each, and threads started later inherit the caller's.
        tasks = Path("/proc/self/task")
        for tid in [int(t.name) for t in tasks.iterdir()] if tasks.is_dir() else [0]:
            os.sched_setaffinity(tid, cores)


def run_worker(settings: Settings, worker_id: str | None = None) -> None:
    """Entry point of a worker process (also the target of spawned workers)."""
    setup_logging(settings.log_level, settings.log_format)
    pin_cpus(settings.worker_cpus)  # before any thread pool exists, so that every thread inherits it
    torch.set_num_threads(settings.torch_threads)
    worker = Worker(settings, worker_id)

    def _stop(signum: int, _frame: FrameType | None) -> None:
        log.info("signal %d: finishing the batch in hand", signum)
        worker.stopping.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    tune_gc()
    worker.run()
