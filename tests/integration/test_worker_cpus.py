"""MEMSERVE_WORKER_CPUS: a real worker process keeps to the cores it is given (every thread
of it), says so in its heartbeat, and a core it may not use is refused with the setting's name."""

from __future__ import annotations

import os
from pathlib import Path

import orjson
import pytest
import redis

from app.config import Settings, SettingsError, cpu_set
from app.worker.main import worker_cores


def _allowed(pid: int) -> str:
    status = Path(f"/proc/{pid}/status").read_text()
    return next(
        line.split(":", 1)[1].strip() for line in status.splitlines() if line.startswith("Cpus_allowed_list")
    )


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="CPU affinity is Linux's")
def test_a_pinned_worker_runs_on_its_cores_only(start_worker, settings: Settings, rdb: redis.Redis) -> None:
    core = max(os.sched_getaffinity(0))
    w = start_worker(worker_cpus=str(core))
    assert _allowed(w.pid) == str(core)
    threads = list(Path(f"/proc/{w.pid}/task").iterdir())
    assert len(threads) > 1 and {_allowed(int(t.name)) for t in threads} == {str(core)}, "threads inherit it"
    beats = [orjson.loads(rdb.get(k)) for k in rdb.scan_iter(f"{settings.key_prefix}:workers:*")]
    assert [b["cpus"] for b in beats if b["pid"] == w.pid] == [[core]]


def test_core_lists_parse_and_wrong_ones_say_what_to_fix() -> None:
    assert cpu_set("") == set() and cpu_set("1") == {1} and cpu_set("2-3, 6") == {2, 3, 6}
    for bad in ("x", "3-1", "1;2", "-1"):
        with pytest.raises(ValueError, match="MEMSERVE_WORKER_CPUS"):
            Settings(worker_cpus=bad)
    with pytest.raises(SettingsError, match="MEMSERVE_WORKER_CPUS=4096: this process may run on cores"):
        worker_cores("4096")
