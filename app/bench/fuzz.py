"""``memserve fuzz``: schemathesis against a running memserve, over every operation of the OpenAPI
document the service serves (``GET /openapi.json``).

Before the run one session per served model is made (a VMA one gets a few exemplars), and the
operations that take a session id draw it from those most of the time and make one up otherwise,
so that generated requests reach the models and not only the 404 of an unknown session. The
schemathesis phases then run in order: the document's examples, its boundaries (coverage),
random requests (fuzzing) and chains of them along the document's links (stateful). Each response
is checked: no 5xx, a documented status code, content type, headers and body schema, and, when
a key is given, that a request without it is refused.

The run makes sessions with the key's tenant and leaves those it does not delete to expire:
point it at a service (or a tenant) kept for testing. ``schemathesis`` comes with the ``dev``
extra (``pip install -e '.[dev]'``).

    memserve fuzz --url http://127.0.0.1:8000 --key $MEMSERVE_API_KEY --max-examples 500
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np

# Checks run on every response. `ignored_auth` (a request without the key must be refused) is
# added when a key is given: with authentication off the service rightly ignores it.
CHECKS = (
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_headers_conformance",
    "response_schema_conformance",
)
AUTH_CHECKS = ("ignored_auth",)
PHASES = ("examples", "coverage", "fuzzing", "stateful")
SEED = 20260101
KEY_ENV = "MEMSERVE_FUZZ_KEY"  # how the key reaches schemathesis
SEED_EXEMPLARS = 8
# How often an operation on a session is sent one of the seeded sessions rather than a made-up id.
KNOWN_ID_PROBABILITY = 0.8

# Operations on a session, by the kind of session that does not refuse them with 409.
# `DELETE /v1/sessions/{sid}` is left out: it would end the seeded sessions for every case after.
_MEMNET_OPS = ("POST /v1/sessions/{sid}/points",)
_VMA_OPS = (
    "POST /v1/sessions/{sid}/exemplars",
    "GET /v1/sessions/{sid}/exemplars",
    "POST /v1/sessions/{sid}/samples",
    "POST /v1/sessions/{sid}/classify",
    "DELETE /v1/sessions/{sid}/exemplars/{eid}",
)
_ANY_KIND_OPS = (
    "GET /v1/sessions/{sid}",
    "GET /v1/sessions/{sid}/export",
    "POST /v1/sessions/{sid}/fork",
)


@dataclass
class Seeded:
    """Sessions made before the run, by kind, and exemplar ids that the run may delete."""

    memnet: list[str] = field(default_factory=list)
    vma: list[str] = field(default_factory=list)
    exemplar_ids: list[int] = field(default_factory=list)


@dataclass
class FuzzResult:
    """What one schemathesis run found, from its JSON report."""

    cases: int
    failures: list[dict[str, Any]]  # groups: type, code, title, count, operations
    errors: list[dict[str, Any]]  # groups: title, count
    seconds: float  # the whole command: seeding, schemathesis and its report
    operations: int
    exit_code: int
    report: dict[str, Any]

    @property
    def failed(self) -> int:
        return sum(int(f.get("count", 1)) for f in self.failures)

    @property
    def errored(self) -> int:
        return sum(int(e.get("count", 1)) for e in self.errors)

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and not self.failures and not self.errors

    def summary(self) -> str:
        """One line: cases, failures, errors, operations, time."""
        return (
            f"{self.cases} cases over {self.operations} operations, {self.failed} failures, "
            f"{self.errored} errors, in {self.seconds:.1f} s"
        )


def _headers(key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"} if key else {}


def _drawing(rng: np.random.Generator) -> list[list[float]]:
    """A 28 x 28 pixel array with a few strokes of ink (1 = ink)."""
    ink = np.zeros((28, 28))
    for _ in range(3):
        r, c = rng.integers(2, 22, size=2)
        if rng.random() < 0.5:
            ink[r : r + 2, c : c + 6] = 1.0
        else:
            ink[r : r + 6, c : c + 2] = 1.0
    rows: list[list[float]] = ink.tolist()
    return rows


def seed_sessions(url: str, key: str | None, seed: int = SEED) -> Seeded:
    """One session per model the service serves; each VMA one with `SEED_EXEMPLARS` exemplars."""
    rng = np.random.default_rng(seed)
    seeded = Seeded()
    with httpx.Client(base_url=url, headers=_headers(key), timeout=60) as http:
        listed = http.get("/v1/models")
        listed.raise_for_status()
        models = sorted({(m["name"], m["kind"]) for m in listed.json()["models"] if m.get("latest")})
        for name, kind in models:
            made = http.post("/v1/sessions", json={"kind": kind, "model": name})
            made.raise_for_status()
            sid = str(made.json()["id"])
            if kind == "memnet":
                seeded.memnet.append(sid)
                continue
            seeded.vma.append(sid)
            exemplars = [{"pixels": _drawing(rng), "label": "ab"[i % 2]} for i in range(SEED_EXEMPLARS)]
            added = http.post(f"/v1/sessions/{sid}/exemplars", json={"exemplars": exemplars})
            added.raise_for_status()
            ids = [int(i) for i in added.json()["ids"]]
            # The run may delete the last few; the first ones stay for samples and classify.
            seeded.exemplar_ids = sorted({*seeded.exemplar_ids, *ids[SEED_EXEMPLARS // 2 :]})
    return seeded


def _toml(value: Any) -> str:
    # JSON strings, numbers and arrays are TOML too; tables are written inline.
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{json.dumps(k)} = {_toml(v)}" for k, v in value.items()) + " }"
    return json.dumps(value)


def config_toml(seeded: Seeded, keyed: bool, probability: float = KNOWN_ID_PROBABILITY) -> str:
    """A schemathesis configuration that draws session ids (and exemplar ids) from `seeded`, and
    with `keyed`, authenticates with the key in `$KEY_ENV` (never written to the file)."""
    dictionaries = {
        "memnet": seeded.memnet,
        "vma": seeded.vma,
        "sessions": seeded.memnet + seeded.vma,
        "exemplars": seeded.exemplar_ids,
    }
    lines: list[str] = []
    if keyed:  # on every request; the `ignored_auth` check sends its own without it
        lines += [f'headers = {{ "Authorization" = "Bearer ${{{KEY_ENV}}}" }}', ""]
    for name, values in dictionaries.items():
        if values:
            lines += [f"[dictionaries.{name}]", f"values = {_toml(values)}", ""]
    for dictionary, names in (("memnet", _MEMNET_OPS), ("vma", _VMA_OPS), ("sessions", _ANY_KIND_OPS)):
        if not dictionaries[dictionary]:
            continue
        for name in names:
            params: dict[str, Any] = {"path.sid": {"dictionary": dictionary, "probability": probability}}
            if "{eid}" in name and seeded.exemplar_ids:
                params["path.eid"] = {"dictionary": "exemplars", "probability": probability}
            lines += ["[[operations]]", f"include-name = {_toml(name)}", f"parameters = {_toml(params)}", ""]
    return "\n".join(lines)


def schemathesis_command(
    url: str,
    key: str | None,
    config: Path,
    report: Path,
    max_examples: int,
    seed: int,
    workers: int,
    phases: Sequence[str] = PHASES,
) -> list[str]:
    """The `schemathesis run` command line (run with this interpreter)."""
    checks = (*CHECKS, *(AUTH_CHECKS if key else ()))
    cmd = [
        sys.executable, "-m", "schemathesis.cli", "--config-file", str(config), "run",
        f"{url.rstrip('/')}/openapi.json",
        "--checks", ",".join(checks),
        "--phases", ",".join(phases),
        "--max-examples", str(max_examples),
        "--seed", str(seed),
        "--workers", str(workers),
        "--generation-database", "none",  # no examples carried over from another run: repeatable
        "--request-timeout", "60",
        "--report", "json", "--report-json-path", str(report),
        "--no-color",
    ]  # fmt: skip
    return cmd


def run_fuzz(
    url: str,
    key: str | None = None,
    max_examples: int = 100,
    seed: int = SEED,
    workers: int = 1,
    phases: Sequence[str] = PHASES,
    output: Path | None = None,
    seed_data: bool = True,
) -> FuzzResult:
    """Seed sessions, run schemathesis against `url` and read its report.

    `output`: where schemathesis' own output goes (a file; None: this process' stdout).
    """
    started = time.monotonic()
    seeded = seed_sessions(url, key, seed) if seed_data else Seeded()
    with tempfile.TemporaryDirectory(prefix="memserve-fuzz-") as tmp:
        config = Path(tmp) / "schemathesis.toml"
        config.write_text(config_toml(seeded, keyed=bool(key)))
        report_path = Path(tmp) / "report.json"
        cmd = schemathesis_command(url, key, config, report_path, max_examples, seed, workers, phases)
        # In the temporary directory: schemathesis keeps the failures it found under its working
        # directory and replays them first next time, which would make runs depend on each other.
        env = {**os.environ, KEY_ENV: key or ""}  # the key: not on a command line, not in a file
        if output is None:
            code = subprocess.call(cmd, cwd=tmp, env=env)
        else:
            with open(output, "wb") as out:
                code = subprocess.call(cmd, cwd=tmp, env=env, stdout=out, stderr=subprocess.STDOUT)
        if not report_path.is_file():
            raise RuntimeError(f"schemathesis exited with {code} and wrote no report")
        report = json.loads(report_path.read_text())
    return FuzzResult(
        cases=int(report["test_cases"]["generated"]),
        failures=list(report.get("failures") or []),
        errors=list(report.get("errors") or []),
        seconds=time.monotonic() - started,
        operations=int((report.get("operations") or {}).get("tested", 0)),
        exit_code=code,
        report=report,
    )


def build_parser() -> argparse.ArgumentParser:
    """Argument parser for ``memserve fuzz``."""
    p = argparse.ArgumentParser(
        prog="memserve fuzz",
        description="schemathesis against a running memserve, over every operation of its OpenAPI "
        "document: no 5xx, documented statuses, content types, headers and bodies",
    )
    p.add_argument("--url", default="http://127.0.0.1:8000", help="the service (default %(default)s)")
    p.add_argument(
        "--key",
        default=os.environ.get("MEMSERVE_API_KEY"),
        help="API key (default $MEMSERVE_API_KEY); omit it for a service with authentication off",
    )
    p.add_argument(
        "--max-examples", type=int, default=500, help="generated cases per operation and phase at most"
    )
    p.add_argument("--seed", type=int, default=SEED, help="generation seed (default %(default)s)")
    p.add_argument("--workers", type=int, default=1, help="concurrent schemathesis workers")
    p.add_argument("--phases", default=",".join(PHASES), help="comma-separated (default %(default)s)")
    p.add_argument("--no-seed-sessions", action="store_true", help="make no sessions before the run")
    p.add_argument("--json", type=Path, help="write the figures and schemathesis' report here")
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``memserve fuzz``: exit 0 when no check failed and nothing errored."""
    args = build_parser().parse_args(argv)
    try:
        import schemathesis  # noqa: F401
    except ImportError:
        print("memserve fuzz needs schemathesis: pip install -e '.[dev]'", file=sys.stderr)
        return 2
    try:
        result = run_fuzz(
            args.url, args.key, args.max_examples, args.seed, args.workers,
            tuple(p for p in args.phases.split(",") if p), seed_data=not args.no_seed_sessions,
        )  # fmt: skip
    except (httpx.HTTPError, RuntimeError) as e:
        print(f"memserve fuzz: {e}", file=sys.stderr)
        return 1
    print(f"memserve fuzz: {result.summary()}", file=sys.stderr)
    if args.json is not None:
        figures = {"cases": result.cases, "failures": result.failed, "errors": result.errored,
                   "seconds": round(result.seconds, 1), "operations": result.operations}  # fmt: skip
        args.json.write_text(json.dumps({**figures, "report": result.report}, indent=2) + "\n")
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
