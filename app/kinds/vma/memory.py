"""A worker's device-side cache of VMA session memories, keyed on the session's version.

A memory is loaded from Redis (embeddings, labels, packed pixels) once per version and kept
on the model's device as unit-norm embeddings plus the address prior log p(a|M). Queries
then cost one dot product per exemplar: nothing is re-embedded. Every change of a memory
bumps the session's version, so a cached entry is used only while it is current.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
from torch import Tensor

from app.store.exemplars import PIX_BYTES, Memory, unpack_pixels
from models.vma import VMAConfig


class VMAEngine(Protocol):
    """What serving asks of a VMA backend: `models.vma.VMA` itself, or `app.kinds.vma.onnx.OnnxVMA`."""

    config: VMAConfig

    def memory_embedding(self, m: Tensor) -> Tensor: ...

    def query_embedding(self, x: Tensor) -> Tensor: ...

    def similarity(self, h_m: Tensor, e: Tensor) -> Tensor: ...

    def prior_query(self) -> Tensor: ...

    def candidate_log_weights(
        self, x: Tensor, m_a: Tensor, samples: int, generator: torch.Generator | None = None,
        eps: Tensor | None = None,
    ) -> Tensor: ...  # fmt: skip

    def sample_from(self, m_a: Tensor, noise: Tensor) -> Tensor: ...


@dataclass
class DeviceMemory:
    """One session's memory at one version, ready for batched queries."""

    version: int
    etag: bytes | None  # random token of the change that wrote it (None: written before etags)
    model: str
    ids: np.ndarray  # (A,) exemplar ids
    labels: list[str]  # (A,) label of each slot
    label_names: list[str]  # distinct labels, in order of first appearance
    label_idx: Tensor  # (A,) int64 index into label_names
    h: Tensor  # (A, D) cached embeddings h(m_a)
    log_prior: Tensor  # (A,) log p(a|M)
    pix: bytes  # A * PIX_BYTES packed pixels, for the exemplars a query needs

    @property
    def size(self) -> int:
        return len(self.labels)

    @property
    def nbytes(self) -> int:
        return self.h.numel() * 4 + len(self.pix) + self.size * 64

    def pixels(self, slots: np.ndarray, device: torch.device) -> Tensor:
        """Drawings of the given slots (N,) -> (N, 1, S, S) float on ``device``."""
        rows = np.frombuffer(self.pix, dtype=np.uint8).reshape(-1, PIX_BYTES)[slots]  # (A, 98) -> (N, 98)
        images = torch.from_numpy(unpack_pixels(rows.tobytes()))  # (N, S, S)
        return images.unsqueeze(1).to(device)  # (N, S, S) -> (N, 1, S, S)

    def slot_of(self, exemplar_id: int) -> int | None:
        hits = np.flatnonzero(self.ids == exemplar_id)
        return int(hits[0]) if len(hits) else None


@torch.inference_mode()
def to_device(
    memory: Memory,
    version: int,
    model_name: str,
    model: VMAEngine,
    device: torch.device,
    etag: bytes | None = None,
) -> DeviceMemory:
    """Move a memory read from Redis to the device and compute its address prior."""
    names: dict[str, int] = {}
    idx = [names.setdefault(lab, len(names)) for lab in memory.labels]
    if memory.size == 0:  # kept (and cached) so that queries get a clear "empty memory" answer
        h = torch.zeros(0, model.config.match_dim, device=device)
        log_prior = torch.zeros(0, device=device)
    else:
        h = torch.from_numpy(memory.h.copy()).to(device)  # (A, D)
        log_prior = model.similarity(h, model.prior_query().to(device)).log_softmax(-1)[0]  # (1, A) -> (A,)
    return DeviceMemory(
        version=version, etag=etag, model=model_name, ids=memory.ids, labels=memory.labels,
        label_names=list(names), label_idx=torch.tensor(idx, dtype=torch.int64, device=device),
        h=h, log_prior=log_prior, pix=memory.pix,
    )  # fmt: skip


class MemoryCache:
    """Least-recently-used memories up to a byte budget."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._items: OrderedDict[str, DeviceMemory] = OrderedDict()
        self._bytes = 0
        self.hits = 0
        self.misses = 0

    def get(self, sid: str, version: int, etag: bytes | None = None) -> DeviceMemory | None:
        """The cached memory of ``sid`` if it is at ``version`` and ``etag``."""
        mem = self._items.get(sid)
        if mem is None or mem.version != version or mem.etag != etag:
            self.misses += 1
            return None
        self._items.move_to_end(sid)
        self.hits += 1
        return mem

    def put(self, sid: str, mem: DeviceMemory) -> None:
        self.drop(sid)
        if mem.nbytes > self.max_bytes:
            return
        self._items[sid] = mem
        self._bytes += mem.nbytes
        while self._bytes > self.max_bytes:
            _, old = self._items.popitem(last=False)
            self._bytes -= old.nbytes

    def drop(self, sid: str) -> None:
        old = self._items.pop(sid, None)
        if old is not None:
            self._bytes -= old.nbytes
