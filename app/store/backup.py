"""Session backup: a whole session as one versioned binary document (export, import, fork).

A document holds everything ``Keys.session_keys`` lists for one session (meta, MemNet
state, VMA exemplar memory) as the raw bytes stored in Redis, and nothing that ties it
to where it came from: no session id, no owner, no remaining TTL, no transient replies.
Media type ``application/vnd.memserve.session``. Format version 1, every integer
unsigned little-endian, never pickle::

    offset  size  field
    0       8     magic 89 4D 53 53 45 53 53 0A  ("\\x89MSSESS\\n": the high byte and the
                  newline expose 7-bit and newline-mangling transports, as PNG's magic does)
    8       2     format version (u16): 1
    10      2     flags (u16): 0; anything else is a format this reader does not know
    12            header:
                    kind           str  a kind of app.registry with backup rules: "memnet", "vma"
                    model          str  checkpoint name
                    model_version  str  version of the checkpoint that wrote the state
                    created        str  when the session was first created (ISO 8601)
                    ttl_s          u32  idle seconds before the session expires
                    version        u64  the session's version counter (meta ``version``)
                    input_dim      u32
                    capacity       u32
                    sections       u16  number of sections that follow
                  each section:
                    name           str  the key it restores: "meta", "state" or "ex"
                    fields         u32  number of fields, then each field:
                      name         u16 length + bytes
                      value        u32 length + bytes, exactly as stored in the Redis hash
    end - 4 4     CRC-32 (zlib) of every byte before it
                  nothing after

    str: u16 byte length + UTF-8 bytes

Sections appear in the order of ``Keys.session_keys``, absent keys are left out, and the
fields of a section are sorted by name, so a session always exports to the same bytes:
export -> import -> export is byte-identical. The ``meta`` section holds only the meta
fields the header does not (none today; a field added later travels without a format
change); the owner is never exported, import and fork set it from the caller. Which other
sections a session carries its kind declares (``backup.rules`` in its folder, a
`registry.BackupRules`): a MemNet session at most ``state``, a VMA session ``ex``. A kind that
declares none cannot be exported or imported (WrongSessionKind); forks copy every key and need
no declaration.

Reads take every key of the session in one MULTI (they share a hash tag, so this holds
on Redis Cluster too), so a document is a consistent snapshot even while workers commit;
exporting slides the TTL like any read. Import writes every key in one MULTI with the
TTL set on each, under a new 128-bit random id. ``app.store.backup_check`` decides
whether a decoded document may be restored next to the loaded models.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import redis.asyncio as aioredis

from app import registry
from app.errors import InvalidBackup, SessionNotFound, UnsupportedBackupVersion, WrongSessionKind
from app.registry import BackupRules
from app.store import scripts
from app.store.keys import SESSION_ID_RE, Keys, new_session_id

MEDIA_TYPE = "application/vnd.memserve.session"
MAGIC = b"\x89MSSESS\n"
FORMAT_VERSION = 1
MAX_SECTIONS = 16

# Meta hash fields the header carries; "owner" belongs to whoever restores the document.
HEADER_FIELDS = ("kind", "model", "model_version", "created", "ttl", "version", "input_dim", "capacity")
NOT_EXPORTED = frozenset({"owner"})
_IN_HEADER_OR_CALLER = frozenset(HEADER_FIELDS) | NOT_EXPORTED

_U16, _U32, _U64 = struct.Struct("<H"), struct.Struct("<I"), struct.Struct("<Q")

Fields = dict[bytes, bytes]


@dataclass(frozen=True)
class Header:
    """The facts of a session that decide where its document may be restored."""

    kind: str
    model: str
    model_version: str
    created: str
    ttl_s: int
    version: int
    input_dim: int
    capacity: int

    def meta_fields(self) -> Fields:
        """The meta hash fields this header stands for, as Redis stores them."""
        text = {
            "kind": self.kind, "model": self.model, "model_version": self.model_version,
            "created": self.created, "ttl": str(self.ttl_s), "version": str(self.version),
            "input_dim": str(self.input_dim), "capacity": str(self.capacity),
        }  # fmt: skip
        return {k.encode(): v.encode() for k, v in text.items()}

    @classmethod
    def from_meta(cls, meta: Mapping[str, str]) -> Header:
        """From a stored meta hash; defaults as ``SessionMeta.from_hash`` has them."""
        return cls(
            kind=meta["kind"], model=meta["model"], model_version=meta.get("model_version", "1"),
            created=meta.get("created", ""), ttl_s=int(meta.get("ttl", "0")),
            version=int(meta.get("version", "0")), input_dim=int(meta.get("input_dim", "1")),
            capacity=int(meta.get("capacity", "0")),
        )  # fmt: skip


@dataclass(frozen=True)
class SessionDoc:
    """A decoded document: the header and each key's raw hash fields, by section name."""

    header: Header
    sections: dict[str, Fields] = field(default_factory=dict)

    def with_ttl(self, ttl_s: int) -> SessionDoc:
        """The same document restoring with another idle expiry."""
        return replace(self, header=replace(self.header, ttl_s=ttl_s))


def backup_rules(kind: str) -> BackupRules:
    """The backup rules kind `kind` declares; WrongSessionKind (409) if it declares none or is not
    served here: its sessions cannot be exported or imported."""
    served = registry.get(kind)
    rules = served.backup() if served is not None else None
    if rules is None:
        why = "its kind declares no backup" if served is not None else "its kind is not served here"
        raise WrongSessionKind(f"a {kind} session cannot be exported or imported: {why}", kind=kind)
    return rules


def sections_of(kind: str) -> tuple[str, ...]:
    """The sections a document of kind `kind` may hold, in the order it writes them."""
    return ("meta", *backup_rules(kind).sections)


# ----------------------------------------------------------------------------- encode


def _str(text: str) -> bytes:
    raw = text.encode()
    return _U16.pack(len(raw)) + raw


def encode(doc: SessionDoc) -> bytes:
    """The document's bytes (canonical: the same session always gives the same bytes);
    WrongSessionKind if the session's kind declares no backup."""
    h = doc.header
    out = [MAGIC, _U16.pack(FORMAT_VERSION), _U16.pack(0)]
    out += [_str(h.kind), _str(h.model), _str(h.model_version), _str(h.created)]
    out += [_U32.pack(h.ttl_s), _U64.pack(h.version), _U32.pack(h.input_dim), _U32.pack(h.capacity)]
    names = [n for n in sections_of(h.kind) if doc.sections.get(n)]
    out.append(_U16.pack(len(names)))
    for name in names:
        fields = doc.sections[name]
        out += [_str(name), _U32.pack(len(fields))]
        for key in sorted(fields):
            out += [_U16.pack(len(key)), key, _U32.pack(len(fields[key])), fields[key]]
    body = b"".join(out)
    return body + _U32.pack(zlib.crc32(body))


# ----------------------------------------------------------------------------- decode


class _Reader:
    """Bounds-checked reads: running out of bytes is a clear 'truncated', never an IndexError."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, n: int, what: str) -> bytes:
        if self.pos + n > len(self.data):
            left = len(self.data) - self.pos
            raise InvalidBackup(
                f"the document is truncated: {what} at byte {self.pos} needs {n} bytes, {left} are left"
            )
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def uint(self, s: struct.Struct, what: str) -> int:
        value: int = s.unpack(self.take(s.size, what))[0]
        return value

    def blob(self, s: struct.Struct, what: str) -> bytes:
        return self.take(self.uint(s, f"the length of {what}"), what)

    def text(self, what: str) -> str:
        try:
            return self.blob(_U16, what).decode()
        except UnicodeDecodeError as e:
            raise InvalidBackup(f"{what} is not UTF-8 text") from e


def _check_magic(data: bytes) -> None:
    if data[: len(MAGIC)] == MAGIC:
        return
    if MAGIC.startswith(data):
        raise InvalidBackup(f"the document is truncated: {len(data)} bytes, not even the magic")
    raise InvalidBackup(
        f"not a memserve session document (it does not start with the magic {MAGIC!r}); "
        f"export one with GET /v1/sessions/{{sid}}/export"
    )


def _read_header(rd: _Reader) -> Header:
    version = rd.uint(_U16, "the format version")
    flags = rd.uint(_U16, "the flags")
    if version != FORMAT_VERSION or flags != 0:
        raise UnsupportedBackupVersion(
            f"the document has format version {version} (flags {flags:#06x}); this server reads "
            f"version {FORMAT_VERSION} (flags 0) only",
            format_version=version, supported=[FORMAT_VERSION],
        )  # fmt: skip
    h = Header(
        kind=rd.text("the kind"), model=rd.text("the model"), model_version=rd.text("the model version"),
        created=rd.text("created"), ttl_s=rd.uint(_U32, "ttl_s"), version=rd.uint(_U64, "the version"),
        input_dim=rd.uint(_U32, "input_dim"), capacity=rd.uint(_U32, "capacity"),
    )  # fmt: skip
    if registry.get(h.kind) is None:
        raise InvalidBackup(f"unknown session kind {h.kind!r}; known: {', '.join(registry.names())}")
    backup_rules(h.kind)  # a kind that declares no backup: refused before anything else is read
    if not h.model:
        raise InvalidBackup("the document names no model")
    if h.ttl_s < 1 or h.input_dim < 1:
        raise InvalidBackup(f"ttl_s ({h.ttl_s}) and input_dim ({h.input_dim}) must be at least 1")
    return h


def _read_section(rd: _Reader, name: str) -> Fields:
    fields: Fields = {}
    for _ in range(rd.uint(_U32, f"the field count of section {name!r}")):
        key = rd.blob(_U16, f"a field name of section {name!r}")
        value = rd.blob(_U32, f"the value of field {key!r} of section {name!r}")
        if not key or key in fields:
            raise InvalidBackup(f"section {name!r} has an empty or repeated field name {key!r}")
        fields[key] = value
    if not fields:
        raise InvalidBackup(f"section {name!r} has no fields")
    return fields


def _read_sections(rd: _Reader, kind: str) -> dict[str, Fields]:
    allowed = sections_of(kind)
    count = rd.uint(_U16, "the section count")
    if count > MAX_SECTIONS:
        raise InvalidBackup(f"{count} sections; a session has at most {len(allowed)}")
    sections: dict[str, Fields] = {}
    for _ in range(count):
        name = rd.text("a section name")
        if name not in allowed:
            raise InvalidBackup(f"a {kind} session has no section {name!r}; it has {', '.join(allowed)}")
        if name in sections:
            raise InvalidBackup(f"section {name!r} appears twice")
        sections[name] = _read_section(rd, name)
    meta = {k.decode(errors="replace") for k in sections.get("meta", {})}
    if clash := sorted(meta & _IN_HEADER_OR_CALLER):
        raise InvalidBackup(f"the meta section may not set {', '.join(clash)}: the header or the caller does")
    return sections


def decode(data: bytes) -> SessionDoc:
    """A document's header and sections; InvalidBackup or UnsupportedBackupVersion if it is not
    exactly one well-formed document of a format version this server reads, WrongSessionKind if
    its kind declares no backup."""
    _check_magic(data)
    rd = _Reader(data)
    rd.pos = len(MAGIC)
    header = _read_header(rd)
    sections = _read_sections(rd, header.kind)
    end = rd.pos
    crc = rd.uint(_U32, "the checksum")
    if rd.pos != len(data):
        raise InvalidBackup(f"{len(data) - rd.pos} trailing bytes after the end of the document")
    if zlib.crc32(data[:end]) != crc:
        raise InvalidBackup("the checksum does not match: the document was altered or damaged")
    return SessionDoc(header, sections)


# ----------------------------------------------------------------------------- Redis


def _section_name(key: str) -> str:
    """A session key's name in documents: what follows its hash tag ("meta", "state", "ex")."""
    return key.rsplit(":", 1)[1]


class BackupStore:
    """Consistent snapshots of sessions, and restoring them under new ids."""

    def __init__(self, r: aioredis.Redis, keys: Keys) -> None:
        self.r = r
        self.keys = keys
        self._touch = r.register_script(scripts.TOUCH)

    async def snapshot(self, sid: str, owner: str) -> SessionDoc:
        """Every key of the session read in one MULTI; slides its TTL. SessionNotFound if absent
        or another tenant's (check ownership before, too: the read slides the TTL)."""
        if not SESSION_ID_RE.match(sid):
            raise SessionNotFound(f"session {sid} does not exist")
        names = self.keys.session_keys(sid)
        async with self.r.pipeline(transaction=True) as p:
            for key in names:
                p.hgetall(key)
            await self._touch(keys=names, client=p)
            res: list[Any] = await p.execute()
        raw = {_section_name(key): fields for key, fields in zip(names, res, strict=False)}
        meta: Fields = raw.pop("meta")
        if not meta or meta.get(b"owner", b"") != owner.encode():
            raise SessionNotFound(f"session {sid} does not exist")
        text = {k.decode(): v.decode() for k, v in meta.items()}
        sections = {n: f for n, f in raw.items() if f}
        rest = {k: v for k, v in meta.items() if k.decode() not in _IN_HEADER_OR_CALLER}
        if rest:
            sections["meta"] = rest
        return SessionDoc(Header.from_meta(text), sections)

    async def export(self, sid: str, owner: str) -> bytes:
        """The session as a document (see the module docstring)."""
        return encode(await self.snapshot(sid, owner))

    async def restore(self, doc: SessionDoc, owner: str, sid: str | None = None) -> str:
        """Write `doc` under a new session id (`sid`, or a fresh one) owned by `owner`, all keys
        in one MULTI, each with the TTL set; returns the id. Check the document first
        (app.store.backup_check)."""
        sid = sid or new_session_id()
        ttl = doc.header.ttl_s
        meta: Fields = {**doc.sections.get("meta", {}), **doc.header.meta_fields(), b"owner": owner.encode()}
        async with self.r.pipeline(transaction=True) as p:
            for key in self.keys.session_keys(sid):
                name = _section_name(key)
                fields = meta if name == "meta" else doc.sections.get(name)
                if fields:
                    p.hset(key, mapping=fields)  # type: ignore[arg-type]
                    p.expire(key, ttl)
            await p.execute()
        return sid

    async def fork(self, sid: str, owner: str, new_sid: str | None = None) -> str:
        """A copy of `owner`'s session under a new id, from one consistent snapshot; returns the id."""
        return await self.restore(await self.snapshot(sid, owner), owner, new_sid)
