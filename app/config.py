"""The one settings object of memserve.

Every setting can be given as an environment variable with the prefix ``MEMSERVE_``
(``MEMSERVE_REDIS_URL``, ``MEMSERVE_MAX_BATCH``, ...) or in a ``.env`` file. The API and the
workers receive the same `Settings` instance explicitly; nothing reads the environment
behind their backs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

REPO_ROOT = Path(__file__).resolve().parents[1]


class SettingsError(RuntimeError):
    """A setting makes startup impossible; the message names the setting to change."""


class Settings(BaseSettings):
    """Configuration shared by the API, the workers and the CLI."""

    model_config = SettingsConfigDict(env_prefix="MEMSERVE_", env_file=".env", extra="ignore")

    # --- Redis ---
    redis_url: str | None = Field(
        None, description="Redis URL; unset: `memserve serve` starts an embedded Redis"
    )
    redis_data_dir: Path = Field(Path(".memserve"), description="where the embedded Redis keeps its database")
    key_prefix: str = Field("ms", description="prefix of every Redis key memserve writes")

    # --- models ---
    checkpoint_dir: Path = Field(
        REPO_ROOT / "checkpoints", description="directory of *.safetensors + *.json model cards"
    )
    default_memnet_model: str = Field("memnet-mackey-glass", description="model of new sessions")
    default_vma_model: str = Field("vma-omniglot", description="model of new VMA sessions")

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
    queue_cap: int = Field(10_000, ge=1, description="jobs waiting per stream before 429")

    # --- workers ---
    workers: int | None = Field(None, ge=0, description="`serve`: worker processes (unset: auto)")
    device: str = Field("auto", description="auto, cpu, cuda or cuda:N (a worker runs on one device)")
    backend: Literal["torch", "onnx"] = Field(
        "onnx", description="inference backend of workers: torch, or onnx (ONNX Runtime, `memserve export`)"
    )
    max_batch: int = Field(64, ge=1, description="jobs per batch at most")
    max_wait_ms: float = Field(2.0, ge=0, description="wait this long to fill a batch")
    heartbeat_interval_s: float = Field(1.0, gt=0, description="how often a worker reports alive")
    heartbeat_ttl_s: float = Field(5.0, gt=0, description="a worker silent this long is dead")
    claim_interval_s: float = Field(1.0, gt=0, description="how often to look for orphaned jobs")
    max_deliveries: int = Field(3, ge=1, description="a job that failed this often is dropped")
    stuck_job_s: float = Field(
        60.0, gt=0, description="a job pending this long is re-run even if its worker seems alive"
    )
    reply_ttl_s: int = Field(600, ge=1, description="how long a job's reply is kept for retries")
    torch_threads: int = Field(1, ge=1, description="intra-op threads per worker")
    state_cache_mb: int = Field(256, ge=0, description="worker's cache of session states it wrote")
    memory_cache_mb: int = Field(512, ge=0, description="worker's cache of VMA memories (device side)")
    fault_batch_delay_ms: float = Field(
        0.0, ge=0, description="fault injection for resilience tests: stall after reading a batch"
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
    """The README's settings table, from the fields above (`python -m app.config`)."""
    rows = ["| variable | default | meaning |", "|---|---|---|"]
    for name, field in Settings.model_fields.items():
        default = field.default
        if isinstance(default, Path):
            default = "<repo>/checkpoints" if default == REPO_ROOT / "checkpoints" else str(default)
        rows.append(f"| `MEMSERVE_{name.upper()}` | `{default}` | {field.description or ''} |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(settings_table())
