"""``memserve chaos``: stream MemNet sessions through a service of its own while killing workers
and crashing Redis, then check that every acknowledged point was applied exactly once, in order.

The suite starts a redis-server (AOF, fsync on every write) on a port and in a directory of
its own, ``--workers`` CPU workers and one API (authentication off), all on the loopback
interface. ``--sessions`` clients stream chunks of points with ``seq`` for ``--seconds``,
retrying a chunk as it is on any failure (the service applies a retried chunk once) and
logging every acknowledged chunk with its predictions. Meanwhile a worker is killed with
SIGKILL about every ``--kill-every`` seconds (and restarted at once), and Redis is killed with
SIGKILL about every ``--redis-crash-every`` seconds and restarted on the same port from its
AOF. At the end every session is replayed from the client's log into a fresh session with no
faults, and the report gives the steps lost, doubled and reordered, the predictions that differ
from the replay, errors by status, and how long the service took to answer again after each
fault. Exit status: 0 nothing wrong; 1 an integrity failure, a session lost or refused, or a
fault the service never recovered from; 2 bad options or a service that would not start.

Run ``memserve chaos --help``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from tqdm import tqdm

from app.bench.chaos_procs import Child, Cluster
from app.bench.chaos_report import (
    Acked,
    FaultEvent,
    SessionCheck,
    Stream,
    Tally,
    build_report,
    format_report,
    recover,
    step_accounting,
)

PROG = "memserve chaos"
MAX_BACKOFF_S = 0.5
DRAIN_S = 60.0  # after --seconds, how long a client may still retry the chunk it has in hand
RESTART_WAIT_S = 60.0  # at the end, how long to wait for restarted workers to be ready
REPLAY_CHUNK = 256  # points per request of the replay
TIMINGS = ("startup_s", "streaming_s", "checks_s")  # between the marks a run takes


def build_parser() -> argparse.ArgumentParser:
    """Options of ``memserve chaos``."""
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Stream MemNet sessions through a service of its own (Redis with an append-only "
        "file, workers, an API) while killing workers and crashing Redis, then check that every "
        "acknowledged point was applied exactly once, in order, with the predictions of a replay.",
        epilog="Exit status: 0 nothing wrong; 1 a step lost, doubled or reordered, a prediction "
        "mismatched, a refusal, or a fault after which a session was never answered again; 2 bad "
        "options or a service that would not start.",
    )
    p.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    p.add_argument("--sessions", type=int, default=8, help="MemNet sessions streamed at once (default 8)")
    p.add_argument("--seconds", type=float, default=60.0, help="how long to stream (default 60)")
    p.add_argument(
        "--kill-every", type=float, default=10.0, metavar="S",
        help="kill a worker about every S seconds (default 10; 0: never)",
    )  # fmt: skip
    p.add_argument(
        "--redis-crash-every", type=float, default=30.0, metavar="S",
        help="crash Redis about every S seconds (default 30; 0: never)",
    )  # fmt: skip
    p.add_argument("--redis-down", type=float, default=1.0, metavar="S", help="Redis stays down S s (1)")
    p.add_argument("--seed", type=int, default=0, help="seeds the faults, chunk sizes and series")
    p.add_argument("--max-chunk", type=int, default=8, help="points per request, 1 to N (default 8)")
    p.add_argument("--model", default=None, help="MemNet model (default: the service's default)")
    p.add_argument("--tolerance", type=float, default=1e-5, help="relative and absolute, vs the replay")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--keep", metavar="DIR", default=None, help="keep the logs and Redis data in DIR")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = build_parser()
    args = p.parse_args(argv)
    if args.workers < 1 or args.sessions < 1 or args.max_chunk < 1 or args.seconds <= 0:
        p.error("--workers, --sessions and --max-chunk must be >= 1 and --seconds > 0")
    if min(args.kill_every, args.redis_crash_every, args.redis_down, args.tolerance) < 0:
        p.error("--kill-every, --redis-crash-every, --redis-down and --tolerance must be >= 0")
    # A Redis started on an old append-only file would bring back another run's keys.
    if args.keep and Path(args.keep).exists() and any(Path(args.keep).iterdir()):
        p.error(f"--keep {args.keep}: the directory is not empty")
    return args


class Signal:
    """A session's series: an offset, scale and period of its own, a little noise."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.base = rng.uniform(-100.0, 100.0)
        self.amp = 10 ** rng.uniform(-1.0, 1.5)
        self.period = rng.uniform(8.0, 64.0)

    def values(self, start: int, n: int, dim: int) -> list[list[float]]:
        w = 2 * math.pi / self.period
        return [
            [
                self.base + self.amp * (math.sin(w * t + d) + 0.05 * self.rng.gauss(0.0, 1.0))
                for d in range(dim)
            ]
            for t in range(start, start + n)
        ]


async def post_points(
    http: httpx.AsyncClient, sid: str, body: dict[str, Any], request_id: str = ""
) -> tuple[str, Any, float]:
    """One POST of a chunk: `"200"` or `"<status> <slug>"` or the transport error's name, the
    parsed body, and Retry-After in seconds. `request_id` goes into the service's log lines."""
    headers = {"X-Request-ID": request_id} if request_id else None
    try:
        resp = await http.post(f"/v1/sessions/{sid}/points", json=body, headers=headers)
    except httpx.TransportError as e:
        return type(e).__name__, None, 0.0
    if resp.status_code == 200:
        return "200", resp.json(), 0.0
    return problem_key(resp)


def problem_key(resp: httpx.Response) -> tuple[str, Any, float]:
    """`"<status> <slug>"`, the parsed body and Retry-After (seconds) of a non-200 reply."""
    try:
        body = resp.json()
    except ValueError:
        body = None
    slug = str(body.get("type", "")).rsplit("/", 1)[-1] if isinstance(body, dict) else ""
    try:
        retry = float(resp.headers.get("retry-after", "0"))
    except ValueError:
        retry = 0.0
    return f"{resp.status_code} {slug}".strip(), body, retry


class Run:
    """One chaos run against a started `Cluster`."""

    def __init__(self, args: argparse.Namespace, cluster: Cluster) -> None:
        self.args = args
        self.cluster = cluster
        self.rng = random.Random(args.seed)
        self.t0, self.t0_wall = time.monotonic(), time.time()
        self.tally = Tally()
        self.faults: list[FaultEvent] = []
        self.streams: list[Stream] = []
        self.redis_down = False  # the injector has Redis down on purpose: the watcher leaves it
        self.faults_end = 0.0

    def now(self) -> float:
        return time.monotonic() - self.t0

    # -- clients
    async def create(self, http: httpx.AsyncClient, index: int) -> Stream:
        info = await create_session(http, self.args.model)
        return Stream(index, info["id"], info["model"], int(info.get("input_dim") or 1))

    async def drive(self, http: httpx.AsyncClient, s: Stream, stop_at: float) -> None:
        """Closed loop: send a chunk, retry it until acknowledged, log it, send the next."""
        rng = random.Random(f"{self.args.seed}:{s.index}")
        signal = Signal(rng)
        while self.now() < stop_at and s.stopped is None:
            values = signal.values(s.seq, rng.randint(1, self.args.max_chunk), s.dim)
            reply = await self.send(http, s, values, stop_at + DRAIN_S)
            if reply is None:
                return
            if reply.get("seq") != s.seq or reply.get("step") != s.seq + len(values):
                s.wrong_replies += 1
            if len(reply.get("predictions") or []) != len(values):
                s.wrong_replies += 1
            self.tally.repeats += bool(reply.get("repeat"))
            s.chunks.append(Acked(s.seq, values, reply.get("predictions") or []))
            s.seq += len(values)

    async def send(
        self, http: httpx.AsyncClient, s: Stream, values: list[list[float]], give_up_at: float
    ) -> dict[str, Any] | None:
        """POST the chunk until a 200; None if refused (the stream stops) or past `give_up_at`."""
        body = {"values": values, "seq": s.seq}
        attempt = 0
        while True:
            started = self.now()
            # Names the attempt in the service's logs, to trace a finding to its jobs.
            request_id = f"chaos-{s.index}-{s.seq}-{attempt}"
            key, payload, retry = await post_points(http, s.sid, body, request_id)
            done = s.last_attempt = self.now()
            self.tally.requests += 1
            if key == "200":
                self.tally.ok += 1
                self.tally.successes.append((started, done, s.index))
                return dict(payload)
            self.tally.errors[key] += 1
            self.tally.failures.append((started, done, key, request_id))
            self.tally.retried_chunks += attempt == 0
            if self.refused(s, key, payload, len(values)) or done > give_up_at:
                s.pending = len(values)
                s.stopped = s.stopped or f"no reply by the end of the drain (last: {key})"
                return None
            await asyncio.sleep(min(MAX_BACKOFF_S, max(retry, 0.02 * 2**attempt)) * random.uniform(0.8, 1.2))
            attempt += 1

    def refused(self, s: Stream, key: str, payload: Any, n: int) -> bool:
        """A refusal no retry can change: a 409 (the service lost or doubled steps), a 404 (the
        session is gone) or another 4xx but 429. Recorded on the stream."""
        status = int(key.split()[0]) if key[:3].isdigit() else 0
        if status == 409 and isinstance(payload, dict):
            s.conflicts.append(
                {"seq": s.seq, "points": n, "expected_seq": int(payload.get("expected_seq", -1))}
            )
        if 400 <= status < 500 and status != 429:
            s.stopped = f"{key} at seq {s.seq}"
            return True
        return False

    # -- faults
    def _interval(self, every: float) -> float:
        return every * self.rng.uniform(0.5, 1.5) if every > 0 else math.inf

    async def inject(self) -> None:
        """Kill workers and crash Redis on a seeded schedule until `faults_end`."""
        next_kill = self._interval(self.args.kill_every)
        next_crash = self._interval(self.args.redis_crash_every)
        while min(next_kill, next_crash) <= self.faults_end:
            at = min(next_kill, next_crash)
            await asyncio.sleep(max(0.0, at - self.now()))
            if at == next_kill:
                self.kill_worker()
                next_kill += self._interval(self.args.kill_every)
            else:
                await self.crash_redis()
                next_crash += self._interval(self.args.redis_crash_every)

    def kill_worker(self) -> None:
        slots = [i for i, w in enumerate(self.cluster.workers) if w is not None and w.alive()]
        if not slots:
            return
        slot = self.rng.choice(slots)
        child = self.cluster.workers[slot]
        assert child is not None
        child.kill()
        self.faults.append(FaultEvent("worker kill", self.now(), f"worker{slot} pid {child.pid}"))
        self.cluster.start_worker(slot)

    async def crash_redis(self) -> None:
        child = self.cluster.redis
        assert child is not None
        child.kill()
        event = FaultEvent("redis crash", self.now(), f"redis-server pid {child.pid}")
        self.faults.append(event)
        await self.restart_redis(event, self.args.redis_down)

    async def restart_redis(self, event: FaultEvent, after_s: float) -> None:
        """Start Redis again on its port and AOF directory, `after_s` seconds from now."""
        self.redis_down = True
        try:
            await asyncio.sleep(after_s)
            self.cluster.start_redis()
            event.back_at = await asyncio.to_thread(self.cluster.wait_redis) - self.t0
        finally:
            self.redis_down = False

    async def watch(self) -> None:
        """Restart whatever exits without being killed on purpose (each is a finding), and note
        when restarted workers are ready."""
        while True:
            await asyncio.sleep(0.2)
            for slot, w in enumerate(self.cluster.workers):
                if w is not None and not w.alive():
                    self.exited("worker exit", w, f"worker{slot} pid {w.pid}")
                    self.cluster.start_worker(slot)
                elif w is not None and w.ready_at is None and self.cluster.worker_ready(w):
                    self.note_worker_ready(slot, w.ready_at - self.t0)  # type: ignore[operator]
            api = self.cluster.api
            if api is not None and not api.alive():
                self.exited("api exit", api, f"api pid {api.pid}")
                self.cluster.start_api()
            redis_child = self.cluster.redis
            if redis_child is not None and not redis_child.alive() and not self.redis_down:
                event = self.exited("redis exit", redis_child, f"redis-server pid {redis_child.pid}")
                await self.restart_redis(event, 0.0)

    def exited(self, kind: str, child: Child, target: str) -> FaultEvent:
        """Record a process that exited by itself, with the end of its log."""
        child.kill()  # reaps it and closes its log
        tail = child.log_tail(4000).strip().splitlines()[-6:]
        detail = f"exit code {child.proc.returncode}; {child.log_path}: " + " | ".join(tail)
        event = FaultEvent(kind, self.now(), target, detail=detail)
        self.faults.append(event)
        return event

    def note_worker_ready(self, slot: int, at: float) -> None:
        for event in reversed(self.faults):
            if event.kind in ("worker kill", "worker exit") and event.target.startswith(f"worker{slot} "):
                event.back_at = event.back_at or at
                return

    async def progress(self, stop_at: float) -> None:
        bar = tqdm(
            total=round(stop_at), desc="chaos", disable=self.args.no_progress or None,
            bar_format="{desc}: {percentage:3.0f}%|{bar}| {n}/{total} s [{elapsed}<{remaining}{postfix}]",
        )  # fmt: skip
        try:
            while True:
                await asyncio.sleep(0.5)
                bar.n = min(round(self.now()), bar.total)
                kills = sum(f.kind == "worker kill" for f in self.faults)
                crashes = sum(f.kind == "redis crash" for f in self.faults)
                bar.set_postfix(ok=self.tally.ok, failed=sum(self.tally.errors.values()), kills=kills,
                                redis=crashes)  # fmt: skip
        finally:
            bar.close()

    async def workers_ready(self, timeout: float) -> None:
        """Wait (while the watcher notes them) until the workers restarted last are ready, so
        that every restart is counted and the replay runs on the whole pool."""
        deadline = self.now() + timeout
        while self.now() < deadline and any(
            w is not None and w.ready_at is None for w in self.cluster.workers
        ):
            await asyncio.sleep(0.2)

    async def stream_all(self, http: httpx.AsyncClient) -> None:
        """Create the sessions, then stream them while the faults run."""
        self.streams = list(await asyncio.gather(*(self.create(http, i) for i in range(self.args.sessions))))
        self.t0, self.t0_wall = time.monotonic(), time.time()
        stop_at = self.args.seconds
        # No fault in the last stretch: the run ends with the service recovered from each one.
        self.faults_end = stop_at - max(5.0, 0.15 * stop_at)
        helpers = [asyncio.create_task(c) for c in (self.watch(), self.progress(stop_at))]
        injector = asyncio.create_task(self.inject())
        try:
            await asyncio.gather(*(self.drive(http, s, stop_at) for s in self.streams))
            await injector
            await self.workers_ready(RESTART_WAIT_S)
        finally:
            for task in [*helpers, injector]:
                task.cancel()
            await asyncio.gather(*helpers, injector, return_exceptions=True)


async def create_session(http: httpx.AsyncClient, model: str | None) -> dict[str, Any]:
    """A new MemNet session (of `model`, or the service's default); retried while the service
    answers 429, 5xx or not at all (a restart of Redis leaves it so for a moment)."""
    body: dict[str, Any] = {"kind": "memnet", **({"model": model} if model else {})}
    for _ in range(100):
        with contextlib.suppress(httpx.TransportError):
            r = await http.post("/v1/sessions", json=body)
            if r.status_code == 201:
                return dict(r.json())
            if r.status_code != 429 and r.status_code < 500:
                raise RuntimeError(f"could not create a session: {r.status_code} {r.text}")
        await asyncio.sleep(0.2)
    raise RuntimeError("could not create a session: the service kept failing")


async def server_step(http: httpx.AsyncClient, sid: str) -> int | None:
    """The session's step on the service; None if it is gone (404)."""
    for _ in range(100):
        with contextlib.suppress(httpx.TransportError):
            r = await http.get(f"/v1/sessions/{sid}")
            if r.status_code == 200:
                return int(r.json()["step"])
            if r.status_code == 404:
                return None
        await asyncio.sleep(0.2)
    raise RuntimeError(f"could not read session {sid} after the run")


def merged(chunks: list[Acked], most: int) -> list[list[list[float]]]:
    """The logged chunks' values joined into requests of at most `most` points (a replay needs
    only the order of the points, and fewer requests make it fast)."""
    out: list[list[list[float]]] = []
    for c in chunks:
        if out and len(out[-1]) + len(c.values) <= most:
            out[-1] += c.values
        else:
            out.append(list(c.values))
    return out


async def replay(http: httpx.AsyncClient, model: str, chunks: list[Acked]) -> list[list[float]]:
    """The predictions of a fresh session of `model` fed the logged points, with no faults."""
    sid, seq, got = (await create_session(http, model))["id"], 0, []
    for values in merged(chunks, REPLAY_CHUNK):
        for _ in range(100):
            key, payload, _retry = await post_points(http, sid, {"values": values, "seq": seq})
            if key == "200":
                break
            await asyncio.sleep(0.2)
        else:
            raise RuntimeError(f"replay of session {sid} failed at seq {seq}: {key}")
        got += payload["predictions"]
        seq += len(values)
    with contextlib.suppress(httpx.TransportError):
        await http.delete(f"/v1/sessions/{sid}")  # a replay session left behind harms nothing
    return got


async def check_stream(http: httpx.AsyncClient, s: Stream, tolerance: float) -> SessionCheck:
    """The session's step on the service against the client's log, and the log against a replay."""
    step = await server_step(http, s.sid)
    check = SessionCheck(s.sid, s.model, s.seq, step, s.pending, s.stopped, reordered=s.wrong_replies)
    check.conflicts = s.conflicts
    check.lost, check.doubled = step_accounting(s.seq, s.pending, step)
    logged = [p for c in s.chunks for p in c.predictions]
    if not logged:
        return check
    want = np.asarray(await replay(http, s.model, s.chunks), dtype=np.float64)
    got = np.asarray(logged, dtype=np.float64)
    if got.shape != want.shape:
        check.mismatched, check.replayed = len(logged), len(logged)
        return check
    diff = np.abs(got - want)
    bad = diff > tolerance + tolerance * np.abs(want)
    check.mismatched = int(bad.reshape(len(bad), -1).any(axis=1).sum())
    check.replayed, check.max_diff = len(logged), float(diff.max())
    return check


async def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """Start the service, run the chaos, check, stop everything; the report as a dict."""
    cluster = Cluster(workdir, args.workers)
    if not args.no_progress:
        print(f"{PROG}: starting Redis, {args.workers} worker(s) and the API (logs in {cluster.logs})",
              file=sys.stderr)  # fmt: skip
    try:
        marks = [time.monotonic()]
        await asyncio.to_thread(cluster.start)
        marks.append(time.monotonic())
        chaos = Run(args, cluster)
        limits = httpx.Limits(max_connections=args.sessions + 8, max_keepalive_connections=args.sessions + 8)
        timeout = float(cluster.env["MEMSERVE_REQUEST_TIMEOUT_S"]) + 5.0
        async with httpx.AsyncClient(base_url=cluster.url, timeout=timeout, limits=limits) as http:
            await chaos.stream_all(http)
            marks.append(time.monotonic())
            checks = list(
                await asyncio.gather(*(check_stream(http, s, args.tolerance) for s in chaos.streams))
            )
            marks.append(time.monotonic())
        recoveries = recover(chaos.faults, chaos.tally, {s.index: s.last_attempt for s in chaos.streams})
        timings = {
            # The wall-clock start of streaming, to find a fault's moment in the service's logs.
            "streaming_started_at": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(chaos.t0_wall)),
            **{name: round(b - a, 2) for name, a, b in zip(TIMINGS, marks, marks[1:], strict=False)},
        }
        return build_report(args, cluster.env, chaos.tally, recoveries, checks, timings)
    finally:
        await asyncio.to_thread(cluster.stop)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``memserve chaos``; the exit status."""
    args = parse_args(argv)
    workdir = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="memserve-chaos-"))
    keep = bool(args.keep)
    try:
        report = asyncio.run(run(args, workdir))
    except RuntimeError as e:
        print(f"{PROG}: {e}\n(logs kept in {workdir / 'logs'})", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted (logs in {workdir / 'logs'})", file=sys.stderr)
        return 130
    failed = not report["result"]["passed"]
    if failed and not keep:
        keep = True
        report["logs"] = str(workdir / "logs")
    print(format_report(report) if not args.json else json.dumps(report, indent=2))
    if not keep:
        shutil.rmtree(workdir, ignore_errors=True)
    return 1 if failed else 0
