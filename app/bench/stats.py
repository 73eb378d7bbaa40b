"""Pure result handling for the benchmarks: percentiles, counter deltas, tables, JSON.

Nothing here touches the network, so it is what the unit tests exercise.
"""

from __future__ import annotations

from array import array
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson

PERCENTILES: tuple[int, ...] = (50, 95, 99)

# Model-card config keys that may hold the MemNet ring-buffer capacity N, most specific first.
_CAPACITY_KEYS = ("capacity", "memory_capacity", "memory_size", "n_slots", "N")


@dataclass
class ShardResult:
    """What one client process (shard) measured; merged by :func:`merge_shards`."""

    latencies_ms: array = field(default_factory=lambda: array("d"))  # 2xx replies only
    requests: int = 0
    ok: int = 0
    points: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    ceiling_requests: int = 0
    ceiling_errors: int = 0
    cpu_ceiling_s: float = 0.0
    cpu_measure_s: float = 0.0


@dataclass
class Merged:
    """All shards folded together; latencies stay raw so percentiles are exact."""

    latencies_ms: np.ndarray
    requests: int
    ok: int
    points: int
    errors: dict[str, int]
    ceiling_requests: int
    ceiling_errors: int
    cpu_ceiling_s: float
    cpu_measure_s: float


def merge_shards(shards: Iterable[ShardResult]) -> Merged:
    """Concatenate latency samples and add up counters of several client processes.

    Percentiles must come from the concatenated samples: averaging per-process
    percentiles is wrong whenever the processes saw different latency mixes.
    """
    shards = list(shards)
    parts = [np.frombuffer(s.latencies_ms, dtype=np.float64) for s in shards if s.latencies_ms]
    errors: Counter[str] = Counter()
    for s in shards:
        errors.update(s.errors)
    return Merged(
        latencies_ms=np.concatenate(parts) if parts else np.empty(0, dtype=np.float64),
        requests=sum(s.requests for s in shards),
        ok=sum(s.ok for s in shards),
        points=sum(s.points for s in shards),
        errors=dict(sorted(errors.items())),
        ceiling_requests=sum(s.ceiling_requests for s in shards),
        ceiling_errors=sum(s.ceiling_errors for s in shards),
        cpu_ceiling_s=sum(s.cpu_ceiling_s for s in shards),
        cpu_measure_s=sum(s.cpu_measure_s for s in shards),
    )


def latency_summary(samples_ms: np.ndarray) -> dict[str, float | None]:
    """p50/p95/p99 (linear interpolation between order statistics), mean and max."""
    keys = [f"p{q}" for q in PERCENTILES] + ["mean", "max"]
    if samples_ms.size == 0:
        return dict.fromkeys(keys)
    values = np.percentile(samples_ms, PERCENTILES).tolist()
    values += [float(samples_ms.mean()), float(samples_ms.max())]
    return {k: round(float(v), 3) for k, v in zip(keys, values, strict=True)}


@dataclass
class WorkerDelta:
    """Worker counters accumulated over the measured window, summed over workers."""

    workers: int
    batches: int
    jobs: int
    steps: int
    # Time between the two counter snapshots by the workers' own clocks: counters may be
    # published on a heartbeat, so this can differ from the client's window by ~1 s.
    span_s: float | None = None

    @property
    def mean_batch(self) -> float | None:
        return self.jobs / self.batches if self.batches else None

    @property
    def steps_per_s(self) -> float | None:
        return self.steps / self.span_s if self.span_s else None


def worker_delta(before: Mapping[str, Any] | None, after: Mapping[str, Any] | None) -> WorkerDelta:
    """Difference of the cumulative worker counters in two ``/health/ready`` bodies.

    A worker absent before the window, or whose counters went down (it restarted),
    contributes its whole ``after`` count: that is all it did since it (re)started.
    """
    prev = {str(w.get("id")): w for w in _workers(before)}
    totals = {"batches": 0, "jobs": 0, "steps": 0}
    spans: list[float] = []
    now = _workers(after)
    for w in now:
        old = prev.get(str(w.get("id")), {})
        restarted = any(_int(w, k) < _int(old, k) for k in totals)
        for k in totals:
            totals[k] += _int(w, k) - (0 if restarted else _int(old, k))
        if isinstance(w.get("time"), int | float) and isinstance(old.get("time"), int | float):
            spans.append(float(w["time"]) - float(old["time"]))
    return WorkerDelta(workers=len(now), span_s=mean_or_none(spans), **totals)


def _workers(body: Mapping[str, Any] | None) -> list[Mapping[str, Any]]:
    workers = (body or {}).get("workers") or []
    return [w for w in workers if isinstance(w, Mapping)]


def _int(d: Mapping[str, Any], key: str) -> int:
    value = d.get(key)
    return int(value) if isinstance(value, int | float) else 0


def capacity_of(config: Mapping[str, Any]) -> int | None:
    """The ring-buffer capacity N named in a MemNet model-card config, if any."""
    for key in _CAPACITY_KEYS:
        if isinstance(config.get(key), int):
            return int(config[key])
    return None


def raw_session_bytes(config: Mapping[str, Any], capacity: int | None = None) -> int | None:
    """float32 bytes of one full session: N (key, value) pairs plus the hidden state."""
    n = capacity if capacity is not None else capacity_of(config)
    dims = [config.get(k) for k in ("key_dim", "value_dim", "hidden_dim")]
    if n is None or not all(isinstance(d, int) for d in dims):
        return None
    key_dim, value_dim, hidden_dim = (int(d) for d in dims)  # type: ignore[arg-type]
    return 4 * (n * (key_dim + value_dim) + hidden_dim)


@dataclass
class MemoryReport:
    """Redis bytes per session against the raw tensor bytes they encode."""

    sessions_measured: int
    capacity: int | None
    bytes_per_session: float | None
    raw_bytes: int | None
    note: str = ""

    @property
    def ratio(self) -> float | None:
        if not self.bytes_per_session or not self.raw_bytes:
            return None
        return self.bytes_per_session / self.raw_bytes


@dataclass
class BenchResult:
    """Everything one ``bench stream`` run reports; ``to_dict`` is the JSON shape."""

    url: str
    model: str | None
    sessions: int
    points: int
    procs: int
    duration_s: float
    requests: int
    ok: int
    steps: int
    latency_ms: dict[str, float | None]
    errors: dict[str, int]
    ceiling_rps: float | None
    ceiling_errors: int
    client_cpu_pct: float
    ceiling_cpu_pct: float | None
    workers: WorkerDelta | None
    memory: MemoryReport | None

    @property
    def requests_per_s(self) -> float:
        return self.ok / self.duration_s if self.duration_s > 0 else 0.0

    @property
    def steps_per_s(self) -> float:
        return self.steps / self.duration_s if self.duration_s > 0 else 0.0

    @property
    def ceiling_ratio(self) -> float | None:
        return self.requests_per_s / self.ceiling_rps if self.ceiling_rps else None

    @property
    def client_cpu_us_per_request(self) -> float | None:
        # Independent of how busy the machine is, unlike the req/s figures.
        if not self.requests:
            return None
        return self.client_cpu_pct / 100.0 * self.duration_s / self.requests * 1e6

    @property
    def verdict(self) -> str:
        """Which side most likely limited throughput, from CPU use and the ceiling ratio."""
        if self.client_cpu_pct > 80.0 * self.procs:
            return "client-bound: client processes near 100% CPU; add --procs"
        if self.ceiling_ratio is not None and self.ceiling_ratio > 0.8:
            return "near the ceiling: the HTTP path, not the model, may be the limit"
        return "server-bound"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(
            requests_per_s=self.requests_per_s,
            steps_per_s=self.steps_per_s,
            ceiling_ratio=self.ceiling_ratio,
            client_cpu_us_per_request=self.client_cpu_us_per_request,
            verdict=self.verdict,
        )
        if self.workers is not None:
            d["workers"].update(mean_batch=self.workers.mean_batch, steps_per_s=self.workers.steps_per_s)
        if self.memory is not None:
            d["memory"]["ratio"] = self.memory.ratio
        return d


def write_json(result: BenchResult, path: str | Path) -> None:
    """Write ``result`` as indented JSON (numpy scalars included)."""
    opts = orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY
    Path(path).write_bytes(orjson.dumps(result.to_dict(), option=opts) + b"\n")


def _fmt(value: float | int | None, spec: str = ",.1f", unit: str = "") -> str:
    return "n/a" if value is None else f"{value:{spec}}{unit}"


def format_table(r: BenchResult) -> str:
    """Human-readable two-column summary of a run."""
    lat = r.latency_ms
    rows: list[tuple[str, str]] = [
        ("target", f"{r.url}  model={r.model or 'default'}"),
        ("load", f"{r.sessions} sessions x {r.points} pt/req, {r.procs} client proc(s)"),
        ("window", f"{r.duration_s:.2f} s, {r.requests:,} replies ({r.ok:,} ok)"),
        ("steps/s", _fmt(r.steps_per_s)),
        ("requests/s", _fmt(r.requests_per_s)),
        ("latency ms (2xx)", "  ".join(f"{k}={_fmt(lat.get(k), '.2f')}" for k in _lat_keys())),
        ("errors", ", ".join(f"{k}: {v:,}" for k, v in r.errors.items()) or "none"),
        ("client ceiling", _fmt(r.ceiling_rps, unit=" req/s (GET /health/live)")),
        ("measured/ceiling", _fmt(r.ceiling_ratio, ".2f")),
        ("client CPU", _cpu_text(r)),
        ("verdict", r.verdict),
    ]
    rows += _worker_rows(r.workers) + _memory_rows(r.memory)
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def _lat_keys() -> list[str]:
    return [f"p{q}" for q in PERCENTILES] + ["mean", "max"]


def _cpu_text(r: BenchResult) -> str:
    text = f"{r.client_cpu_pct:.0f}% of one core in the window"
    text += f" ({_fmt(r.client_cpu_us_per_request, ',.0f')} us/request)"
    if r.ceiling_cpu_pct is not None:
        text += f", {r.ceiling_cpu_pct:.0f}% in the ceiling probe"
    return text


def _worker_rows(w: WorkerDelta | None) -> list[tuple[str, str]]:
    if w is None:
        return [("workers", "n/a (/health/ready unavailable)")]
    return [
        ("workers", f"{w.workers}: {w.batches:,} batches, {w.jobs:,} jobs, {w.steps:,} steps"),
        ("worker steps/s", _fmt(w.steps_per_s) + f" (over {_fmt(w.span_s, '.2f', ' s')} of counters)"),
        ("mean batch", _fmt(w.mean_batch, ".2f", " jobs/batch")),
    ]


def _memory_rows(m: MemoryReport | None) -> list[tuple[str, str]]:
    if m is None:
        return []
    text = (
        f"{_fmt(m.bytes_per_session, ',.0f')} B/session (Redis, n={m.sessions_measured}), "
        f"raw {_fmt(m.raw_bytes, ',')} B (N={_fmt(m.capacity, 'd')}), "
        f"ratio {_fmt(m.ratio, '.2f')}"
    )
    return [("memory", text + (f"  [{m.note}]" if m.note else ""))]


def mean_or_none(values: Sequence[float]) -> float | None:
    """Arithmetic mean, or None for an empty sequence."""
    return sum(values) / len(values) if values else None
