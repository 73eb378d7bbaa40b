"""Whether a decoded session document may be restored next to the models loaded here.

A document is refused unless its model is loaded, of the document's kind and at the same
version (state written by another version of a model is meaningless to it; any version in the
checkpoint directory will do, as versions are served side by side), and unless
its stored buffers have exactly the shapes the model reads. The last check matters because
workers stack many sessions into one batch: one session with a wrong-sized buffer would
fail the whole batch, not just its own requests. What fits a model is the kind's to say: its
``backup.rules`` (`registry.BackupRules`), found through the registry. No torch here: the API
imports this.
"""

from __future__ import annotations

from app.catalog import Catalog, ModelInfo
from app.errors import BackupKindMismatch, InvalidBackup, InvalidRequest, ModelNotFound, ModelVersionMismatch
from app.store.backup import Fields, SessionDoc, backup_rules


def check_importable(doc: SessionDoc, catalog: Catalog, max_ttl_s: int, max_capacity: int) -> ModelInfo:
    """The loaded model `doc` restores into; a 4xx MemserveError saying why it cannot be restored.

    ``max_capacity`` is the largest capacity a session may ask for (``MEMSERVE_MAX_VMA_CAPACITY``),
    for the kinds whose sessions choose theirs."""
    h = doc.header
    rules = backup_rules(h.kind)
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
    rules.check(doc, info, max_capacity)
    return info


def int_field(fields: Fields, name: str, where: str) -> int:
    """``fields[name]`` as a non-negative integer; InvalidBackup naming `where` if it is not one
    (for the kinds' checks: a section's counters are stored as decimal text)."""
    raw = fields.get(name.encode())
    if raw is None or not raw.isdigit():
        raise InvalidBackup(f"{where}: field {name!r} is missing or not a non-negative integer")
    return int(raw)
