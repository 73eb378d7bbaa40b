"""``memserve bench vma``: closed-loop load on the VMA endpoints of a running memserve server.

For each memory size |M| (``--memory``, exemplars per session) it creates ``--sessions``
sessions, fills each with |M| labelled drawings (requests of at most 256), then runs two
closed-loop windows with ``--concurrency`` clients spread over those sessions:
``/classify`` with other drawings of the memory's characters as queries, and ``/samples``.
Last it reads ``memory_bytes`` of every session for the Redis bytes per exemplar. The
ceiling probe (``GET /health/live``) runs once, before the first window; warm-up, window,
progress bar, worker counters and ``--procs`` client processes work as in ``bench stream``.

Drawings come from the Omniglot evaluation set (``--data``, else the default data folder),
otherwise they are synthetic random-stroke characters. Run ``memserve bench vma --help``.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import itertools
import math
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import orjson
from tqdm import tqdm

from app.bench import client, procs, stream
from app.bench.client import Phases, Progress, ShardSpec
from app.bench.stats import ShardResult, latency_summary, mean_or_none, merge_shards, worker_delta
from app.bench.stream import LoadOutcome, get_json, log
from app.bench.vma_data import (
    PACKED_PIXEL_BYTES,
    classify_body,
    exemplar_bodies,
    load_drawings,
    memory_plan,
    query_plan,
    sample_bodies,
)

BODIES_PER_CLIENT = 16  # distinct request bodies each client cycles through
# Targets: memory costs dot products, never re-embedding; a 2-core box classifies 200
# images/s; an exemplar costs at most 1 KiB of Redis.
TARGET_P50_RATIO = 2.0
TARGET_IMAGES_PER_S = 200.0
TARGET_BYTES_PER_EXEMPLAR = 1024.0
# One row per memory size: classify columns (with jobs per worker batch), samples, Redis.
HEADER = (
    f"{'|M|':>6} {'sess':>4} | {'img/s':>8} {'p50 ms':>7} {'p99 ms':>7} {'err':>4} {'batch':>5} "
    f"| {'samples/s':>9} {'p50 ms':>7} {'p99 ms':>7} {'err':>4} | B/exemplar"
)

Client = tuple[str, tuple[bytes, ...]]  # (session id, the request bodies the client cycles through)


def parse_sizes(text: str) -> list[int]:
    """``"32,512,2500"`` -> ``[32, 512, 2500]`` (sorted, unique); all must be integers >= 1."""
    try:
        sizes = sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError:
        sizes = []
    if not sizes or sizes[0] < 1:
        raise argparse.ArgumentTypeError(f"want comma-separated integers >= 1, got {text!r}")
    return sizes


def bounded(kind: Callable[[str], float], low: float, high: float = math.inf) -> Callable[[str], Any]:
    """An argparse ``type`` that converts with ``kind`` and accepts only ``low <= value <= high``."""

    def convert(text: str) -> Any:
        value = kind(text)
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be in [{low:g}, {high:g}], got {text}")
        return value

    return convert


def build_parser() -> argparse.ArgumentParser:
    """Argument parser for ``bench vma`` (the arguments after ``vma``); argparse checks all bounds."""
    count, per_request, seconds = bounded(int, 1), bounded(int, 1, 64), bounded(float, 0.0)
    p = argparse.ArgumentParser(prog="memserve bench vma", description=__doc__.split("\n")[0])
    server = p.add_argument_group("server")
    server.add_argument("--url", default="http://127.0.0.1:8000", help="server base URL")
    server.add_argument("--model", default=None, help="VMA model name (default: the server's)")
    server.add_argument("--timeout", type=seconds, default=60.0, help="per-request timeout, s")
    load = p.add_argument_group("load")
    load.add_argument(
        "--memory", type=parse_sizes, default="32,512,2500", help="exemplars per session, a,b,..."
    )
    load.add_argument("--sessions", type=count, default=4, help="sessions per memory size")
    load.add_argument("--concurrency", type=count, default=16, help="closed-loop clients")
    load.add_argument("--images-per-request", type=per_request, default=1, help="query images per classify")
    load.add_argument("--method", choices=("posterior", "importance"), default="posterior")
    load.add_argument(
        "--samples", type=bounded(int, 0, 256), default=None,
        help="classify's decoder evaluations per image (default: the server's; 0: addressing only)",
    )  # fmt: skip
    load.add_argument("--sample-n", type=per_request, default=8, help="samples per /samples request")
    load.add_argument("--sample-format", choices=("png", "probs"), default="png")
    load.add_argument(
        "--sample-anchor", type=bounded(float, 0.0, 1.0), default=None,
        help="the samples' anchor (default: the model's card's)",
    )  # fmt: skip
    load.add_argument("--procs", type=count, default=1, help="client processes sharing the clients")
    timing = p.add_argument_group("timing (per memory size and endpoint)")
    timing.add_argument("--warmup", type=seconds, default=2.0, help="unmeasured load first, s")
    timing.add_argument("--duration", type=bounded(float, 0.1), default=10.0, help="measured window, s")
    timing.add_argument("--ceiling", type=seconds, default=3.0, help="/health/live probe, once, s (0: skip)")
    data = p.add_argument_group("drawings")
    data.add_argument("--data", default=None, help="data folder or Omniglot npz (default: shared data)")
    data.add_argument("--synthetic", action="store_true", help="synthetic drawings even if Omniglot exists")
    data.add_argument("--shots", type=count, default=4, help="drawings of each character in memory")
    data.add_argument("--seed", type=int, default=0, help="seed of the queries and synthetic drawings")
    out = p.add_argument_group("output")
    out.add_argument("--json", metavar="PATH", default=None, help="also write results as JSON")
    out.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Parse ``argv`` (exits with a usage message on bad values), cap --procs, trim the URL."""
    args = build_parser().parse_args(argv)
    args.procs = min(args.procs, args.concurrency)
    args.url = args.url.rstrip("/")
    return args


def make_clients(
    args: argparse.Namespace, images: np.ndarray, sids: list[str], plans: list[np.ndarray], endpoint: str
) -> list[Client]:
    """The closed-loop clients of one window; client c uses session c mod S."""
    rng = np.random.default_rng(args.seed)
    clients: list[Client] = []
    for c in range(args.concurrency):
        plan = plans[c % len(sids)]
        if endpoint == "classify":
            queries = query_plan(plan, images.shape[1], BODIES_PER_CLIENT * args.images_per_request, rng)
            parts = np.split(queries, BODIES_PER_CLIENT)
            bodies = tuple(classify_body(images, q, args.method, args.samples) for q in parts)
        else:
            labels = [str(x) for x in rng.choice(np.unique(plan[:, 0]), BODIES_PER_CLIENT // 2)]
            bodies = sample_bodies(args.sample_n, args.sample_format, labels, args.sample_anchor)
        clients.append((sids[c % len(sids)], bodies))
    return clients


@dataclass(frozen=True)
class VmaShardSpec(ShardSpec):
    """A shard of closed-loop clients: client ``first_index + i`` posts ``bodies[i]`` in turn to
    ``/v1/sessions/{sids[i]}/{endpoint}``; ``points`` is images or samples per request."""

    endpoint: str = "classify"
    bodies: tuple[tuple[bytes, ...], ...] = ()


def shard_specs(
    args: argparse.Namespace, endpoint: str, clients: list[Client], units: int, ceiling: bool
) -> list[ShardSpec]:
    """Deal clients to ``args.procs`` shards the way ``bench stream`` deals its sessions."""
    ns = argparse.Namespace(**{**vars(args), "points": units, "dim": 1, "ceiling": args.ceiling * ceiling})
    bodies = [b for _, b in clients]
    return [
        VmaShardSpec(
            **{f.name: getattr(s, f.name) for f in fields(s)},
            endpoint=endpoint,
            bodies=tuple(bodies[s.first_index : s.first_index + len(s.sids)]),
        )
        for s in stream.split_sessions(ns, [sid for sid, _ in clients])
    ]


async def post_loop(
    http: aiohttp.ClientSession, url: str, bodies: tuple[bytes, ...], units: int, rec: client.Recorder
) -> None:
    """One closed-loop client: post the next body, wait for the reply, until the window ends."""
    for body in itertools.cycle(bodies):
        if time.time() >= rec.end:
            return
        t0 = time.perf_counter()
        status, _, retry = await client.call(http, "POST", url, body)
        rec.add(time.time(), time.perf_counter() - t0, status, units)
        if not (isinstance(status, int) and 200 <= status < 300):
            # As in bench stream: never spin on errors; honour Retry-After on a 429.
            await asyncio.sleep(retry if status == 429 and retry else client.ERROR_BACKOFF_S)


async def run_vma_shard(spec: ShardSpec, phases: Phases, progress: Progress | None = None) -> ShardResult:
    """Drive one :class:`VmaShardSpec` through the ceiling probe (if any), warm-up and window."""
    assert isinstance(spec, VmaShardSpec), "run_vma_shard needs a VmaShardSpec"
    rec = client.Recorder(phases.measure_start, phases.measure_end, spec.slot, progress)
    ceiling: Counter[str] = Counter()
    probe = (phases.ceiling_start, phases.ceiling_end)
    async with client.make_http(spec.timeout_s) as http:
        cpu = [asyncio.ensure_future(client.cpu_between(*span)) for span in (probe, (rec.start, rec.end))]
        if spec.ceiling:
            await asyncio.gather(
                *(client.ceiling_loop(http, spec.base_url, *probe, ceiling) for _ in spec.sids)
            )
        await client.sleep_until(phases.stream_start)
        urls = [f"{spec.base_url}/v1/sessions/{sid}/{spec.endpoint}" for sid in spec.sids]
        await asyncio.gather(
            *(post_loop(http, u, b, spec.points, rec) for u, b in zip(urls, spec.bodies, strict=True))
        )
        cpu_ceiling, cpu_measure = await asyncio.gather(*cpu)
    result = ShardResult(rec.latencies_ms, rec.requests, rec.ok, rec.points, dict(rec.errors))
    result.ceiling_requests, result.ceiling_errors = ceiling["ok"], ceiling["error"]
    result.cpu_ceiling_s, result.cpu_measure_s = cpu_ceiling, cpu_measure
    return result


async def run_window(
    http: aiohttp.ClientSession, args: argparse.Namespace, specs: list[ShardSpec]
) -> LoadOutcome:
    """One closed-loop window over ``specs``: in this process when there is one shard."""
    ceiling_s = args.ceiling if specs[0].ceiling else 0.0
    pool = procs.ProcessShards(specs, runner=run_vma_shard) if len(specs) > 1 else None
    try:
        progress: Progress = [0] if pool is None else pool.progress
        if pool is not None:
            await pool.start()
        phases = Phases.plan(time.time() + 0.3, ceiling_s, args.warmup, args.duration)
        shards: Awaitable[Sequence[ShardResult]]
        if pool is None:
            shards = asyncio.ensure_future(asyncio.gather(run_vma_shard(specs[0], phases, progress)))
        else:
            pool.go(phases)
            shards = asyncio.ensure_future(pool.results(args.timeout + 30))
        watch_args = argparse.Namespace(**{**vars(args), "ceiling": ceiling_s})
        health = await stream.watch_window(http, watch_args, phases, progress, len(specs))
        return LoadOutcome(list(await shards), phases, *health)
    finally:
        if pool is not None:
            pool.close()


async def create_sessions(
    http: aiohttp.ClientSession, args: argparse.Namespace, n: int, capacity: int | None
) -> tuple[list[str], str | None]:
    """Create ``n`` VMA sessions; returns their ids and the model they run."""
    payload = {"kind": "vma", "capacity": capacity, "model": args.model}
    body = orjson.dumps({k: v for k, v in payload.items() if v is not None})
    make = functools.partial(client.call, http, "POST", f"{args.url}/v1/sessions", body)
    sids: list[str] = []
    model: str | None = args.model
    for r in await client.bounded_gather([make] * n):
        if isinstance(r, tuple) and r[0] == 201 and isinstance(r[1], dict):
            sids.append(str(r[1]["id"]))
            model = model or r[1].get("model")
        else:
            log(f"session create failed: {r!r:.200}")
    return sids, model


async def fill_session(
    http: aiohttp.ClientSession, url: str, bodies: Iterator[tuple[bytes, int]], bar: tqdm
) -> int:
    """Post the exemplar bodies in order; returns the session's exemplar count (the server's)."""
    count = 0
    for body, n in bodies:
        for attempt in range(5):
            status, reply, retry = await client.call(http, "POST", url, body)
            if status in (200, 201) and isinstance(reply, dict):
                count = int(reply.get("count", count + n))
                bar.update(n)
                break
            # Only refusals that changed nothing are retried: a 504 may have been applied.
            if status not in (429, 503):
                log(f"filling {url} stopped at {count}: {status} {reply!r:.200}")
                return count
            await asyncio.sleep(retry or 0.5 * (attempt + 1))
        else:
            return count
    return count


async def fill_sessions(
    http: aiohttp.ClientSession,
    args: argparse.Namespace,
    images: np.ndarray,
    sids: list[str],
    plans: list[np.ndarray],
) -> list[int]:
    """Fill every session with its planned exemplars (sessions in parallel, one bar)."""
    bar = tqdm(total=sum(len(p) for p in plans), unit="ex", desc="fill", disable=args.no_progress)
    urls = [f"{args.url}/v1/sessions/{sid}/exemplars" for sid in sids]
    jobs: list[Callable[[], Awaitable[int]]] = [
        functools.partial(fill_session, http, u, exemplar_bodies(images, p), bar)
        for u, p in zip(urls, plans, strict=True)
    ]
    counts = await client.bounded_gather(jobs)
    bar.close()
    return [c if isinstance(c, int) else 0 for c in counts]


def bytes_per_exemplar(session_bytes: float | None, empty_bytes: float | None, count: int) -> float | None:
    """Redis bytes one exemplar adds: the session's bytes less an empty session's, per exemplar."""
    if session_bytes is None or empty_bytes is None or count <= 0:
        return None
    return (session_bytes - empty_bytes) / count


def raw_exemplar_bytes(config: dict[str, Any] | None) -> int | None:
    """Bytes an exemplar's data needs: 1-bit packed pixels plus its float32 ``match_dim`` embedding."""
    dim = (config or {}).get("match_dim")
    return PACKED_PIXEL_BYTES + 4 * dim if isinstance(dim, int) else None


async def session_bytes(http: aiohttp.ClientSession, url: str, sid: str) -> float | None:
    info = await get_json(http, f"{url}/v1/sessions/{sid}") or {}
    value = info.get("memory_bytes")
    return float(value) if isinstance(value, int | float) else None


@dataclass
class Window:
    """One measured closed-loop window: one endpoint at one memory size."""

    duration_s: float
    requests: int
    ok: int
    units: int  # images classified or samples drawn
    latency_ms: dict[str, float | None]
    errors: dict[str, int]
    client_cpu_pct: float
    mean_batch: float | None  # jobs per worker batch in the window, from /health/ready

    @property
    def units_per_s(self) -> float:
        return self.units / self.duration_s if self.duration_s > 0 else 0.0


def window_of(out: LoadOutcome) -> tuple[Window, float | None]:
    """Fold a window's shards into a :class:`Window`, plus the ceiling req/s if it probed one."""
    m = merge_shards(out.shards)
    span = out.phases.measure_end - out.phases.measure_start
    ceiling_s = out.phases.ceiling_end - out.phases.ceiling_start
    before, after = out.health_before, out.health_after
    batch = worker_delta(before, after).mean_batch if before is not None and after is not None else None
    lat, cpu = latency_summary(m.latencies_ms), 100.0 * m.cpu_measure_s / span
    window = Window(span, m.requests, m.ok, m.points, lat, m.errors, cpu, batch)
    return window, (m.ceiling_requests / ceiling_s if ceiling_s > 0 else None)


@dataclass
class SizeResult:
    """Everything measured at one memory size."""

    memory: int
    sessions: int  # filled to |M| and measured
    exemplars: float | None  # mean exemplar count of those sessions, as the server reported it
    session_bytes: float | None = None
    bytes_per_exemplar: float | None = None
    classify: Window | None = None
    samples: Window | None = None


@dataclass
class VmaResult:
    """A whole ``bench vma`` run; ``to_dict`` is the JSON shape."""

    url: str
    data: str
    method: str
    clients: int
    images_per_request: int
    sample_n: int
    procs: int
    model: str | None = None
    ceiling_rps: float | None = None
    empty_session_bytes: float | None = None
    raw_bytes_per_exemplar: int | None = None
    sizes: list[SizeResult] = field(default_factory=list)

    def p50_ratio(self) -> tuple[float | None, str]:
        """Classify p50 at the largest measured |M| over p50 at the smallest, and its label."""
        p50 = [(s.memory, s.classify.latency_ms.get("p50") or 0.0) for s in self.sizes if s.classify]
        p50 = [(m, v) for m, v in p50 if v > 0]
        if len(p50) < 2:
            return None, "classify p50, largest / smallest |M|"
        (lo, v_lo), (hi, v_hi) = p50[0], p50[-1]
        return v_hi / v_lo, f"classify p50, |M|={hi} / |M|={lo}"

    def targets(self) -> list[dict[str, Any]]:
        """The three targets: measured value, bound, and whether it was met (None: not measured)."""
        slowest = min(
            (s.classify.units_per_s for s in self.sizes if s.classify and s.classify.ok), default=None
        )
        fattest = max(
            (s.bytes_per_exemplar for s in self.sizes if s.bytes_per_exemplar is not None), default=None
        )
        ratio, ratio_name = self.p50_ratio()
        return [
            _target(ratio_name, ratio, "<=", TARGET_P50_RATIO),
            _target(
                f"classify images/s, {self.clients} clients, worst |M|", slowest, ">=", TARGET_IMAGES_PER_S
            ),
            _target("Redis bytes per exemplar, worst |M|", fattest, "<=", TARGET_BYTES_PER_EXEMPLAR),
        ]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for size, s in zip(d["sizes"], self.sizes, strict=True):
            for key in ("classify", "samples"):
                if (w := getattr(s, key)) is not None:
                    size[key]["units_per_s"] = w.units_per_s
        return d | {"p50_ratio": self.p50_ratio()[0], "targets": self.targets()}


def _target(name: str, value: float | None, op: str, limit: float) -> dict[str, Any]:
    ok = None if value is None else (value <= limit if op == "<=" else value >= limit)
    return {"name": name, "value": value, "target": f"{op} {limit:g}", "ok": ok}


def format_table(r: VmaResult) -> str:
    """Header lines, one row per memory size (classify columns, then samples), the targets."""
    head = [
        f"target   {r.url}  model={r.model or 'default'}  data={r.data}",
        f"load     {r.clients} clients; classify {r.images_per_request} image(s)/request ({r.method}); "
        f"{r.sample_n} samples/request; {r.procs} client proc(s)",
        f"ceiling  {_fmt(r.ceiling_rps)} req/s (GET /health/live, same connections)",
        f"memory   empty session {_fmt(r.empty_session_bytes, ',.0f')} B; raw data per exemplar "
        f"{_fmt(r.raw_bytes_per_exemplar, ',')} B ({PACKED_PIXEL_BYTES} B packed pixels + 4 x match_dim)",
    ]
    verdict = {True: "PASS", False: "FAIL", None: "n/a "}
    targets = [
        f"{verdict[t['ok']]}  {t['name']}: {_fmt(t['value'], ',.2f')} ({t['target']})" for t in r.targets()
    ]
    return "\n".join([*head, "", HEADER, *map(_row, r.sizes), "", *targets])


def _row(s: SizeResult) -> str:
    batch, per_ex = _fmt(s.classify.mean_batch) if s.classify else "", _fmt(s.bytes_per_exemplar, ",.0f")
    classify, samples = _cells(s.classify, 8), _cells(s.samples, 9)
    return f"{s.memory:>6,} {s.sessions:>4} | {classify} {batch:>5} | {samples} | {per_ex:>10}"


def _cells(w: Window | None, width: int) -> str:
    if w is None:
        return f"{'n/a':>{width}} {'':>7} {'':>7} {'':>4}"
    p50, p99 = _fmt(w.latency_ms.get("p50")), _fmt(w.latency_ms.get("p99"))
    return f"{_fmt(w.units_per_s):>{width}} {p50:>7} {p99:>7} {sum(w.errors.values()):>4}"


def _fmt(value: float | None, spec: str = ",.1f") -> str:
    return "n/a" if value is None else f"{value:{spec}}"


async def measure_size(
    http: aiohttp.ClientSession, args: argparse.Namespace, images: np.ndarray, memory: int, result: VmaResult
) -> SizeResult:
    """Create and fill the sessions of one |M|, run both windows, read their bytes, delete them."""
    sids, model = await create_sessions(http, args, args.sessions, memory)
    result.model = result.model or model
    n_chars, n_drawings = images.shape[:2]
    plans = [
        memory_plan(n_chars, n_drawings, memory, args.shots, i * n_chars // args.sessions)
        for i in range(len(sids))
    ]
    try:
        log(f"|M|={memory}: filling {len(sids)} sessions")
        counts = await fill_sessions(http, args, images, sids, plans)
        full = [i for i, n in enumerate(counts) if n >= memory]
        size = SizeResult(memory, len(full), mean_or_none([counts[i] for i in full]))
        for endpoint in ("classify", "samples") if full else ():
            log(f"|M|={memory} {endpoint}: {args.concurrency} clients over {len(full)} sessions")
            clients = make_clients(args, images, [sids[i] for i in full], [plans[i] for i in full], endpoint)
            units = args.images_per_request if endpoint == "classify" else args.sample_n
            specs = shard_specs(args, endpoint, clients, units, ceiling=result.ceiling_rps is None)
            window, ceiling = window_of(await run_window(http, args, specs))
            if window.requests == 0:
                log(f"warning: no {endpoint} reply came back inside the window; try a longer --duration")
            setattr(size, endpoint, window)
            result.ceiling_rps = result.ceiling_rps if ceiling is None else ceiling
        per = [(await session_bytes(http, args.url, sids[i]), counts[i]) for i in full]
        size.session_bytes = mean_or_none([b for b, _ in per if b is not None])
        ratios = [bytes_per_exemplar(b, result.empty_session_bytes, n) for b, n in per]
        size.bytes_per_exemplar = mean_or_none([x for x in ratios if x is not None])
        return size
    finally:
        await stream.delete_sessions(http, args.url, sids)


async def bench(args: argparse.Namespace, images: np.ndarray, source: str) -> VmaResult | None:
    """Preflight, the empty-session baseline, then every memory size. None if it cannot start."""
    result = VmaResult(
        args.url, source, args.method, args.concurrency, args.images_per_request, args.sample_n, args.procs
    )
    async with client.make_http(args.timeout) as http:
        if await get_json(http, f"{args.url}/health/live") is None:
            log(f"error: {args.url}/health/live does not answer; is the server running?")
            return None
        models = await get_json(http, f"{args.url}/v1/models")
        sids, result.model = await create_sessions(http, args, 1, None)
        if not sids:
            log("error: no VMA session could be created")
            return None
        result.empty_session_bytes = await session_bytes(http, args.url, sids[0])
        await stream.delete_sessions(http, args.url, sids)
        result.raw_bytes_per_exemplar = raw_exemplar_bytes(
            stream.find_card_config(models, result.model, "vma")
        )
        for memory in args.memory:
            result.sizes.append(await measure_size(http, args, images, memory, result))
    return result


def report(result: VmaResult, json_path: str | None) -> int:
    """Print the table, write the JSON; exit status 0 if any request succeeded, else 1."""
    print(format_table(result))
    if json_path:
        Path(json_path).write_bytes(orjson.dumps(result.to_dict(), option=orjson.OPT_INDENT_2) + b"\n")
        log(f"wrote {json_path}")
    windows = [w for s in result.sizes for w in (s.classify, s.samples) if w is not None]
    return 0 if any(w.ok for w in windows) else 1


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``memserve bench vma``; returns the process exit status.

    0 when some classify or sample request succeeded, 1 when none did, 2 when the run could
    not start (no data, server down, no session) or a client process failed, 130 on Ctrl-C
    (sessions are deleted in every case).
    """
    args = parse_args(argv)
    try:
        images, source = load_drawings(args.data, args.synthetic, args.seed)
        for memory in args.memory:  # fail before touching the server if a size cannot be planned
            memory_plan(images.shape[0], images.shape[1], memory, args.shots, 0)
        result = client.run_coro(bench(args, images, source))
    except (FileNotFoundError, ValueError, RuntimeError) as exc:  # RuntimeError: a client process died
        log(f"error: {exc}")
        return 2
    except KeyboardInterrupt:
        log("interrupted")
        return 130
    return 2 if result is None else report(result, args.json)


if __name__ == "__main__":
    sys.exit(main())
