"""What a VMA session's backup holds (its exemplar memory, the ``ex`` hash) and when it fits the
model it is restored into: a capacity this server allows, columns that agree with each other and
embeddings of the model's size."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import orjson

from app.catalog import ModelInfo
from app.errors import InvalidBackup, InvalidRequest
from app.registry import BackupRules
from app.store.backup import Fields, Header, SessionDoc
from app.store.backup_check import int_field
from app.store.exemplars import PIX_BYTES

EXEMPLAR_FIELDS = ("ids", "labels", "pix", "h", "n", "next_id", "dim")


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
    n, next_id, dim = (int_field(fields, name, "the exemplar memory") for name in ("n", "next_id", "dim"))
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


def _check(doc: SessionDoc, info: ModelInfo, max_capacity: int) -> None:
    h = doc.header
    if not 1 <= h.capacity <= max_capacity:
        raise InvalidRequest(
            f"the document's capacity {h.capacity} is not within 1 to this server's {max_capacity}",
            max_capacity=max_capacity,
        )  # fmt: skip
    if "ex" in doc.sections:
        _check_exemplars(doc.sections["ex"], h, info.config)


rules = BackupRules(sections=("ex",), check=_check)
