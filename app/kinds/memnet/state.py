"""A worker's view of MemNet session state: its device-side cache and its writes to Redis.

Redis holds the truth: ``ms:{sid}:state`` with h, the key and value ring buffers, the fill
count, the write position and the step count (raw float32 bytes with a layout field).
A worker keeps the state it last committed for each session, keyed on the random etag that
commit wrote: when the etag in Redis is still the one it wrote, it skips reading the buffers
back. A chunk shorter than a large ring (past `WHOLE_RINGS_UP_TO`) only sends the slots it
filled, as byte patches applied inside the commit script; small rings are sent whole.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np

from app.store.codec import decode_fields, encode_array, layout_field

RING_FIELDS = ("keys", "values")
# A patch spares the network the slots a chunk did not write, but Redis cannot patch a hash field
# in place: the commit script reads the whole field, splices the patch in and writes it back,
# which costs Redis (one thread, shared by every worker and API process) more than taking the
# buffer whole. The shipped models' rings (16 KiB) under a one-point stream on the 2-vCPU
# development host: Redis's mean time per script call (commits and queue submits) 72-74 us with
# patches, 40 us with the rings whole. Rings up to this size go whole.
WHOLE_RINGS_UP_TO = 64 << 10


@dataclass
class SessionState:
    """One session's MemNet state as numpy arrays (h (H,), keys (N, Dk), values (N, Dv)).

    ``stats`` (3, D) are the running statistics of a per-session scaled model; None for a
    session stored before they existed (it starts from the model's initial ones).
    """

    h: np.ndarray
    keys: np.ndarray
    values: np.ndarray
    count: int
    pos: int
    stats: np.ndarray | None = None
    y: np.ndarray | None = None  # (D,) the last prediction, model units (None before any point)
    y_std: np.ndarray | None = None  # (D,) its std; None for a model without a predictive scale

    def copy(self) -> SessionState:
        """A copy that owns its arrays (the batch's buffers get reused)."""
        c = None if self.stats is None else self.stats.copy()
        return SessionState(
            self.h.copy(), self.keys.copy(), self.values.copy(), self.count, self.pos, c, self.y, self.y_std
        )

    @property
    def nbytes(self) -> int:
        extra = 0 if self.stats is None else self.stats.nbytes
        return int(self.h.nbytes + self.keys.nbytes + self.values.nbytes + extra)

    @classmethod
    def from_redis(cls, fields: dict[bytes, bytes]) -> SessionState:
        arrays = decode_fields(fields)
        return cls(
            h=arrays["h"], keys=arrays["keys"], values=arrays["values"],
            count=int(fields.get(b"count", b"0")), pos=int(fields.get(b"pos", b"0")),
            stats=arrays.get("stats"), y=arrays.get("y"), y_std=arrays.get("y_std"),
        )  # fmt: skip


class StateCache:
    """Least-recently-used sessions' states, bounded in bytes, keyed on the commit's etag (a
    random token per commit, so a key never names two different states)."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.bytes = 0
        self._items: OrderedDict[str, tuple[bytes, SessionState]] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def get(self, sid: str, etag: bytes) -> SessionState | None:
        item = self._items.get(sid)
        if item is None or item[0] != etag:
            self.misses += 1
            return None
        self._items.move_to_end(sid)
        self.hits += 1
        return item[1]

    def put(self, sid: str, etag: bytes, state: SessionState) -> None:
        self.drop(sid)
        if state.nbytes > self.max_bytes:
            return
        self._items[sid] = (etag, state)
        self.bytes += state.nbytes
        while self.bytes > self.max_bytes:
            _sid, (_v, old) = self._items.popitem(last=False)
            self.bytes -= old.nbytes

    def drop(self, sid: str) -> None:
        item = self._items.pop(sid, None)
        if item is not None:
            self.bytes -= item[1].nbytes


def ring_runs(start: int, length: int, capacity: int) -> list[tuple[int, int]]:
    """The contiguous slot runs [(first, count)] that `length` writes from `start` touch."""
    if length >= capacity:
        return [(0, capacity)]
    first = min(length, capacity - start)
    runs = [(start, first)]
    if length > first:
        runs.append((0, length - first))
    return runs


def commit_args(
    old: SessionState | None,
    new: SessionState,
    length: int,
    extra_arrays: dict[str, np.ndarray],
    scalars: dict[str, bytes],
    whole_up_to: int = WHOLE_RINGS_UP_TO,
) -> tuple[list[Any], list[Any]]:
    """(field/value pairs to set, (field, byte offset, bytes) patches) for the commit script.

    `length` points were written from `old.pos`. Ring buffers of at most ``whole_up_to`` bytes
    together, or with no stored buffers (`old` None), or a chunk that laps the ring, are written
    whole; otherwise only the slots the chunk wrote are patched in place.
    """
    capacity = new.keys.shape[0]
    small = new.keys.nbytes + new.values.nbytes <= whole_up_to
    whole = small or old is None or length >= capacity
    arrays: dict[str, np.ndarray] = {"h": new.h, **extra_arrays}
    for name in ("stats", "y", "y_std"):  # what only some models' states hold
        value = getattr(new, name)
        if value is not None:
            arrays[name] = value
    if whole:
        arrays.update(keys=new.keys, values=new.values)
    fields = {name: encode_array(a)[0] for name, a in arrays.items()}
    fields["layout"] = layout_field({**arrays, "keys": new.keys, "values": new.values})
    patches: list[Any] = []
    if not whole:
        assert old is not None
        for name in RING_FIELDS:
            buf: np.ndarray = getattr(new, name)
            row_bytes = buf.shape[1] * buf.itemsize
            for first, count in ring_runs(old.pos, length, capacity):
                patches += [name, first * row_bytes, encode_array(buf[first : first + count])[0]]
    pairs: list[Any] = []
    for name, value in {**fields, **scalars}.items():
        pairs += [name, value]
    return pairs, patches
