"""The one settings object of memserve.

Every setting can be given as an environment variable with the prefix ``MEMSERVE_``
(``MEMSERVE_REDIS_URL``, ``MEMSERVE_MAX_BATCH``, ...) or in a ``.env`` file. The API and the
workers receive the same `Settings` instance explicitly; nothing reads the environment
behind their backs.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

REPO_ROOT = Path(__file__).resolve().parents[1]


def cpu_set(spec: str) -> set[int]:
    """The cores of a list like ``1`` or ``2-3,6`` (empty: none)."""
    cores: set[int] = set()
    for part in filter(None, (p.strip() for p in spec.split(","))):
        lo, _, hi = part.partition("-")
        if not lo.isdigit() or (hi and not hi.isdigit()) or (hi and int(hi) < int(lo)):
            raise ValueError(f"MEMSERVE_WORKER_CPUS={spec!r}: use core numbers and ranges, e.g. 1 or 2-3,6")
        cores.update(range(int(lo), int(hi or lo) + 1))
    return cores


class SettingsError(RuntimeError):
    """A setting makes startup impossible; the message names the setting to change."""


TENANT_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class ApiKey(BaseModel):
    """One API key, as configured: never the key itself, only its SHA-256.

    Keys are 256-bit random strings (``memserve keys new``), so a plain SHA-256 is enough to
    make a leaked configuration useless: there is nothing to brute-force, unlike a password.
    Several keys may name one tenant (rotation: both work while clients move over); sessions
    belong to the tenant, and its limits are counted per tenant.
    """

    tenant: str = Field(description="who the key acts for; owns the sessions it creates")
    sha256: str = Field(description="hex SHA-256 of the key")
    # Unset: the default setting; 0: unlimited.
    max_sessions: int | None = Field(None, ge=0, description="live sessions of the tenant at most")
    rate_per_s: float | None = Field(None, ge=0, description="requests per second")
    burst: int | None = Field(None, ge=1, description="requests allowed at once above the rate")

    @field_validator("tenant")
    @classmethod
    def _tenant_name(cls, v: str) -> str:
        if not TENANT_RE.match(v):
            raise ValueError("a tenant is 1-64 characters of letters, digits, '.', '_' or '-'")
        return v

    @field_validator("sha256")
    @classmethod
    def _hex_digest(cls, v: str) -> str:
        v = v.lower()
        if not re.fullmatch(r"[0-9a-f]{64}", v):
            raise ValueError("sha256 is 64 hex digits (see `memserve keys new`)")
        return v


class Settings(BaseSettings):
    """Configuration shared by the API, the workers and the CLI."""

    model_config = SettingsConfigDict(env_prefix="MEMSERVE_", env_file=".env", extra="ignore")

    # --- Redis ---
    redis_url: str | None = Field(
        None, description="Redis URL; unset: `memserve serve` starts an embedded Redis"
    )
    redis_data_dir: Path = Field(Path(".memserve"), description="where the embedded Redis keeps its database")
    key_prefix: str = Field("ms", description="prefix of every Redis key memserve writes")
    redis_max_connections: int = Field(256, ge=2, description="connections of an API process to Redis")
    redis_pool_timeout_s: float = Field(
        5.0, gt=0, description="how long a request waits for a free Redis connection before its 503"
    )
    redis_cluster: bool = Field(
        False, description="MEMSERVE_REDIS_URL names a node of a Redis Cluster (client in cluster mode)"
    )

    # --- models ---
    checkpoint_dir: Path = Field(
        REPO_ROOT / "checkpoints", description="directory of *.safetensors + *.json model cards"
    )
    default_memnet_model: str = Field(
        "memnet-universal", description="model of new MemNet sessions (any series, per-session scaling)"
    )
    default_vma_model: str = Field("vma-omniglot", description="model of new VMA sessions")
    extra_kinds: str = Field(
        "",
        description="model kinds served besides the built-in ones, comma-separated `name=package` "
        "(a kind's folder, see docs/architecture.md); the API and every worker must name the same",
    )
    reload_interval_s: float = Field(
        5.0, ge=0, description="how often workers and the API look for new checkpoint versions (0: never)"
    )

    # --- HTTP API ---
    host: str = Field("127.0.0.1", description="API listen address")
    port: int = Field(8000, description="API listen port")
    default_ttl_s: int = Field(3600, ge=1, description="idle time before a session expires")
    max_ttl_s: int = Field(7 * 24 * 3600, ge=1, description="longest ttl_s a session may ask for")
    max_points_per_request: int = Field(4096, ge=1, description="points in one request (413 above)")
    max_horizon: int = Field(1000, ge=0, description="forecast steps in one request (422 above)")
    max_body_bytes: int = Field(4 << 20, ge=1024, description="request body size (413 above)")
    vma_capacity: int = Field(4096, ge=1, description="exemplars a VMA session holds unless it asks")
    max_vma_capacity: int = Field(65536, ge=1, description="largest capacity a VMA session may ask for")
    max_exemplars_per_request: int = Field(256, ge=1, description="exemplars in one request (413 above)")
    max_images_per_request: int = Field(64, ge=1, description="drawings to classify in one request (413)")
    request_timeout_s: float = Field(10.0, gt=0, description="wait for a worker's reply (504)")
    max_decoder_evals: int = Field(
        4096, ge=1, description="drawings x samples of one classify request (413 above; ~6 s on a CPU thread)"
    )
    queue_cap: int = Field(10_000, ge=1, description="jobs waiting per stream before 429")

    # --- tenancy ---
    auth: Literal["keys", "off"] = Field(
        "keys",
        description="keys: every /v1 request needs `Authorization: Bearer <key>`; off: one local "
        "tenant, no keys, no limits (`memserve serve` turns it off unless keys are given)",
    )
    api_keys: list[ApiKey] = Field(
        [], description="JSON list of {tenant, sha256[, max_sessions, rate_per_s, burst]}"
    )
    api_keys_file: Path | None = Field(None, description="JSON file of more api_keys (e.g. a mounted secret)")
    max_sessions_per_key: int = Field(1000, ge=0, description="live sessions per tenant (429; 0: unlimited)")
    rate_limit_per_s: float = Field(100.0, ge=0, description="requests per second per tenant (0: unlimited)")
    rate_limit_burst: int = Field(200, ge=1, description="requests a tenant may make at once above the rate")

    # --- workers ---
    workers: int | None = Field(None, ge=0, description="`serve`: worker processes (unset: auto)")
    device: str = Field("auto", description="auto, cpu, cuda or cuda:N (a worker runs on one device)")
    backend: Literal["torch", "onnx"] = Field(
        "onnx", description="inference backend of workers: torch, or onnx (ONNX Runtime, `memserve export`)"
    )
    decoder_precision: Literal["fp32", "bf16"] = Field(
        "fp32",
        description="arithmetic of the VMA decoder (the likelihood bound and samples) on a CPU worker: "
        "fp32 as exported, or bf16 (PyTorch on the CPU's AMX bfloat16 tiles: the bound moves by about "
        "0.1 nats; faster when the worker keeps a core to itself, see docs/benchmarks.md)",
    )
    query_embedding: Literal["fp32", "int8"] = Field(
        "fp32",
        description="VMA's query embedding h_q(x) on a CPU worker of the onnx backend: fp32 as exported, "
        "or int8 (the export's quantized graph: few-shot accuracy unchanged within 0.2 points, the graph "
        "1.4x faster, see docs/benchmarks.md); GPU workers and the torch backend run fp32",
    )
    max_batch: int = Field(64, ge=1, description="jobs per batch at most")
    vma_split_batch: int | None = Field(
        None,
        ge=1,
        description="a worker runs at most half the VMA jobs in hand per batch, but never fewer than this "
        "many (unset: 8 on a CPU worker; a GPU worker runs every job in hand). Taking every waiting job "
        "at once, a worker answered them all together: the API then idled while the worker ran and the "
        "worker while the API turned the replies round; with halves one batch's replies go out while the "
        "next runs (docs/benchmarks.md)",
    )
    max_wait_ms: float = Field(
        0.5, ge=0, description="wait this long after a batch's oldest job was queued for more to join it"
    )
    heartbeat_interval_s: float = Field(1.0, gt=0, description="how often a worker reports alive")
    heartbeat_ttl_s: float = Field(5.0, gt=0, description="a worker silent this long is dead")
    claim_interval_s: float = Field(1.0, gt=0, description="how often to look for orphaned jobs")
    max_deliveries: int = Field(
        3, ge=1, description="a job whose worker failed or died this often is refused (500)"
    )
    stuck_job_s: float = Field(
        60.0, gt=0, description="a job pending this long is re-run even if its worker seems alive"
    )
    reply_ttl_s: int = Field(600, ge=1, description="how long a job's reply is kept for retries")
    torch_threads: int = Field(1, ge=1, description="intra-op threads per worker")
    worker_cpus: str = Field(
        "",
        description="CPU cores a worker process is pinned to (Linux), e.g. `1` or `2-3,6`; every worker "
        "of `serve` gets the same set; empty: wherever the OS schedules it",
    )
    state_cache_mb: int = Field(256, ge=0, description="worker's cache of session states it wrote")
    memory_cache_mb: int = Field(
        512,
        ge=0,
        description="worker's cache of VMA memories (device side); a quarter of it keeps exemplars' "
        "p(z|m_a) and feature maps for the likelihood bound",
    )
    worker_memory_mb: int | None = Field(
        None,
        ge=64,
        description="memory of a worker (RSS on a CPU, allocated on a GPU): batches are split "
        "to fit what its models and caches leave; unset: 2048 on a CPU, 80% of a GPU",
    )
    fault_batch_delay_ms: float = Field(
        0.0, ge=0, description="fault injection for resilience tests: stall after reading a batch"
    )
    fault_crash_request: str = Field(
        "", description="fault injection for resilience tests: a worker dies holding this request id's job"
    )

    log_level: str = Field("INFO", description="DEBUG, INFO, WARNING or ERROR")
    log_format: Literal["text", "json"] = Field(
        "text", description="log lines: text (for people) or json (one object per line, for log shippers)"
    )
    access_log: bool = Field(
        False, description="log a line per HTTP request (API) and per job (workers), with its request id"
    )

    @field_validator("key_prefix")
    @classmethod
    def _prefix_has_no_braces(cls, v: str) -> str:
        if not v or any(c in v for c in "{}: "):
            raise ValueError("MEMSERVE_KEY_PREFIX must be non-empty, without braces, ':' or spaces")
        return v

    @field_validator("worker_cpus")
    @classmethod
    def _cpu_list(cls, v: str) -> str:
        cpu_set(v)  # raises with what to fix
        return v

    def all_api_keys(self) -> list[ApiKey]:
        """`api_keys` plus those of `api_keys_file`; a startup error names what to fix."""
        keys = list(self.api_keys)
        if self.api_keys_file is not None:
            try:
                raw = json.loads(self.api_keys_file.read_text())
                keys += [ApiKey.model_validate(k) for k in raw]
            except (OSError, ValueError, TypeError) as e:  # pydantic's ValidationError is a ValueError
                raise SettingsError(f"MEMSERVE_API_KEYS_FILE {self.api_keys_file}: {e}") from e
        digests = [k.sha256 for k in keys]
        if len(set(digests)) != len(digests):
            raise SettingsError("MEMSERVE_API_KEYS: the same key (sha256) is listed twice")
        if self.auth == "keys" and not keys:
            raise SettingsError(
                "no API keys: add one to MEMSERVE_API_KEYS (`memserve keys new TENANT` prints it), "
                "or set MEMSERVE_AUTH=off for local use without keys"
            )
        return keys

    def require_redis_url(self) -> str:
        """The Redis URL, or a startup error that says which setting to give."""
        if not self.redis_url:
            raise SettingsError(
                "no Redis configured: set MEMSERVE_REDIS_URL (e.g. redis://127.0.0.1:6379/0), "
                "or use `memserve serve`, which starts an embedded Redis"
            )
        return self.redis_url

    def check_checkpoints(self) -> None:
        """Fail fast when the checkpoint directory holds no model card."""
        d = self.checkpoint_dir
        if not d.is_dir() or not any(d.glob("*.json")):
            raise SettingsError(
                f"no model cards (*.json) in {d}: set MEMSERVE_CHECKPOINT_DIR to a directory "
                "of checkpoints, or train one with `memserve train memnet`"
            )


def settings_table() -> str:
    """docs/configuration.md, made from the fields above: `python -m app.config > docs/configuration.md`.

    Every setting's variable, default and meaning come from `Settings` (and an API key entry's
    fields from `ApiKey`), so the page cannot drift from the code; a unit test compares them.
    """

    def shown(value: object) -> str:
        if isinstance(value, Path):
            value = "<repo>/checkpoints" if value == REPO_ROOT / "checkpoints" else str(value)
        return '`""`' if value == "" else f"`{value}`"

    def text(description: str | None) -> str:  # Markdown: a * outside `code` is not emphasis
        parts = (description or "").split("`")
        return "`".join(p if i % 2 else p.replace("*", "\\*") for i, p in enumerate(parts))

    rows = ["| variable | default | meaning |", "|---|---|---|"]
    for name, field in Settings.model_fields.items():
        rows.append(f"| `MEMSERVE_{name.upper()}` | {shown(field.default)} | {text(field.description)} |")
    key_rows = ["| field | required | meaning |", "|---|---|---|"]
    for name, field in ApiKey.model_fields.items():
        required = "yes" if field.is_required() else "no"
        key_rows.append(f"| `{name}` | {required} | {text(field.description)} |")
    return "\n".join(
        [
            "# Configuration",
            "",
            "<!-- Generated from app/config.py by `python -m app.config > docs/configuration.md`:",
            "     edit the Settings fields there, not this file. -->",
            "",
            "One `Settings` object (pydantic-settings), read from `MEMSERVE_*` environment variables or a",
            "`.env` file and passed explicitly to the API and to every worker; nothing reads the",
            "environment behind their backs. A value that makes startup impossible stops the process with",
            "a message that names the setting to change. `memserve serve`, `memserve api` and `memserve",
            "worker` also take some of them as options, which win over the environment: `--host`,",
            "`--port`, `--device`, `--backend`, `--workers` (`memserve <command> --help` says which).",
            "",
            *rows,
            "",
            "## API key entries",
            "",
            "`MEMSERVE_API_KEYS`, and the file named by `MEMSERVE_API_KEYS_FILE`, hold a JSON list of",
            "entries; `memserve keys new TENANT` prints one. A limit left out takes its setting's default",
            "(`MEMSERVE_MAX_SESSIONS_PER_KEY`, `MEMSERVE_RATE_LIMIT_PER_S`, `MEMSERVE_RATE_LIMIT_BURST`);",
            "0 sessions or 0 requests per second means unlimited. How keys, tenants and limits work:",
            "[operations.md](operations.md#tenancy-api-keys-and-limits).",
            "",
            *key_rows,
        ]
    )


if __name__ == "__main__":
    print(settings_table())
