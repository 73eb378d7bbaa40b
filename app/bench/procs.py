"""Run benchmark shards in spawned client processes that share one wall-clock schedule.

One Python process tops out at roughly one core of request handling; on a small machine
that can be below what the server does, so ``--procs N`` splits the sessions over N
processes. Each child reports ready, waits for the parent's ``go`` (which carries the
schedule), runs its shard on its own event loop and sends back its raw samples.
"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import queue
from dataclasses import astuple
from multiprocessing.process import BaseProcess
from typing import Any

from app.bench.client import Phases, ShardSpec, run_coro, run_shard
from app.bench.stats import ShardResult

READY_TIMEOUT_S = 60.0


def _child(
    runner: Any, spec: ShardSpec, ready: Any, go: Any, schedule: Any, results: Any, progress: Any
) -> None:
    """Body of a spawned client process (module-level so spawn can import it)."""
    ready.put(spec.slot)
    go.wait()
    phases = Phases(*schedule[:])
    try:
        results.put((spec.slot, run_coro(runner(spec, phases, progress))))
    except BaseException as exc:
        results.put((spec.slot, f"{type(exc).__name__}: {exc}"))
        raise


class ProcessShards:
    """A group of client processes, one per :class:`ShardSpec`, each running ``runner`` (a
    module-level coroutine function, so spawn can pickle it by name) on its shard."""

    def __init__(self, specs: list[ShardSpec], runner: Any = run_shard) -> None:
        # spawn, not fork: the parent already runs an event loop and holds open sockets.
        ctx = mp.get_context("spawn")
        self.specs = specs
        self.ready = ctx.Queue()
        self.results_q = ctx.Queue()
        self.go_event = ctx.Event()
        self.schedule = ctx.Array("d", 5, lock=False)
        # One writer per slot, so no lock: the bar only needs approximate counts.
        self.progress = ctx.Array("q", len(specs), lock=False)
        self.procs: list[BaseProcess] = [
            ctx.Process(
                target=_child,
                args=(runner, s, self.ready, self.go_event, self.schedule, self.results_q, self.progress),
                name=f"bench-client-{s.slot}",
                daemon=True,
            )
            for s in specs
        ]

    async def start(self) -> None:
        """Start the children and wait until each has imported everything and is ready."""
        for p in self.procs:
            p.start()
        for _ in self.procs:
            await asyncio.to_thread(self.ready.get, True, READY_TIMEOUT_S)

    def go(self, phases: Phases) -> None:
        """Publish the schedule and release the children."""
        self.schedule[:] = list(astuple(phases))
        self.go_event.set()

    async def results(self, timeout_s: float) -> list[ShardResult]:
        """Collect every child's result (in slot order); raises if a child failed."""
        got: dict[int, ShardResult] = {}
        while len(got) < len(self.procs):
            try:
                slot, res = await asyncio.to_thread(self.results_q.get, True, timeout_s)
            except queue.Empty:
                raise RuntimeError("a client process did not report back") from None
            if not isinstance(res, ShardResult):
                raise RuntimeError(f"client process {slot} failed: {res}")
            got[slot] = res
        for p in self.procs:
            await asyncio.to_thread(p.join, 5.0)
        return [got[i] for i in sorted(got)]

    def close(self) -> None:
        """Stop any child still running (only after an error or interrupt)."""
        for p in self.procs:
            if p.is_alive():
                p.terminate()
                p.join(2.0)
