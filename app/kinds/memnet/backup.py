"""What a MemNet session's backup holds (its ``state`` hash) and when it fits the model it is
restored into: capacity fixed by the model, every buffer of the shape the model reads."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from app.catalog import ModelInfo
from app.errors import InvalidBackup
from app.registry import BackupRules
from app.store.backup import SessionDoc
from app.store.backup_check import int_field
from app.store.codec import decode_fields

STATS_ROWS = 6  # rows of a MemNet session's running statistics (models.memnet.STATS_ROWS; no torch here)

STATE_INTS = ("step", "count", "pos")


def _shape(arrays: Mapping[str, np.ndarray], name: str, want: tuple[int | None, ...]) -> np.ndarray:
    """arrays[name], float32 and finite, of shape `want` (None: any length on that axis)."""
    a = arrays.get(name)
    if a is None:
        raise InvalidBackup(f"the MemNet state has no {name!r} buffer")
    ok = a.ndim == len(want) and all(w is None or w == s for w, s in zip(want, a.shape, strict=True))
    if not ok or a.dtype != np.dtype("<f4"):
        shape = ", ".join("*" if w is None else str(w) for w in want)
        raise InvalidBackup(f"the MemNet state's {name!r} is {a.dtype} {list(a.shape)}, not f4 [{shape}]")
    if not np.isfinite(a).all():
        raise InvalidBackup(f"the MemNet state's {name!r} holds NaN or infinity")
    return a


def _check(doc: SessionDoc, info: ModelInfo, max_capacity: int) -> None:
    # max_capacity is for kinds whose sessions choose their capacity: a MemNet model fixes it.
    h, cfg = doc.header, info.config
    if "capacity" in cfg and h.capacity != int(cfg["capacity"]):
        raise InvalidBackup(f"capacity {h.capacity} differs from the model's {cfg['capacity']}")
    fields = doc.sections.get("state")
    if fields is None:  # a session that has seen no point yet
        return
    try:
        arrays = decode_fields(fields)
    except (ValueError, KeyError, TypeError, AttributeError) as e:  # CodecError is a ValueError
        raise InvalidBackup(f"the MemNet state's buffers do not match their layout: {e}") from e
    cap = h.capacity

    def dim(name: str) -> int | None:
        return int(cfg[name]) if name in cfg else None

    _shape(arrays, "h", (dim("hidden_dim"),))
    _shape(arrays, "keys", (cap, dim("key_dim")))
    _shape(arrays, "values", (cap, dim("value_dim")))
    for name, want in (("y", (h.input_dim,)), ("last_pred", (None, h.input_dim))):
        if name in arrays or b"last_seq" in fields:  # a retry of the last chunk reads both
            _shape(arrays, name, want)
    if "stats" in arrays:  # the running statistics of a per-session scaled model
        _shape(arrays, "stats", (STATS_ROWS, h.input_dim))
    if "y_std" in arrays:  # a model with a predictive scale: the last chunk's stds and deviations
        _shape(arrays, "y_std", (h.input_dim,))
        _shape(arrays, "last_std", (None, h.input_dim))
        last_dev = arrays.get("last_dev")  # NaN where no prediction was made: not checked for finiteness
        if last_dev is None or last_dev.shape != arrays["last_std"].shape:
            raise InvalidBackup("the MemNet state's 'last_dev' is missing or misshapen")
    step, count, pos = (int_field(fields, n, "the MemNet state") for n in STATE_INTS)
    if not (count <= min(step, cap) and pos < cap):
        raise InvalidBackup(f"the MemNet state's step {step}, count {count}, pos {pos} misfit capacity {cap}")


rules = BackupRules(sections=("state",), check=_check)
