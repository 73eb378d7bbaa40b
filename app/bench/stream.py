"""``memserve bench stream``: closed-loop streaming load against a running memserve server.

Each session posts a chunk of points, waits for the reply and posts the next, so the
offered load adapts to the server and latency is not inflated by client-side queueing.
Before the measured window the same connections hammer the no-op ``GET /health/live``
to report what this client (and the HTTP stack) can do at all: the *ceiling*.

Run ``python -m app.bench.stream --help`` (or ``memserve bench stream --help``).
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import sys
import time
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson
from tqdm import tqdm

from app.bench.client import (
    Phases,
    Progress,
    ShardSpec,
    StreamSession,
    bounded_gather,
    call,
    make_http,
    run_coro,
    run_shard,
    session_phase,
    sleep_until,
)
from app.bench.procs import ProcessShards
from app.bench.stats import (
    BenchResult,
    MemoryReport,
    ShardResult,
    WorkerDelta,
    capacity_of,
    format_table,
    latency_summary,
    mean_or_none,
    merge_shards,
    raw_session_bytes,
    worker_delta,
    write_json,
)

# Largest chunk used to fill measured sessions to capacity; halved if the server refuses it.
TOP_UP_CHUNK = 256


def build_parser() -> argparse.ArgumentParser:
    """Argument parser for ``bench stream`` (the arguments after ``stream``)."""
    p = argparse.ArgumentParser(
        prog="memserve bench stream",
        description="Closed-loop streaming benchmark against a running memserve server.",
    )
    p.add_argument("--url", default="http://127.0.0.1:8000", help="server base URL")
    p.add_argument("--sessions", type=int, default=64, help="concurrent sessions (= connections)")
    p.add_argument("--points", type=int, default=1, help="points per request (chunk size P)")
    p.add_argument("--duration", type=float, default=20.0, help="measured window, seconds")
    p.add_argument("--warmup", type=float, default=3.0, help="unmeasured streaming first, s")
    p.add_argument("--ceiling", type=float, default=3.0, help="/health/live probe, s (0: skip)")
    p.add_argument("--model", default=None, help="model name (default: the server's default)")
    p.add_argument("--kind", default="memnet", help="session kind")
    p.add_argument("--dim", type=int, default=None, help="values per point (default: the model's)")
    p.add_argument("--procs", type=int, default=1, help="client processes sharing the sessions")
    p.add_argument("--timeout", type=float, default=30.0, help="per-request timeout, s")
    p.add_argument("--mem-sessions", type=int, default=4, help="sessions sampled for memory")
    p.add_argument("--level", default="", help="interval levels per request, e.g. 80,95 (default: none)")
    p.add_argument("--json", metavar="PATH", default=None, help="also write results as JSON")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = build_parser()
    args = p.parse_args(argv)
    if args.sessions < 1 or args.points < 1 or args.duration <= 0 or (args.dim or 1) < 1:
        p.error("--sessions, --points, --dim must be >= 1 and --duration > 0")
    if args.warmup < 0 or args.ceiling < 0 or args.mem_sessions < 0:
        p.error("--warmup, --ceiling and --mem-sessions must be >= 0")
    args.procs = max(1, min(args.procs, args.sessions))
    args.url = args.url.rstrip("/")
    return args


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


@dataclass
class LoadOutcome:
    shards: list[ShardResult]
    phases: Phases
    health_before: dict[str, Any] | None
    health_after: dict[str, Any] | None


def split_sessions(args: argparse.Namespace, sids: list[str]) -> list[ShardSpec]:
    """Deal sessions to ``args.procs`` shards in contiguous, near-equal slices."""
    n = max(1, min(args.procs, len(sids)))
    bounds = [len(sids) * i // n for i in range(n + 1)]
    return [
        ShardSpec(
            base_url=args.url,
            sids=tuple(sids[bounds[i] : bounds[i + 1]]),
            points=args.points,
            dim=args.dim,
            slot=i,
            first_index=bounds[i],
            timeout_s=args.timeout,
            ceiling=args.ceiling > 0,
            level=tuple(float(v) for v in getattr(args, "level", "").split(",") if v.strip()),
        )
        for i in range(n)
    ]


async def get_json(http: aiohttp.ClientSession, url: str) -> dict[str, Any] | None:
    """GET returning the JSON object body, or None; retries once because an idle pooled
    connection may have been closed by the server's keep-alive timeout."""
    for _ in range(2):
        status, body, _ = await call(http, "GET", url)
        if isinstance(status, int) and isinstance(body, dict):
            return body
    return None


async def create_sessions(
    http: aiohttp.ClientSession, args: argparse.Namespace
) -> tuple[list[str], str | None]:
    """Create ``args.sessions`` sessions; returns their ids and the model they run.

    Also sets ``args.dim`` from the reply's ``input_dim`` when ``--dim`` was not given.
    """
    payload: dict[str, Any] = {"kind": args.kind}
    if args.model:
        payload["model"] = args.model
    body = orjson.dumps(payload)

    async def one() -> tuple[int | str, Any]:
        status, reply, _ = await call(http, "POST", f"{args.url}/v1/sessions", body)
        return status, reply

    replies = await bounded_gather([one] * args.sessions)
    sids: list[str] = []
    model: str | None = args.model
    for r in replies:
        if isinstance(r, tuple) and r[0] in (200, 201) and isinstance(r[1], dict):
            sids.append(str(r[1]["id"]))
            model = model or r[1].get("model")
            if args.dim is None and isinstance(r[1].get("input_dim"), int):
                args.dim = r[1]["input_dim"]
        else:
            log(f"session create failed: {r!r:.200}")
    return sids, model


async def delete_sessions(http: aiohttp.ClientSession, base: str, sids: list[str]) -> None:
    async def one(sid: str) -> int | str:
        return (await call(http, "DELETE", f"{base}/v1/sessions/{sid}"))[0]

    statuses = await bounded_gather([functools.partial(one, sid) for sid in sids])
    failed = [s for s in statuses if s not in (200, 204, 404)]
    if failed:
        log(f"warning: {len(failed)} session deletes failed (e.g. {failed[0]!r})")


async def watch_window(
    http: aiohttp.ClientSession,
    args: argparse.Namespace,
    phases: Phases,
    progress: Progress,
    n_slots: int,
) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """Read worker counters at both ends of the measured window; show a time-based bar."""
    url = f"{args.url}/health/ready"
    log(f"ceiling {args.ceiling:g} s, warm-up {args.warmup:g} s, measuring {args.duration:g} s")
    await sleep_until(phases.measure_start)
    before = asyncio.ensure_future(get_json(http, url))
    bar = tqdm(
        total=args.duration,
        unit="s",
        disable=args.no_progress,
        bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f} s{postfix}",
    )
    last_n, last_t = 0, time.time()
    while (now := time.time()) < phases.measure_end:
        await asyncio.sleep(min(0.5, phases.measure_end - now))
        done, now = sum(progress[i] for i in range(n_slots)), time.time()
        rate = (done - last_n) / max(now - last_t, 1e-9)
        bar.set_postfix_str(f"{rate:,.0f} req/s", refresh=False)
        bar.update(min(now, phases.measure_end) - phases.measure_start - bar.n)
        last_n, last_t = done, now
    bar.close()
    return await before, await get_json(http, url)


async def run_load(http: aiohttp.ClientSession, args: argparse.Namespace, sids: list[str]) -> LoadOutcome:
    """Run the shards (in this process when ``--procs 1``) alongside the window watcher."""
    specs = split_sessions(args, sids)
    plan = (args.ceiling, args.warmup, args.duration)
    if len(specs) == 1:
        progress: Progress = [0]
        phases = Phases.plan(time.time() + 0.1, *plan)
        load = asyncio.ensure_future(run_shard(specs[0], phases, progress))
        health = await watch_window(http, args, phases, progress, 1)
        return LoadOutcome([await load], phases, *health)
    pool = ProcessShards(specs)
    try:
        await pool.start()
        # Children already run their event loops; a short lead lets all reach the start line.
        phases = Phases.plan(time.time() + 0.3, *plan)
        pool.go(phases)
        health = await watch_window(http, args, phases, pool.progress, len(specs))
        return LoadOutcome(await pool.results(args.timeout + 30), phases, *health)
    finally:
        pool.close()


async def top_up(http: aiohttp.ClientSession, base: str, sess: StreamSession, target: int) -> None:
    """Post extra points until the session has seen ``target`` steps (memory full)."""
    chunk, url = TOP_UP_CHUNK, f"{base}/v1/sessions/{sess.sid}/points"
    for _ in range(target + 64):  # bounded even if every chunk is halved to 1
        if sess.seq >= target:
            return
        n = min(chunk, target - sess.seq)
        status, reply, _ = await call(http, "POST", url, sess.body(n))
        sess.on_reply(status, reply, n)
        if status in (413, 422) and chunk > 1:
            chunk //= 2
        elif status not in (200, 409):
            log(f"top-up of {sess.sid} stopped: {status}")
            return


async def measure_memory(
    http: aiohttp.ClientSession,
    args: argparse.Namespace,
    sids: list[str],
    config: dict[str, Any] | None,
) -> MemoryReport | None:
    """Redis bytes of a few full sessions vs the raw float32 bytes the card implies."""
    if args.mem_sessions == 0 or not sids:
        return None
    config = config or {}
    sizes: list[float] = []
    capacity = capacity_of(config)
    for i, sid in enumerate(sids[: args.mem_sessions]):
        info = await get_json(http, f"{args.url}/v1/sessions/{sid}") or {}
        cap = info.get("capacity") if isinstance(info.get("capacity"), int) else capacity
        capacity = cap
        if cap is not None:
            step = int(info.get("step") or 0)
            sess = StreamSession(sid, session_phase(i), seq=step, dim=args.dim)  # memory probe: no levels
            await top_up(http, args.url, sess, cap)
            info = await get_json(http, f"{args.url}/v1/sessions/{sid}") or {}
        if isinstance(info.get("memory_bytes"), int | float):
            sizes.append(float(info["memory_bytes"]))
    note = "" if capacity is not None else "capacity unknown: sessions may not be full"
    return MemoryReport(
        sessions_measured=len(sizes),
        capacity=capacity,
        bytes_per_session=mean_or_none(sizes),
        raw_bytes=raw_session_bytes(config, capacity),
        note=note,
    )


def find_card_config(models: dict[str, Any] | None, name: str | None, kind: str) -> dict | None:
    """The ``card.config`` of model ``name`` (or of the only model of ``kind``), at the version
    new sessions get (servers from before versions list one version, without ``latest``)."""
    entries = [m for m in (models or {}).get("models", []) if isinstance(m, dict) and m.get("latest", True)]
    named = [m for m in entries if name is not None and m.get("name") == name]
    of_kind = [m for m in entries if m.get("kind") == kind]
    pick = named or (of_kind if len(of_kind) == 1 else [])
    config = (pick[0].get("card") or {}).get("config") if pick else None
    return config if isinstance(config, dict) else None


def build_result(
    args: argparse.Namespace,
    model: str | None,
    n_sessions: int,
    out: LoadOutcome,
    memory: MemoryReport | None,
) -> BenchResult:
    """Fold the shards and side measurements into one :class:`BenchResult`."""
    m = merge_shards(out.shards)
    window = out.phases.measure_end - out.phases.measure_start
    ceiling_s = out.phases.ceiling_end - out.phases.ceiling_start
    workers: WorkerDelta | None = None
    if out.health_before is not None and out.health_after is not None:
        workers = worker_delta(out.health_before, out.health_after)
    return BenchResult(
        url=args.url,
        model=model,
        sessions=n_sessions,
        points=args.points,
        procs=len(out.shards),
        duration_s=window,
        requests=m.requests,
        ok=m.ok,
        steps=m.points,
        latency_ms=latency_summary(m.latencies_ms),
        errors=m.errors,
        ceiling_rps=m.ceiling_requests / ceiling_s if ceiling_s > 0 else None,
        ceiling_errors=m.ceiling_errors,
        client_cpu_pct=100.0 * m.cpu_measure_s / window,
        ceiling_cpu_pct=100.0 * m.cpu_ceiling_s / ceiling_s if ceiling_s > 0 else None,
        workers=workers,
        memory=memory,
    )


async def bench(args: argparse.Namespace) -> BenchResult | None:
    """The whole run: preflight, sessions, load, memory, cleanup. None if it cannot start."""
    async with make_http(args.timeout) as http:
        if await get_json(http, f"{args.url}/health/live") is None:
            log(f"error: {args.url}/health/live does not answer; is the server running?")
            return None
        models = await get_json(http, f"{args.url}/v1/models")
        sids, model = await create_sessions(http, args)
        if not sids:
            log("error: no session could be created")
            return None
        args.dim = args.dim or 1
        try:
            outcome = await run_load(http, args, sids)
            config = find_card_config(models, model, args.kind)
            memory = await measure_memory(http, args, sids, config)
        finally:
            await delete_sessions(http, args.url, sids)
    return build_result(args, model, len(sids), outcome, memory)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``memserve bench stream``; returns the process exit status.

    0 when at least one request succeeded, 1 when none did, 2 when the run could not start
    or a client process failed.
    """
    args = parse_args(argv)
    try:
        result = run_coro(bench(args))
    except KeyboardInterrupt:
        log("interrupted")
        return 130
    except RuntimeError as exc:  # a client process died; its sessions were still deleted
        log(f"error: {exc}")
        return 2
    if result is None:
        return 2
    print(format_table(result))
    if args.json:
        write_json(result, args.json)
        log(f"wrote {args.json}")
    return 0 if result.ok > 0 else 1


if __name__ == "__main__":
    sys.exit(main())
