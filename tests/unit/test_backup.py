"""The session document format (app.store.backup) and the import checks (app.store.backup_check).

The format tests build documents with a separate, plain-struct writer that follows the
module docstring, so the documented layout itself is under test, not just encode/decode
agreeing with each other.
"""

from __future__ import annotations

import asyncio
import importlib
import struct
import textwrap
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
import redis
import redis.asyncio as aioredis

from app import registry
from app.catalog import Catalog, ModelInfo
from app.errors import (
    BackupKindMismatch,
    InvalidBackup,
    InvalidRequest,
    MemserveError,
    ModelNotFound,
    ModelVersionMismatch,
    SessionNotFound,
    UnsupportedBackupVersion,
    WrongSessionKind,
)
from app.store.backup import MAGIC, BackupStore, Header, SessionDoc, decode, encode
from app.store.backup_check import check_importable
from app.store.codec import encode_fields
from app.store.exemplars import PIX_BYTES
from app.store.keys import Keys, new_session_id

HEADER = Header("memnet", "mn", "3", "2025-01-02T03:04:05.678+00:00", 600, 7, 2, 4)
MEMNET_CFG = {"input_dim": 2, "hidden_dim": 5, "key_dim": 3, "value_dim": 3, "capacity": 4}
VMA_CFG = {"match_dim": 6}


# --- an independent writer of the documented layout ----------------------------------------


def s16(text: str | bytes) -> bytes:
    raw = text.encode() if isinstance(text, str) else text
    return struct.pack("<H", len(raw)) + raw


def body(
    h: Header = HEADER,
    sections: list[tuple[str, list[tuple[bytes, bytes]]]] | None = None,
    version: int = 1,
    flags: int = 0,
    magic: bytes = MAGIC,
) -> bytes:
    """Everything before the checksum, written field by field as the module docstring says."""
    out = magic + struct.pack("<HH", version, flags)
    out += s16(h.kind) + s16(h.model) + s16(h.model_version) + s16(h.created)
    out += struct.pack("<IQII", h.ttl_s, h.version, h.input_dim, h.capacity)
    sections = sections or []
    out += struct.pack("<H", len(sections))
    for name, fields in sections:
        out += s16(name) + struct.pack("<I", len(fields))
        for k, v in fields:
            out += s16(k) + struct.pack("<I", len(v)) + v
    return out


def seal(data: bytes) -> bytes:
    return data + struct.pack("<I", zlib.crc32(data))


def memnet_state(step: int = 6, cap: int = 4, hidden: int = 5, dim: int = 2) -> dict[bytes, bytes]:
    rng = np.random.default_rng(0)
    arrays = {
        "h": rng.standard_normal(hidden).astype(np.float32),
        "keys": rng.standard_normal((cap, 3)).astype(np.float32),
        "values": rng.standard_normal((cap, 3)).astype(np.float32),
        "last_pred": rng.standard_normal((2, dim)).astype(np.float32),
        "y": rng.standard_normal(dim).astype(np.float32),
    }
    fields = {k.encode(): v for k, v in encode_fields(arrays).items()}
    scalars = {"step": step, "count": min(step, cap), "pos": step % cap, "last_seq": step - 2}
    fields.update({k.encode(): str(v).encode() for k, v in scalars.items()})
    fields[b"last_digest"] = b"0123abcd"
    return fields


def vma_memory(n: int = 3, dim: int = 6) -> dict[bytes, bytes]:
    ids = list(range(1, n + 1))
    return {
        b"ids": orjson.dumps(ids), b"labels": orjson.dumps([f"c{i % 2}" for i in ids]),
        b"pix": b"\x0f" * (n * PIX_BYTES),
        b"h": np.arange(n * dim, dtype="<f4").tobytes(), b"n": str(n).encode(),
        b"next_id": str(n + 1).encode(), b"dim": str(dim).encode(),
    }  # fmt: skip


MEMNET_DOC = SessionDoc(HEADER, {"state": memnet_state()})
VMA_DOC = SessionDoc(Header("vma", "vm", "1", "", 60, 2, 1, 10), {"ex": vma_memory()})


# --- round trips ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "doc",
    [
        MEMNET_DOC,
        VMA_DOC,
        SessionDoc(HEADER),  # a MemNet session that has seen no point
        SessionDoc(HEADER, {"meta": {b"future": b"field"}, "state": {b"step": b"0", b"x": b""}}),
        SessionDoc(
            Header("vma", "m\u00e9", "v1", "", 2**32 - 1, 2**64 - 1, 1, 2**32 - 1), {"ex": {b"n": b""}}
        ),
    ],
    ids=["memnet", "vma", "no-state", "meta-extra-and-empty-value", "limits-and-utf8"],
)
def test_documents_round_trip(doc: SessionDoc) -> None:
    data = encode(doc)
    assert decode(data) == doc
    assert encode(decode(data)) == data


def test_the_encoding_is_the_documented_layout_canonically_ordered() -> None:
    state = memnet_state()
    doc = SessionDoc(HEADER, {"state": dict(reversed(state.items())), "meta": {b"z": b"1", b"a": b"2"}})
    want = body(sections=[("meta", [(b"a", b"2"), (b"z", b"1")]), ("state", sorted(state.items()))])
    assert encode(doc) == seal(want)
    assert encode(doc)[:12] == b"\x89MSSESS\n\x01\x00\x00\x00"


def test_decode_reads_sections_in_any_order() -> None:
    data = seal(body(sections=[("state", [(b"b", b"1"), (b"a", b"2")]), ("meta", [(b"x", b"")])]))
    doc = decode(data)
    assert doc.sections == {"state": {b"a": b"2", b"b": b"1"}, "meta": {b"x": b""}}


# --- malformed documents ----------------------------------------------------------------------


def test_every_truncation_is_refused_as_truncated() -> None:
    data = encode(MEMNET_DOC)
    for n in range(len(data)):
        with pytest.raises(InvalidBackup, match="truncated"):
            decode(data[:n])


@pytest.mark.parametrize(
    "data",
    [b"PK\x03\x04 a zip file", b'{"kind": "memnet"}', b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, b"\x89MSX"],
    ids=["zip", "json", "png", "near-miss"],
)
def test_a_wrong_magic_is_refused(data: bytes) -> None:
    with pytest.raises(InvalidBackup, match="not a memserve session document"):
        decode(data)


def test_an_empty_body_is_refused_as_truncated() -> None:
    with pytest.raises(InvalidBackup, match="truncated"):
        decode(b"")


def test_trailing_bytes_are_refused() -> None:
    data = encode(MEMNET_DOC)
    for extra in (b"\x00", b"more", encode(MEMNET_DOC)):
        with pytest.raises(InvalidBackup, match="trailing bytes"):
            decode(data + extra)


@pytest.mark.parametrize(("version", "flags"), [(2, 0), (0, 0), (65535, 0), (1, 1)])
def test_an_unknown_format_version_or_flag_is_unsupported(version: int, flags: int) -> None:
    with pytest.raises(UnsupportedBackupVersion, match="format version") as e:
        decode(seal(body(version=version, flags=flags)))
    assert e.value.extra["supported"] == [1]


def test_any_altered_byte_fails_the_checksum_or_the_parse() -> None:
    data = bytearray(encode(MEMNET_DOC))
    for at in range(len(MAGIC), len(data)):
        bad = bytearray(data)
        bad[at] ^= 0x40
        with pytest.raises((InvalidBackup, UnsupportedBackupVersion)):
            decode(bytes(bad))


def test_a_damaged_value_is_reported_as_a_checksum_mismatch() -> None:
    data = bytearray(encode(MEMNET_DOC))
    data[-10] ^= 1  # inside the last field's value: the structure still parses
    with pytest.raises(InvalidBackup, match="checksum"):
        decode(bytes(data))


def _header(**change: Any) -> Header:
    return Header(**{**HEADER.__dict__, **change})


BAD_BODIES: dict[str, tuple[bytes, str]] = {
    "unknown kind": (body(_header(kind="lstm")), "unknown session kind"),
    "no model": (body(_header(model="")), "names no model"),
    "ttl 0": (body(_header(ttl_s=0)), "ttl_s"),
    "input_dim 0": (body(_header(input_dim=0)), "input_dim"),
    "vma section in memnet": (body(sections=[("ex", [(b"n", b"0")])]), "has no section 'ex'"),
    "unknown section": (body(sections=[("reply", [(b"a", b"b")])]), "has no section 'reply'"),
    "section twice": (body(sections=[("state", [(b"a", b"")]), ("state", [(b"b", b"")])]), "twice"),
    "empty section": (body(sections=[("state", [])]), "no fields"),
    "field twice": (body(sections=[("state", [(b"a", b"1"), (b"a", b"2")])]), "repeated field"),
    "empty field name": (body(sections=[("state", [(b"", b"1")])]), "empty or repeated"),
    "meta sets a header field": (body(sections=[("meta", [(b"kind", b"vma")])]), "may not set kind"),
    "meta sets the owner": (body(sections=[("meta", [(b"owner", b"eve")])]), "may not set owner"),
    "too many sections": (body()[:-2] + struct.pack("<H", 17), "sections"),
    "bad utf-8": (body().replace(s16("mn"), s16(b"\xff\xfe")), "not UTF-8"),
}


@pytest.mark.parametrize("case", list(BAD_BODIES), ids=list(BAD_BODIES))
def test_malformed_documents_are_refused_with_a_clear_message(case: str) -> None:
    data, message = BAD_BODIES[case]
    with pytest.raises(InvalidBackup, match=message):
        decode(seal(data))


def test_format_errors_are_client_errors_with_stable_types() -> None:
    assert InvalidBackup.status == 422 and UnsupportedBackupVersion.status == 422
    assert BackupKindMismatch.status == 409 and ModelVersionMismatch.status == 409
    assert InvalidBackup.type_uri().endswith("/invalid-backup")


# --- checks against the loaded models --------------------------------------------------------

CATALOG = Catalog(
    [
        ModelInfo("mn", "memnet", "3", 2, {"config": MEMNET_CFG}),
        ModelInfo("vm", "vma", "1", 1, {"config": VMA_CFG}),
    ]
)


def check(doc: SessionDoc, max_ttl_s: int = 3600, max_vma_capacity: int = 100) -> ModelInfo:
    return check_importable(doc, CATALOG, max_ttl_s, max_vma_capacity)


def test_good_documents_pass_and_name_their_model() -> None:
    assert check(MEMNET_DOC).name == "mn"
    assert check(VMA_DOC).name == "vm"
    assert check(SessionDoc(HEADER)).name == "mn"
    empty = {**vma_memory(0), b"next_id": b"4"}  # every exemplar deleted
    assert check(SessionDoc(VMA_DOC.header, {"ex": empty})).name == "vm"


def _with(doc: SessionDoc, section: str, **fields: bytes) -> SessionDoc:
    changed = {**doc.sections[section], **{k.encode(): v for k, v in fields.items()}}
    return SessionDoc(doc.header, {**doc.sections, section: changed})


def _state_array(name: str, a: np.ndarray) -> SessionDoc:
    enc = encode_fields({name: a})
    layout = orjson.loads(MEMNET_DOC.sections["state"][b"layout"])
    layout[name] = orjson.loads(enc["layout"])[name]
    return _with(MEMNET_DOC, "state", **{name: enc[name], "layout": orjson.dumps(layout)})


def _layout_naming_a_missing_field() -> SessionDoc:
    layout = orjson.loads(MEMNET_DOC.sections["state"][b"layout"])
    layout["extra"] = ["f4", [1]]
    return _with(MEMNET_DOC, "state", layout=orjson.dumps(layout))


REFUSALS: dict[str, tuple[Callable[[], SessionDoc], type[MemserveError], str]] = {
    "model not loaded": (lambda: SessionDoc(_header(model="gone")), ModelNotFound, "not loaded"),
    "kind mismatch": (
        lambda: SessionDoc(Header("vma", "mn", "3", "", 60, 0, 2, 4)),
        BackupKindMismatch,
        "memnet model",
    ),
    "model version": (lambda: SessionDoc(_header(model_version="2")), ModelVersionMismatch, "version '3'"),
    "ttl over the max": (lambda: SessionDoc(_header(ttl_s=3601)), InvalidRequest, "ttl_s"),
    "input_dim": (lambda: SessionDoc(_header(input_dim=3)), InvalidBackup, "input_dim"),
    "memnet capacity": (lambda: SessionDoc(_header(capacity=5)), InvalidBackup, "capacity 5"),
    "h size": (lambda: _state_array("h", np.zeros(6, np.float32)), InvalidBackup, "'h' is float32 \\[6\\]"),
    "keys rows": (lambda: _state_array("keys", np.zeros((5, 3), np.float32)), InvalidBackup, "'keys'"),
    "values dtype": (lambda: _state_array("values", np.zeros((4, 3), np.uint8)), InvalidBackup, "'values'"),
    "y dim": (lambda: _state_array("y", np.zeros(3, np.float32)), InvalidBackup, "'y'"),
    "NaN state": (lambda: _state_array("h", np.full(5, np.nan, np.float32)), InvalidBackup, "NaN"),
    "short buffer": (lambda: _with(MEMNET_DOC, "state", h=b"\x00" * 4), InvalidBackup, "layout"),
    "bad layout": (lambda: _with(MEMNET_DOC, "state", layout=b"[1"), InvalidBackup, "layout"),
    "layout names a missing field": (_layout_naming_a_missing_field, InvalidBackup, "layout"),
    "no h buffer": (
        lambda: SessionDoc(HEADER, {"state": {b"step": b"1", b"layout": b"{}"}}),
        InvalidBackup,
        "no 'h'",
    ),
    "pos past the ring": (lambda: _with(MEMNET_DOC, "state", pos=b"4"), InvalidBackup, "misfit"),
    "count over step": (lambda: _with(MEMNET_DOC, "state", step=b"1"), InvalidBackup, "misfit"),
    "step not an int": (lambda: _with(MEMNET_DOC, "state", step=b"-1"), InvalidBackup, "'step'"),
    "vma capacity over the max": (
        lambda: SessionDoc(Header("vma", "vm", "1", "", 60, 0, 1, 101)),
        InvalidRequest,
        "capacity 101",
    ),
    "exemplar field missing": (
        lambda: SessionDoc(VMA_DOC.header, {"ex": {b"n": b"0"}}),
        InvalidBackup,
        "lacks ids",
    ),
    "ids not JSON": (lambda: _with(VMA_DOC, "ex", ids=b"[1,"), InvalidBackup, "not JSON"),
    "ids not an array": (lambda: _with(VMA_DOC, "ex", ids=b"{}"), InvalidBackup, "not a JSON array"),
    "ids not ints": (lambda: _with(VMA_DOC, "ex", ids=b"[1, 2.5, 3]"), InvalidBackup, "ids"),
    "ids repeated": (lambda: _with(VMA_DOC, "ex", ids=b"[1, 1, 3]"), InvalidBackup, "ids"),
    "id past next_id": (lambda: _with(VMA_DOC, "ex", next_id=b"3"), InvalidBackup, "ids"),
    "empty label": (lambda: _with(VMA_DOC, "ex", labels=b'["a", "", "b"]'), InvalidBackup, "labels"),
    "columns disagree": (lambda: _with(VMA_DOC, "ex", n=b"2"), InvalidBackup, "disagree"),
    "short pixels": (lambda: _with(VMA_DOC, "ex", pix=b"\x00" * 10), InvalidBackup, "disagree"),
    "embedding size": (
        lambda: _with(VMA_DOC, "ex", dim=b"2", h=np.zeros(6, "<f4").tobytes()),
        InvalidBackup,
        "match_dim",
    ),
    "over capacity": (
        lambda: SessionDoc(Header("vma", "vm", "1", "", 60, 0, 1, 2), VMA_DOC.sections),
        InvalidBackup,
        "capacity 2",
    ),
    "NaN embedding": (
        lambda: _with(VMA_DOC, "ex", h=np.full(18, np.inf, "<f4").tobytes()),
        InvalidBackup,
        "NaN",
    ),
}


@pytest.mark.parametrize("case", list(REFUSALS), ids=list(REFUSALS))
def test_documents_that_do_not_fit_the_loaded_models_are_refused(case: str) -> None:
    make, error, message = REFUSALS[case]
    doc = make()
    assert decode(encode(doc)) == doc  # well-formed: refused for what it says, not how
    with pytest.raises(error, match=message) as e:
        check(doc)
    assert type(e.value) is error and 400 <= e.value.status < 500


# --- what each kind declares ---------------------------------------------------------------------


def test_the_built_in_kinds_declare_their_sections_through_the_registry() -> None:
    declared = {k.name: rules.sections for k in registry.kinds() if (rules := k.backup()) is not None}
    assert declared == {"memnet": ("state",), "vma": ("ex",)}


def _kind_package(root: Path, name: str, backup: str | None) -> str:
    """A kind's folder under `root` (importable once `root` is on sys.path), with `backup` as its
    backup.py if given; its package name."""
    (root / name).mkdir()
    (root / name / "__init__.py").write_text("")
    if backup is not None:
        (root / name / "backup.py").write_text(textwrap.dedent(backup))
    return name


@pytest.fixture
def kinds_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A folder for the test's own kinds; they leave the registry afterwards."""
    monkeypatch.syspath_prepend(str(tmp_path))
    before = set(registry.names())
    yield tmp_path
    for name in set(registry.names()) - before:
        registry.unregister(name)


TALLY_BACKUP = """
    from app.errors import InvalidBackup
    from app.registry import BackupRules
    from app.store.backup_check import int_field

    CHECKED = []

    def _check(doc, info, max_capacity):
        CHECKED.append((doc.header.model, info.name, max_capacity))
        state = doc.sections.get("state")
        if state is not None and int_field(state, "n", "the tally") > doc.header.capacity:
            raise InvalidBackup("the tally is over capacity")

    rules = BackupRules(sections=("state",), check=_check)
"""


def test_a_third_kind_is_backed_up_by_what_its_folder_declares(kinds_dir: Path) -> None:
    package = _kind_package(kinds_dir, "memserve_test_tally", TALLY_BACKUP)
    registry.register(registry.Kind("tally", package, exported=False))
    doc = SessionDoc(Header("tally", "t", "1", "", 60, 1, 1, 5), {"state": {b"n": b"3"}})
    data = encode(doc)
    assert data == seal(body(doc.header, [("state", [(b"n", b"3")])]))
    assert decode(data) == doc
    with pytest.raises(InvalidBackup, match="a tally session has no section 'ex'; it has meta, state"):
        decode(seal(body(doc.header, [("ex", [(b"n", b"0")])])))
    catalog = Catalog([ModelInfo("t", "tally", "1", 1, {"config": {}})])
    assert check_importable(doc, catalog, 3600, 7).name == "t"
    assert importlib.import_module(f"{package}.backup").CHECKED == [("t", "t", 7)]
    over = SessionDoc(doc.header, {"state": {b"n": b"6"}})
    with pytest.raises(InvalidBackup, match="over capacity"):
        check_importable(over, catalog, 3600, 7)


def test_a_kind_that_declares_no_backup_is_refused_clearly(kinds_dir: Path) -> None:
    registry.register(registry.Kind("plain", _kind_package(kinds_dir, "memserve_test_plain", None)))
    doc = SessionDoc(Header("plain", "p", "1", "", 60, 1, 1, 5), {"state": {b"n": b"3"}})
    refusal = "a plain session cannot be exported or imported: its kind declares no backup"
    with pytest.raises(WrongSessionKind, match=refusal) as e:
        encode(doc)  # what exporting one of its sessions does
    assert e.value.status == 409 and e.value.extra == {"kind": "plain"}
    with pytest.raises(WrongSessionKind, match=refusal):
        decode(seal(body(doc.header, [("state", [(b"n", b"3")])])))
    catalog = Catalog([ModelInfo("p", "plain", "1", 1, {"config": {}})])
    with pytest.raises(WrongSessionKind, match=refusal):
        check_importable(doc, catalog, 3600, 10)
    with pytest.raises(WrongSessionKind, match="its kind is not served here"):
        encode(SessionDoc(Header("lstm", "l", "1", "", 60, 1, 1, 5)))


def test_a_backup_module_that_fails_to_import_is_not_taken_for_none(kinds_dir: Path) -> None:
    package = _kind_package(kinds_dir, "memserve_test_broken", "import memserve_no_such_module\n")
    with pytest.raises(ModuleNotFoundError, match="memserve_no_such_module"):
        registry.Kind("broken", package).backup()


# --- the store, on a real Redis ---------------------------------------------------------------


def test_restore_writes_every_key_with_the_ttl_and_the_owner_and_snapshots_back(
    redis_url: str, key_prefix: str
) -> None:
    keys = Keys(key_prefix)
    sync = redis.Redis.from_url(redis_url)

    async def go() -> tuple[str, SessionDoc, SessionDoc]:
        r = aioredis.Redis.from_url(redis_url)
        store = BackupStore(r, keys)
        doc = SessionDoc(_header(ttl_s=120), {"meta": {b"later": b"x"}, "state": memnet_state()})
        sid = await store.restore(doc, owner="tenant-a")
        back = await store.snapshot(sid, "tenant-a")
        with pytest.raises(SessionNotFound):
            await store.snapshot(new_session_id(), "tenant-a")
        with pytest.raises(SessionNotFound):
            await store.export("not-a-session-id", "tenant-a")
        with pytest.raises(SessionNotFound):  # another tenant's session does not exist for them
            await store.export(sid, "tenant-b")
        await r.aclose()
        return sid, doc, back

    sid, doc, back = asyncio.run(go())
    assert back == doc  # the owner is not exported
    assert sync.hget(keys.meta(sid), "owner") == b"tenant-a"
    assert sync.hget(keys.meta(sid), "later") == b"x"
    assert not sync.exists(keys.exemplars(sid))
    for key in (keys.meta(sid), keys.state(sid)):
        assert 110 < sync.ttl(key) <= 120
    sync.close()
