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
from models.vma import Prior, VMAConfig, unit_directions


class VMAEngine(Protocol):
    """What serving asks of a VMA backend: `models.vma.VMA` itself, `app.kinds.vma.onnx.OnnxVMA`, or
    either with a bfloat16 decoder (`app.kinds.vma.bf16.Bf16Decoding`)."""

    config: VMAConfig

    def memory_embedding(self, m: Tensor) -> Tensor: ...

    def query_embedding(self, x: Tensor) -> Tensor: ...

    def similarity(self, h_m: Tensor, e: Tensor) -> Tensor: ...

    def prior_query(self) -> Tensor: ...

    def candidate_log_weights(
        self, x: Tensor, m_a: Tensor, samples: int, generator: torch.Generator | None = None,
        eps: Tensor | None = None, prior: Prior | None = None,
    ) -> Tensor: ...  # fmt: skip

    def z_prior(self, m_a: Tensor) -> Prior: ...

    def z_posterior(self, x: Tensor, m_a: Tensor) -> tuple[Tensor, Tensor]: ...

    def sample_from(self, m_a: Tensor, noise: Tensor, anchor: Tensor | None = None) -> Tensor: ...


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
    directions: Tensor  # (D, A) the embeddings' unit directions h(m_a) / ||h(m_a)||, transposed
    log_prior: Tensor  # (A,) log p(a|M)
    pix: bytes  # A * PIX_BYTES packed pixels, for the exemplars a query needs

    @property
    def size(self) -> int:
        return len(self.labels)

    @property
    def nbytes(self) -> int:
        return self.directions.numel() * 4 + len(self.pix) + self.size * 64

    def pixels(self, slots: np.ndarray, device: torch.device) -> Tensor:
        """Drawings of the given slots (N,) -> (N, 1, S, S) float on ``device``."""
        rows = np.frombuffer(self.pix, dtype=np.uint8).reshape(-1, PIX_BYTES)[slots]  # (A, 98) -> (N, 98)
        images = torch.from_numpy(unpack_pixels(rows.tobytes()))  # (N, S, S)
        return images.unsqueeze(1).to(device)  # (N, S, S) -> (N, 1, S, S)

    def packed(self, slot: int) -> bytes:
        """The stored drawing of one slot, as packed bits."""
        return self.pix[slot * PIX_BYTES : (slot + 1) * PIX_BYTES]

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
        directions=unit_directions(h).T.contiguous(), log_prior=log_prior, pix=memory.pix,
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


class PriorCache:
    """p(z|m_a), c(m_a) and the pyramid of single exemplars, least recently used first out.

    The likelihood bound's candidates are a session's exemplars, the same few again and again;
    with what `VMAEngine.z_prior` gives for an exemplar kept, a bound runs only q(z|m_a, x) and
    the decoder. An entry is keyed by the loaded model (``ServedVMA.token``), the session and the
    exemplar id, and holds the exemplar's packed pixels: a hit must show the same drawing, so a
    key can never give another exemplar's numbers.
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._items: OrderedDict[tuple[str, str, int], tuple[bytes, list[Tensor], int]] = OrderedDict()
        self._bytes = 0
        self.hits = 0
        self.misses = 0

    def lookup(
        self, engine: VMAEngine, token: str, keys: list[tuple[str, int]], pix: list[bytes], m_a: Tensor
    ) -> Prior:
        """The prior of each exemplar (session, exemplar id) with packed pixels ``pix`` and drawing
        m_a (R, 1, S, S), rows in that order; the ones not kept computed in one pass and kept."""
        found: list[list[Tensor] | None] = []
        for (sid, eid), packed in zip(keys, pix, strict=True):
            item = self._items.get((token, sid, eid))
            if item is not None and item[0] == packed:
                self._items.move_to_end((token, sid, eid))
                found.append(item[1])
            else:
                found.append(None)
        missing = [i for i, f in enumerate(found) if f is None]
        self.hits += len(found) - len(missing)
        self.misses += len(missing)
        if missing:
            mu, log_std, c_m, feats = engine.z_prior(m_a[missing])
            for j, i in enumerate(missing):
                # Its own storage, not the batch's, in the batch's layout (the bfloat16 decoder's
                # maps are channels-last, and `torch.cat` keeps that).
                parts = [t[j : j + 1].clone() for t in (mu, log_std, c_m, *feats)]
                found[i] = parts
                self._put((token, *keys[i]), pix[i], parts)
        cols = [torch.cat(col) for col in zip(*found, strict=True)]  # per part: R x (1, ...) -> (R, ...)
        return cols[0], cols[1], cols[2], cols[3:]

    def _put(self, key: tuple[str, str, int], packed: bytes, parts: list[Tensor]) -> None:
        size = sum(t.numel() * t.element_size() for t in parts) + len(packed)
        old = self._items.pop(key, None)
        if old is not None:
            self._bytes -= old[2]
        if size > self.max_bytes:
            return
        self._items[key] = (packed, parts, size)
        self._bytes += size
        while self._bytes > self.max_bytes:
            _, (_, _, freed) = self._items.popitem(last=False)
            self._bytes -= freed
