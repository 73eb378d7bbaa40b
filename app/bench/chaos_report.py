"""What ``memserve chaos`` records and how it reports it: the client's log of acknowledged chunks,
the request tally, the faults, the recovery after each fault, the integrity checks per session,
and the report (a dict for ``--json``, text for people)."""

from __future__ import annotations

import argparse
import statistics
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

FAULTS = ("worker kill", "redis crash")  # what the suite does; other events are exits by themselves


@dataclass
class Acked:
    """A chunk the service acknowledged: what was sent and what came back."""

    seq: int
    values: list[list[float]]
    predictions: list[list[float]]


@dataclass
class Stream:
    """One session as its client sees it: the chunks acknowledged, in order."""

    index: int
    sid: str
    model: str
    dim: int
    chunks: list[Acked] = field(default_factory=list)
    seq: int = 0  # points acknowledged so far: where the next chunk starts
    pending: int = 0  # points of a chunk sent but never acknowledged (it may have been applied)
    stopped: str | None = None  # why the client stopped early (a refusal), if it did
    conflicts: list[dict[str, int]] = field(default_factory=list)  # 409s: sent seq, expected_seq
    wrong_replies: int = 0  # acknowledgements whose seq, step or length do not fit the chunk sent
    last_attempt: float = 0.0


@dataclass
class Tally:
    """Every request of the run, counted as it completes (times in seconds since the start)."""

    requests: int = 0
    ok: int = 0
    repeats: int = 0
    retried_chunks: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    successes: list[tuple[float, float, int]] = field(default_factory=list)  # start, done, session
    failures: list[tuple[float, float, str, str]] = field(
        default_factory=list
    )  # start, done, what, request id


@dataclass
class FaultEvent:
    """A fault: one the suite caused (worker kill, redis crash) or a process that exited by itself."""

    kind: str
    at: float
    target: str
    back_at: float | None = None  # Redis answering again, or the restarted worker ready
    detail: str = ""  # for a process that exited by itself: its exit code and last log lines


@dataclass
class Recovery:
    """How long the service took to answer again after a fault."""

    event: FaultEvent
    first_ok_s: float | None  # until the first success of a request sent after the fault
    all_ok_s: float | None  # until every session still streaming had such a success
    failed_after_back: list[str] = field(default_factory=list)  # "what (request id)", sent once back


@dataclass
class SessionCheck:
    """One session's integrity: its step on the service against the log, the log against a replay."""

    sid: str
    model: str
    acked: int  # points acknowledged to the client
    server_step: int | None  # None: the session is gone
    pending: int = 0
    stopped: str | None = None
    lost: int = 0
    doubled: int = 0
    reordered: int = 0
    mismatched: int = 0  # predictions that differ from the replay's
    replayed: int = 0  # predictions compared
    max_diff: float = 0.0
    conflicts: list[dict[str, int]] = field(default_factory=list)


def step_accounting(acked: int, pending: int, step: int | None) -> tuple[int, int]:
    """(lost, doubled) from the service's step, given `acked` points acknowledged and a last chunk
    of `pending` points that was sent but never acknowledged (applied or not, both are fine)."""
    if step is None:
        return acked, 0
    if step < acked:
        return acked - step, 0
    if step > acked + pending:
        return 0, step - acked - pending
    if acked < step < acked + pending:  # part of one chunk applied
        return acked + pending - step, 0
    return 0, 0


def recover(faults: list[FaultEvent], tally: Tally, last_attempt: dict[int, float]) -> list[Recovery]:
    """Per fault, the time to the first success and to a success of every session still active
    (one that sent a request after the fault), and the requests that failed although sent after
    the process was back (`tally.successes` are in completion order)."""
    out = []
    for event in faults:
        firsts: dict[int, float] = {}
        for start, done, session in tally.successes:
            if start >= event.at and session not in firsts:
                firsts[session] = done
        first = min(firsts.values()) - event.at if firsts else None
        active = {i for i, last in last_attempt.items() if last >= event.at}
        every = max(firsts[i] for i in active) - event.at if active and active <= firsts.keys() else None
        late = []
        if event.back_at is not None and every is not None:
            late = [f for f in tally.failures if event.back_at <= f[0] <= event.at + every]
        out.append(Recovery(event, first, every, [f"{key} ({rid})" for _s, _d, key, rid in late]))
    return out


def _spread(values: list[float]) -> dict[str, float | int] | None:
    if not values:
        return None
    return {"n": len(values), "median": round(statistics.median(values), 3), "max": round(max(values), 3)}


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _recovery_rows(recoveries: list[Recovery]) -> list[dict[str, Any]]:
    rows = []
    for r in recoveries:
        e = r.event
        rows.append({
            "kind": e.kind, "at_s": round(e.at, 3), "target": e.target,
            "back_after_s": None if e.back_at is None else round(e.back_at - e.at, 3),
            "first_ok_s": None if r.first_ok_s is None else round(r.first_ok_s, 3),
            "all_ok_s": None if r.all_ok_s is None else round(r.all_ok_s, 3),
            "failed_after_back": r.failed_after_back,
            **({"detail": e.detail} if e.detail else {}),
        })  # fmt: skip
    return rows


def _recovery_summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for kind in sorted({r["kind"] for r in rows}):
        mine = [r for r in rows if r["kind"] == kind]
        out[kind] = {
            name: _spread([r[name] for r in mine if r[name] is not None])
            for name in ("back_after_s", "first_ok_s", "all_ok_s")
        }
    return out


def _integrity(checks: list[SessionCheck]) -> dict[str, Any]:
    return {
        "lost": sum(c.lost for c in checks),
        "doubled": sum(c.doubled for c in checks),
        "reordered": sum(c.reordered for c in checks),
        "mismatched": sum(c.mismatched for c in checks),
        "predictions_compared": sum(c.replayed for c in checks),
        "max_diff": max((c.max_diff for c in checks), default=0.0),
        "conflicts": [{"sid": c.sid, **x} for c in checks for x in c.conflicts],
        "sessions_stopped": [{"sid": c.sid, "why": c.stopped} for c in checks if c.stopped],
        "sessions_lost": [c.sid for c in checks if c.server_step is None],
    }


def _verdict(integrity: dict[str, Any], rows: list[dict[str, Any]], errors: Counter[str]) -> dict[str, Any]:
    """Failures break the service's promise (every acknowledged chunk applied once, in order, and
    answered again after a fault); findings are faults of the service that a client survives by
    retrying or a supervisor by restarting, reported without failing the run."""
    reasons = [f"{integrity[k]} {k}" for k in ("lost", "doubled", "reordered", "mismatched") if integrity[k]]
    for k in ("conflicts", "sessions_stopped", "sessions_lost"):
        if integrity[k]:
            reasons.append(f"{len(integrity[k])} {k.replace('_', ' ')}")
    if unrecovered := [r for r in rows if r["all_ok_s"] is None]:
        reasons.append(f"{len(unrecovered)} fault(s) with a session never answered after")
    findings = [f"{r['kind']} ({r['target']}) at {r['at_s']:g} s" for r in rows if r["kind"] not in FAULTS]
    findings += [f"{n} answers {key}" for key, n in errors.items() if key.startswith("500")]
    return {"passed": not reasons, "reasons": reasons, "findings": findings}


def build_report(
    args: argparse.Namespace, env: dict[str, str], tally: Tally, recoveries: list[Recovery],
    checks: list[SessionCheck], timings: dict[str, Any],
) -> dict[str, Any]:  # fmt: skip
    """The whole run as a JSON-ready dict."""
    latencies = [1000 * (done - start) for start, done, _ in tally.successes]
    rows = _recovery_rows(recoveries)
    kinds = Counter(r["kind"] for r in rows)
    integrity = _integrity(checks)
    return {
        "config": {
            "workers": args.workers,
            "sessions": args.sessions,
            "seconds": args.seconds,
            "kill_every_s": args.kill_every,
            "redis_crash_every_s": args.redis_crash_every,
            "redis_down_s": args.redis_down,
            "seed": args.seed,
            "max_chunk": args.max_chunk,
            "model": sorted({c.model for c in checks}),
            "backend": env.get("MEMSERVE_BACKEND", "onnx"),
            "request_timeout_s": float(env["MEMSERVE_REQUEST_TIMEOUT_S"]),
            "heartbeat_ttl_s": float(env["MEMSERVE_HEARTBEAT_TTL_S"]),
            "tolerance": args.tolerance,
        },
        "timings": timings,
        "requests": {
            "sent": tally.requests,
            "ok": tally.ok,
            "failed": tally.requests - tally.ok,
            "chunks_retried": tally.retried_chunks,
            "repeats": tally.repeats,
            "points_acked": sum(c.acked for c in checks),
            "latency_ms": {
                name: None if (v := _percentile(latencies, q)) is None else round(v, 1)
                for name, q in (("p50", 0.5), ("p99", 0.99), ("max", 1.0))
            },
        },
        "errors": dict(tally.errors.most_common()),
        "faults": {
            "worker_kills": kinds["worker kill"],
            "redis_crashes": kinds["redis crash"],
            "worker_restarts": sum(r["back_after_s"] is not None for r in rows if r["kind"] == "worker kill"),
            "redis_restarts": sum(r["back_after_s"] is not None for r in rows if r["kind"] == "redis crash"),
            "unexpected_exits": [r for r in rows if r["kind"] not in FAULTS],
        },
        "recovery": rows,
        "recovery_summary": _recovery_summary(rows),
        "integrity": integrity,
        "sessions": [asdict(c) for c in checks],
        "failures": [
            {"at_s": round(start, 3), "took_s": round(done - start, 3), "what": what, "request_id": rid}
            for start, done, what, rid in tally.failures
        ],
        "result": _verdict(integrity, rows, tally.errors),
    }


def _s(value: float | None) -> str:
    return "never" if value is None else f"{value:.2f} s"


def _every(what: str, seconds: float, never: str) -> str:
    return f"{what} about every {seconds:g} s" if seconds > 0 else never


def format_report(rep: dict[str, Any]) -> str:
    """The report for people."""
    c, q, f, i, t = rep["config"], rep["requests"], rep["faults"], rep["integrity"], rep["timings"]
    lat = q["latency_ms"]
    lines = [
        f"memserve chaos: {c['workers']} workers, {c['sessions']} sessions, {c['seconds']:g} s of streaming "
        f"(model {', '.join(c['model'])}, {c['backend']} backend, seed {c['seed']})",
        f"time       startup {t['startup_s']:g} s, streaming {t['streaming_s']:g} s (with the drain and the "
        f"last restarts), checks {t['checks_s']:g} s; streaming started {t['streaming_started_at']}",
        f"faults     {_every('a worker killed', c['kill_every_s'], 'no worker kills')}; "
        f"{_every('Redis crashed', c['redis_crash_every_s'], 'no Redis crash')} (down "
        f"{c['redis_down_s']:g} s); request timeout {c['request_timeout_s']:g} s, heartbeat TTL "
        f"{c['heartbeat_ttl_s']:g} s",
        f"requests   {q['sent']:,} sent, {q['ok']:,} acknowledged, {q['failed']:,} failed "
        f"({q['chunks_retried']:,} chunks retried, {q['repeats']:,} answered as repeats); "
        f"{q['points_acked']:,} points; latency p50 {lat['p50']} ms, p99 {lat['p99']} ms, "
        f"max {lat['max']} ms",
        "errors     " + (", ".join(f"{k}: {v:,}" for k, v in rep["errors"].items()) or "none"),
        f"           {f['worker_kills']} worker kills ({f['worker_restarts']} restarted and ready), "
        f"{f['redis_crashes']} Redis crashes ({f['redis_restarts']} restarted from the AOF), "
        f"{len(f['unexpected_exits'])} unexpected exits",
    ]
    for kind, s in rep["recovery_summary"].items():
        parts = [f"{label} median {_s(v['median'])}, max {_s(v['max'])}"
                 for label, v in (("back", s["back_after_s"]), ("first success", s["first_ok_s"]),
                                  ("every session", s["all_ok_s"])) if v]  # fmt: skip
        lines.append(f"recovery   {kind}: " + "; ".join(parts))
    for r in rep["recovery"]:
        lines.append(
            f"  t={r['at_s']:7.2f} s  {r['kind']:<12} {r['target']:<24} back {_s(r['back_after_s']):>8}  "
            f"first success {_s(r['first_ok_s']):>8}  every session {_s(r['all_ok_s']):>8}"
            + (f"  ({len(r['failed_after_back'])} failed once back)" if r["failed_after_back"] else "")
        )
        if r.get("detail"):
            lines.append(f"      {r['detail']}")
    lines.append(
        f"integrity  lost {i['lost']}, doubled {i['doubled']}, reordered {i['reordered']}, mismatched "
        f"{i['mismatched']} of {i['predictions_compared']:,} predictions vs the replay (largest difference "
        f"{i['max_diff']:.3g}), {len(i['conflicts'])} seq conflicts, {len(i['sessions_lost'])} sessions lost"
    )
    verdict = rep["result"]
    if verdict["findings"]:
        lines.append("findings   " + "; ".join(verdict["findings"]))
    lines.append("result     " + ("PASS" if verdict["passed"] else "FAIL: " + "; ".join(verdict["reasons"])))
    if "logs" in rep:
        lines.append(f"logs       {rep['logs']}")
    return "\n".join(lines)
