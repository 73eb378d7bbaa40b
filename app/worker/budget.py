"""A worker's memory budget: how much one batch may allocate, and batches split to fit it.

A batch's peak memory grows with its work (a `classify` of 64 drawings at 256 samples
evaluates the decoder 16,384 times, about 20 GB on a CPU if done at once), so the runners
never hand the models a whole batch: they split it into chunks whose estimated cost fits
`WorkBudget.bytes`. The cost of one unit of work (one decoder evaluation, one drawing
embedded, ...) is measured once per model by `tensor_bytes`: the bytes of every tensor the
model allocates for a small probe, an upper bound of its peak (tensors are freed as the
forward pass goes on). The budget is what `MEMSERVE_WORKER_MEMORY_MB` leaves after the
worker's resident size once its models are loaded and after its caches at their limits.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from app.config import Settings, SettingsError

log = logging.getLogger(__name__)

MB = 1 << 20
CPU_DEFAULT_MB = 2048  # MEMSERVE_WORKER_MEMORY_MB unset, on a CPU
GPU_DEFAULT_FRACTION = 0.8  # unset, on a GPU: of the device's memory


class _Allocations(TorchDispatchMode):
    """Adds up the storage of every tensor an operation returns."""

    def __init__(self) -> None:
        super().__init__()
        self.total = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, Tensor):
                self.total += t.untyped_storage().nbytes()
        return out


@torch.inference_mode()
def tensor_bytes(fn: Callable[[], object], units: int) -> int:
    """Bytes per unit of work of ``fn`` (which does ``units`` units): every tensor it allocates."""
    assert units >= 1, "a probe does at least one unit of work"
    with _Allocations() as counter:
        fn()
    return -(-counter.total // units)


def resident_bytes(device: torch.device) -> int:
    """What the worker holds now: its resident set on a CPU, allocated memory on a GPU."""
    if device.type == "cuda":
        return int(torch.cuda.memory_allocated(device))
    with open(f"/proc/{os.getpid()}/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def total_bytes(settings: Settings, device: torch.device) -> int:
    """The worker's memory limit: the setting, or the default for its device."""
    if settings.worker_memory_mb is not None:
        return settings.worker_memory_mb * MB
    if device.type == "cuda":
        return int(torch.cuda.get_device_properties(device).total_memory * GPU_DEFAULT_FRACTION)
    return CPU_DEFAULT_MB * MB


@dataclass
class WorkBudget:
    """Bytes one batch's model calls may allocate at once, and the chunking that keeps to it."""

    bytes: int
    limit: int = 0  # MEMSERVE_WORKER_MEMORY_MB in bytes (for messages)
    resident: int = 0
    caches: int = 0

    @classmethod
    def for_worker(cls, settings: Settings, device: torch.device) -> WorkBudget:
        """The budget left once the models are loaded (call it then) and the caches are full."""
        limit = total_bytes(settings, device)
        resident = resident_bytes(device)
        caches = settings.memory_cache_mb * MB + (settings.state_cache_mb * MB if device.type == "cpu" else 0)
        budget = cls(limit - resident - caches, limit, resident, caches)
        log.info(
            "memory budget %d MB: batches get %d MB (resident %d MB, caches up to %d MB)",
            limit // MB, max(budget.bytes, 0) // MB, resident // MB, caches // MB,
        )  # fmt: skip
        return budget

    def require(self, unit_bytes: int, what: str) -> None:
        """Fail at startup when not even one unit of the largest work fits."""
        if unit_bytes > self.bytes:
            raise SettingsError(
                f"MEMSERVE_WORKER_MEMORY_MB={self.limit // MB} leaves {max(self.bytes, 0) // MB} MB for "
                f"batches (the loaded models take {self.resident // MB} MB, the caches up to "
                f"{self.caches // MB} MB) but {what} needs {-(-unit_bytes // MB)} MB: raise it, or lower "
                "MEMSERVE_MEMORY_CACHE_MB / MEMSERVE_STATE_CACHE_MB"
            )

    def spans(self, costs: Sequence[int]) -> list[slice]:
        """Consecutive runs of items whose costs add up to at most the budget (one item each at
        least: `require` made sure any single item fits)."""
        out: list[slice] = []
        start, used = 0, 0
        for i, c in enumerate(costs):
            if i > start and used + c > self.bytes:
                out.append(slice(start, i))
                start, used = i, 0
            used += c
        if start < len(costs):
            out.append(slice(start, len(costs)))
        return out

    def map_rows(self, fn: Callable[..., Tensor], inputs: Sequence[Tensor], unit_bytes: int) -> Tensor:
        """``fn(*inputs)`` computed over chunks of rows (dim 0) that fit, concatenated."""
        n = inputs[0].shape[0]
        spans = self.spans([unit_bytes] * n)
        if len(spans) <= 1:
            return fn(*inputs)
        return torch.cat([fn(*(t[s] for t in inputs)) for s in spans])


UNBOUNDED = WorkBudget(bytes=1 << 62)  # tools and tests that run the runners without a worker
