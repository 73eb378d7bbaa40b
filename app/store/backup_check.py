"""Whether a decoded session document may be restored next to the models loaded here.

A document is refused unless its model is loaded, of the document's kind and at the same
version (state written by another version of a model is meaningless to it; any version in the
checkpoint directory will do, as versions are served side by side), and unless
its stored buffers have exactly the shapes the model reads. The last check matters because
workers stack many sessions into one batch: one session with a wrong-sized buffer would
fail the whole batch, not just its own requests. No torch here: the API imports this.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import orjson

from app.catalog import Catalog, ModelInfo
from app.errors import BackupKindMismatch, InvalidBackup, InvalidRequest, ModelNotFound, ModelVersionMismatch
from app.store.backup import Fields, Header, SessionDoc
from app.store.codec import decode_fields
from app.store.exemplars import PIX_BYTES

STATS_ROWS = 6  # rows of a MemNet session's running statistics (models.memnet.STATS_ROWS; no torch here)

STATE_INTS = ("step", "count", "pos")
EXEMPLAR_FIELDS = ("ids", "labels", "pix", "h", "n", "next_id", "dim")


def check_importable(doc: SessionDoc, catalog: Catalog, max_ttl_s: int, max_vma_capacity: int) -> ModelInfo:
    """The loaded model `doc` restores into; a 4xx MemserveError saying why it cannot be restored."""
    h = doc.header
    versions = catalog.versions(h.model)
    if not versions:
        known = ", ".join(sorted(m.name for m in catalog.values() if m.kind == h.kind)) or "none"
        raise ModelNotFound(
            f"the document's model {h.model!r} is not loaded here; {h.kind} models: {known}", model=h.model
        )
    info = next((m for m in versions if m.version == h.model_version), None)
    kind = (info or versions[-1]).kind
    if kind != h.kind:
        raise BackupKindMismatch(
            f"the document is a {h.kind} session but model {h.model!r} is a {kind} model here",
            kind=h.kind, model_kind=kind,
        )  # fmt: skip
    if info is None:
        loaded = ", ".join(f"version {m.version!r}" for m in versions)
        raise ModelVersionMismatch(
            f"the document was written by {h.model} version {h.model_version!r} but {h.model} is loaded "
            f"here at {loaded} only; a session's state is meaningless to another version of its model",
            model=h.model, document_version=h.model_version, loaded_version=versions[-1].version,
            loaded_versions=[m.version for m in versions],
        )  # fmt: skip
    if h.ttl_s > max_ttl_s:
        raise InvalidRequest(
            f"the document's ttl_s {h.ttl_s} is over this server's {max_ttl_s}; import with ?ttl_s=",
            max_ttl_s=max_ttl_s,
        )  # fmt: skip
    if h.input_dim != info.input_dim:
        raise InvalidBackup(f"input_dim {h.input_dim} differs from the model's {info.input_dim}")
    if h.kind == "memnet":
        _check_memnet(doc, info)
    else:
        if not 1 <= h.capacity <= max_vma_capacity:
            raise InvalidRequest(
                f"the document's capacity {h.capacity} is not within 1 to this server's {max_vma_capacity}",
                max_capacity=max_vma_capacity,
            )  # fmt: skip
        if "ex" in doc.sections:
            _check_exemplars(doc.sections["ex"], h, info.config)
    return info


# ----------------------------------------------------------------------------- MemNet


def _int_field(fields: Fields, name: str, where: str) -> int:
    raw = fields.get(name.encode())
    if raw is None or not raw.isdigit():
        raise InvalidBackup(f"{where}: field {name!r} is missing or not a non-negative integer")
    return int(raw)


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


def _check_memnet(doc: SessionDoc, info: ModelInfo) -> None:
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
    step, count, pos = (_int_field(fields, n, "the MemNet state") for n in STATE_INTS)
    if not (count <= min(step, cap) and pos < cap):
        raise InvalidBackup(f"the MemNet state's step {step}, count {count}, pos {pos} misfit capacity {cap}")


# ----------------------------------------------------------------------------- VMA


def _json_list(fields: Fields, name: str) -> list[Any]:
    try:
        value = orjson.loads(fields[name.encode()])
    except orjson.JSONDecodeError as e:
        raise InvalidBackup(f"the exemplar memory's {name!r} is not JSON") from e
    if not isinstance(value, list):
        raise InvalidBackup(f"the exemplar memory's {name!r} is not a JSON array")
    return value


def _check_exemplars(fields: Fields, h: Header, cfg: Mapping[str, Any]) -> None:
    missing = [n for n in EXEMPLAR_FIELDS if n.encode() not in fields]
    if missing:
        raise InvalidBackup(f"the exemplar memory lacks {', '.join(missing)}")
    ids, labels = _json_list(fields, "ids"), _json_list(fields, "labels")
    n, next_id, dim = (_int_field(fields, name, "the exemplar memory") for name in ("n", "next_id", "dim"))
    if not all(type(i) is int and 0 <= i < next_id for i in ids) or len(set(ids)) != len(ids):
        raise InvalidBackup(f"exemplar ids must be distinct integers from 0 to next_id - 1 ({next_id - 1})")
    if not all(isinstance(lab, str) and lab for lab in labels):
        raise InvalidBackup("exemplar labels must be non-empty strings")
    if dim < 1 or ("match_dim" in cfg and dim != int(cfg["match_dim"])):
        raise InvalidBackup(f"embedding size {dim} differs from the model's match_dim {cfg.get('match_dim')}")
    pix, emb = fields[b"pix"], fields[b"h"]
    if not (len(ids) == len(labels) == n and len(pix) == n * PIX_BYTES and len(emb) == n * 4 * dim):
        raise InvalidBackup(
            f"exemplar columns disagree: n {n}, {len(ids)} ids, {len(labels)} labels, "
            f"{len(pix)} pixel bytes ({PIX_BYTES} each), {len(emb)} embedding bytes ({4 * dim} each)"
        )
    if n > h.capacity:
        raise InvalidBackup(f"{n} exemplars exceed the session's capacity {h.capacity}")
    if not np.isfinite(np.frombuffer(emb, dtype="<f4")).all():
        raise InvalidBackup("the exemplar embeddings hold NaN or infinity")
