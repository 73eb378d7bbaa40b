"""Session export, import and fork through the real service: uvicorn, real Redis, real workers."""

from __future__ import annotations

import struct
import zlib
from dataclasses import replace
from typing import Any

import httpx
import numpy as np
import redis

from app.config import Settings
from app.store.backup import MAGIC, MEDIA_TYPE, SessionDoc, decode, encode
from app.store.keys import Keys
from tests.conftest import TEST_MODEL, drawings, problem, run_offline
from tests.integration.test_stream import post, series
from tests.integration.test_vma import add, classify


def new_session(client: httpx.Client, kind: str) -> str:
    r = client.post("/v1/sessions", json={"kind": kind})
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def export(client: httpx.Client, sid: str) -> bytes:
    r = client.get(f"/v1/sessions/{sid}/export")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == MEDIA_TYPE
    assert sid.encode() not in r.content  # a document does not say where it came from
    return r.content


def created(r: httpx.Response, like: str | None = None, client: httpx.Client | None = None) -> dict[str, Any]:
    """The 201 body of an import or fork; with `like`, it matches that session but for its id."""
    assert r.status_code == 201, r.text
    body: dict[str, Any] = r.json()
    assert r.headers["location"] == f"/v1/sessions/{body['id']}"
    if like is not None and client is not None:
        orig = client.get(f"/v1/sessions/{like}").json()
        assert body["id"] != like
        same = ("kind", "model", "model_version", "created", "ttl_s", "capacity", "input_dim", "step")
        same += ("version", "exemplars")
        assert {k: body[k] for k in same} == {k: orig[k] for k in same}
    return body


def import_doc(client: httpx.Client, doc: bytes, **params: Any) -> httpx.Response:
    return client.post(
        "/v1/sessions/import", content=doc, headers={"content-type": MEDIA_TYPE}, params=params
    )


def assert_restored_keys(rdb: redis.Redis, settings: Settings, sid: str, ttl_s: int) -> None:
    """Every key of the session carries the TTL; the owner is the caller's (none yet)."""
    keys = Keys(settings.key_prefix)
    present = [k for k in keys.session_keys(sid) if rdb.exists(k)]
    assert keys.meta(sid) in present and len(present) == 2
    for key in present:
        assert 0 < rdb.ttl(key) <= ttl_s
    assert rdb.hget(keys.meta(sid), "owner") == b""


def test_memnet_export_import_is_byte_exact_and_the_copy_continues_identically(
    client: httpx.Client, start_worker, rdb: redis.Redis, settings: Settings, ckpt_dir
) -> None:
    start_worker()
    xs = series(30)
    sid = new_session(client, "memnet")
    assert post(client, sid, xs[:12], 0).status_code == 200
    last = post(client, sid, xs[12:20], 12).json()  # 20 points: the ring of 8 has wrapped
    doc = export(client, sid)
    r = client.post("/v1/sessions/import", content=doc)  # any content type: curl --data-binary's too
    copy = created(r, like=sid, client=client)["id"]
    assert export(client, copy) == doc
    assert_restored_keys(rdb, settings, copy, settings.default_ttl_s)
    # The copy knows its last chunk: a client retry of it is answered, not refused.
    again = post(client, copy, xs[12:20], 12).json()
    assert again["repeat"] is True and again["predictions"] == last["predictions"]
    a = post(client, sid, xs[20:], 20, horizon=5).json()
    b = post(client, copy, xs[20:], 20, horizon=5).json()
    assert b["predictions"] == a["predictions"] and b["forecast"] == a["forecast"]
    want, want_fc = run_offline(TEST_MODEL, ckpt_dir, xs, horizon=5)
    np.testing.assert_allclose(np.asarray(b["predictions"]), want[20:], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(b["forecast"]), want_fc, rtol=1e-5, atol=1e-5)


def test_forks_start_from_the_same_state_and_go_on_independently(
    client: httpx.Client, start_worker, ckpt_dir
) -> None:
    start_worker()
    xs, other = series(30), series(10, seed=5)[:, ::-1].copy()  # `other`: a different future
    sid = new_session(client, "memnet")
    assert post(client, sid, xs[:20], 0).status_code == 200
    doc = export(client, sid)
    first = created(client.post(f"/v1/sessions/{sid}/fork"), like=sid, client=client)["id"]
    second = created(client.post(f"/v1/sessions/{sid}/fork"), like=sid, client=client)["id"]
    assert export(client, first) == export(client, second) == export(client, sid) == doc
    # The first fork moves first: if it shared anything with the original, the original and the
    # untouched second fork would now disagree.
    f = post(client, first, other, 20, horizon=3).json()
    a = post(client, sid, xs[20:], 20, horizon=3).json()
    c = post(client, second, xs[20:], 20, horizon=3).json()
    assert a["predictions"] == c["predictions"] and a["forecast"] == c["forecast"]
    assert f["predictions"] != a["predictions"]
    want_a, _ = run_offline(TEST_MODEL, ckpt_dir, xs)
    want_f, _ = run_offline(TEST_MODEL, ckpt_dir, np.concatenate([xs[:20], other]))
    np.testing.assert_allclose(np.asarray(a["predictions"]), want_a[20:], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(f["predictions"]), want_f[20:], rtol=1e-5, atol=1e-5)
    steps = {s: client.get(f"/v1/sessions/{s}").json()["step"] for s in (sid, first, second)}
    assert steps == {sid: 30, first: 30, second: 30}


def test_vma_export_import_is_byte_exact_and_classifies_the_same(
    client: httpx.Client, start_worker, rdb: redis.Redis, settings: Settings
) -> None:
    start_worker()
    sid = new_session(client, "vma")
    imgs = drawings(6, seed=11)
    assert add(client, sid, imgs[:5], ["a", "b", "c", "a", "b"]).status_code == 201
    assert client.delete(f"/v1/sessions/{sid}/exemplars/2").status_code == 204  # ids 0 1 3 4, next 5
    doc = export(client, sid)
    copy = created(import_doc(client, doc), like=sid, client=client)["id"]
    assert export(client, copy) == doc
    assert_restored_keys(rdb, settings, copy, settings.default_ttl_s)
    for body in ({"seed": 3, "samples": 4, "top_k": 4}, {"method": "importance", "samples": 8, "seed": 9}):
        mine = classify(client, sid, imgs, **body)
        theirs = classify(client, copy, imgs, **body)
        assert mine.status_code == theirs.status_code == 200, theirs.text
        assert theirs.json() == mine.json()
    samples = [client.post(f"/v1/sessions/{s}/samples", json={"n": 4, "seed": 5}).json() for s in (sid, copy)]
    assert samples[0] == samples[1]
    listing = [client.get(f"/v1/sessions/{s}/exemplars").json()["exemplars"] for s in (sid, copy)]
    assert listing[0] == listing[1] and [e["id"] for e in listing[1]] == [0, 1, 3, 4]
    # The copy goes on by itself: ids continue where the original's would.
    assert add(client, copy, imgs[5:], ["c"]).json()["ids"] == [5]
    assert client.get(f"/v1/sessions/{sid}").json()["exemplars"] == 4


def key_count(rdb: redis.Redis, settings: Settings) -> int:
    return sum(1 for _ in rdb.scan_iter(match=f"{settings.key_prefix}:*", count=1000))


def test_bad_imports_are_refused_and_change_nothing(
    client: httpx.Client, rdb: redis.Redis, settings: Settings
) -> None:
    vma = decode(export(client, new_session(client, "vma")))
    memnet = export(client, new_session(client, "memnet"))

    at = memnet.index(TEST_MODEL.encode())  # a byte of the model's name: still parses, damaged

    def altered(doc: SessionDoc, **header: Any) -> bytes:
        return encode(replace(doc, header=replace(doc.header, **header)))

    cases: list[tuple[bytes, dict[str, Any], int, str, str]] = [
        (b"", {}, 422, "invalid-backup", "truncated"),
        (b'{"kind": "memnet"}', {}, 422, "invalid-backup", "not a memserve session document"),
        (memnet[:-7], {}, 422, "invalid-backup", "truncated"),
        (memnet + b"\x00", {}, 422, "invalid-backup", "trailing bytes"),
        (memnet[:at] + b"M" + memnet[at + 1 :], {}, 422, "invalid-backup", "checksum"),
        (memnet[:8] + b"\x02\x00" + memnet[10:], {}, 422, "unsupported-backup-version", "format version 2"),
        (altered(vma, model="vma-gone"), {}, 404, "model-not-found", "'vma-gone' is not loaded"),
        (altered(vma, model_version="0.9"), {}, 409, "model-version-mismatch", "version '0.9'"),
        (altered(vma, model=TEST_MODEL), {}, 409, "backup-kind-mismatch", "vma session"),
        (encode(replace(vma, sections={"ex": {b"n": b"0"}})), {}, 422, "invalid-backup", "lacks ids"),
        (altered(vma, ttl_s=settings.max_ttl_s + 1), {}, 422, "invalid-request", "ttl_s"),
        (encode(vma), {"ttl_s": settings.max_ttl_s + 1}, 422, "invalid-request", "ttl_s"),
        (encode(vma), {"ttl_s": 0}, 422, "invalid-request", "ttl_s"),
        (memnet + b"\x00" * settings.max_body_bytes, {}, 413, "payload-too-large", "MAX_BODY_BYTES"),
    ]
    before = key_count(rdb, settings)
    for data, params, status, slug, says in cases:
        problem(import_doc(client, data, **params), status, slug, says)
        assert key_count(rdb, settings) == before, slug
    # What a refused document would have had to be: the same documents import once fixed.
    created(import_doc(client, altered(vma, ttl_s=settings.max_ttl_s + 1), ttl_s=60))
    assert created(import_doc(client, memnet))["step"] == 0
    assert key_count(rdb, settings) == before + 2


def test_export_and_fork_of_a_missing_session_are_404_and_export_slides_the_ttl(
    client: httpx.Client, rdb: redis.Redis, settings: Settings
) -> None:
    for sid in ("0" * 32, "not-a-session"):
        problem(client.get(f"/v1/sessions/{sid}/export"), 404, "session-not-found", sid)
        problem(client.post(f"/v1/sessions/{sid}/fork"), 404, "session-not-found", sid)
    sid = new_session(client, "memnet")
    meta = Keys(settings.key_prefix).meta(sid)
    rdb.expire(meta, 30)
    export(client, sid)
    assert rdb.ttl(meta) > settings.default_ttl_s - 5
    assert client.delete(f"/v1/sessions/{sid}").status_code == 204
    problem(client.get(f"/v1/sessions/{sid}/export"), 404, "session-not-found")
    problem(client.post(f"/v1/sessions/{sid}/fork"), 404, "session-not-found")


def test_the_backup_routes_are_in_the_openapi_spec(client: httpx.Client) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/v1/sessions/import", "/v1/sessions/{sid}/export", "/v1/sessions/{sid}/fork"} <= set(paths)
    assert MEDIA_TYPE in paths["/v1/sessions/import"]["post"]["requestBody"]["content"]
    assert MEDIA_TYPE in paths["/v1/sessions/{sid}/export"]["get"]["responses"]["200"]["content"]


def _document_of(kind: str, model: str) -> bytes:
    """A well-formed document of any kind, written by hand as app.store.backup documents it."""

    def s16(text: str) -> bytes:
        return struct.pack("<H", len(text.encode())) + text.encode()

    data = MAGIC + struct.pack("<HH", 1, 0) + s16(kind) + s16(model) + s16("1") + s16("")
    data += struct.pack("<IQIIH", 60, 0, 1, 3, 0)
    return data + struct.pack("<I", zlib.crc32(data))


def test_a_kind_that_declares_no_backup_is_refused_export_and_import_but_forks(
    movavg_client: httpx.Client, rdb: redis.Redis, settings: Settings
) -> None:
    sid = new_session(movavg_client, "movavg")
    says = "a movavg session cannot be exported or imported: its kind declares no backup"
    problem(movavg_client.get(f"/v1/sessions/{sid}/export"), 409, "wrong-session-kind", says)
    before = key_count(rdb, settings)
    problem(import_doc(movavg_client, _document_of("movavg", "movavg-3")), 409, "wrong-session-kind", says)
    assert key_count(rdb, settings) == before
    # A fork copies the session's keys whatever its kind: it needs no declaration.
    created(movavg_client.post(f"/v1/sessions/{sid}/fork"), like=sid, client=movavg_client)
