"""The session store's building blocks: tensor codec, key schema, Lua scripts (real Redis)."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import redis
from pydantic import ValidationError

from app.config import Settings
from app.store import scripts
from app.store.codec import CodecError, decode_array, decode_fields, encode_array, encode_fields
from app.store.keys import SESSION_ID_RE, Keys, entry_ms, new_job_id, new_session_id

# --- codec -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("array", "code"),
    [
        (np.arange(24, dtype=np.float32).reshape(2, 3, 4) / 7, "f4"),
        (np.array([0, 1, 127, 255], dtype=np.uint8), "u1"),
        (np.array([[-(2**62), 0], [2**62, -1]], dtype=np.int64), "i8"),
        (np.float32(3.5).reshape(()), "f4"),  # a scalar
        (np.zeros((0, 8), dtype=np.float32), "f4"),  # empty
        (np.arange(6, dtype=">f4").reshape(3, 2), "f4"),  # big-endian in: stored little-endian
        (np.asfortranarray(np.arange(12, dtype=np.float32).reshape(3, 4)), "f4"),  # non C order
    ],
    ids=["f4-3d", "u1", "i8", "scalar", "empty", "big-endian", "fortran"],
)
def test_arrays_round_trip_with_dtype_and_shape(array: np.ndarray, code: str) -> None:
    raw, entry = encode_array(array)
    assert entry == [code, list(array.shape)]
    assert len(raw) == array.size * array.dtype.itemsize
    back = decode_array(raw, json.loads(json.dumps(entry)))
    assert back.shape == array.shape and back.dtype == np.dtype({"f4": "<f4", "u1": "u1", "i8": "<i8"}[code])
    np.testing.assert_array_equal(back, array)


def test_float32_is_stored_as_raw_little_endian_bytes() -> None:
    raw, _ = encode_array(np.array([1.0, -2.0], dtype=np.float32))
    assert raw == b"\x00\x00\x80\x3f\x00\x00\x00\xc0"


@pytest.mark.parametrize("dtype", [np.float64, np.int32, np.bool_, np.float16])
def test_unsupported_dtypes_are_refused(dtype: type) -> None:
    with pytest.raises(CodecError):
        encode_array(np.zeros(3, dtype=dtype))


@pytest.mark.parametrize("delta", [-1, 1, -4, 4])
def test_a_wrong_byte_length_raises_codec_error(delta: int) -> None:
    raw, entry = encode_array(np.arange(6, dtype=np.float32).reshape(2, 3))
    bad = raw[:delta] if delta < 0 else raw + b"\x00" * delta
    with pytest.raises(CodecError, match="expected"):
        decode_array(bad, entry)


def test_fields_round_trip_with_a_layout_field() -> None:
    arrays = {
        "h": np.linspace(-1, 1, 16, dtype=np.float32),
        "keys": np.ones((8, 4), dtype=np.float32),
        "pixels": np.arange(28 * 28, dtype=np.uint8).reshape(28, 28),
        "ids": np.array([3, 1, 2], dtype=np.int64),
    }
    fields = encode_fields(arrays)
    assert set(fields) == {*arrays, "layout"}
    layout = json.loads(fields["layout"])
    assert layout == {
        "h": ["f4", [16]],
        "keys": ["f4", [8, 4]],
        "pixels": ["u1", [28, 28]],
        "ids": ["i8", [3]],
    }
    stored = {k.encode(): v for k, v in fields.items()}  # as HGETALL returns it
    stored[b"step"] = b"12"  # other fields beside the arrays are ignored
    back = decode_fields(stored)
    assert set(back) == set(arrays)
    for name, a in arrays.items():
        np.testing.assert_array_equal(back[name], a)
        assert back[name].dtype == a.dtype


def test_fields_without_a_layout_decode_to_nothing() -> None:
    assert decode_fields({}) == {}
    assert decode_fields({b"step": b"3"}) == {}


def test_a_truncated_field_in_a_stored_hash_raises_codec_error() -> None:
    fields = {k.encode(): v for k, v in encode_fields({"h": np.zeros(4, dtype=np.float32)}).items()}
    fields[b"h"] = fields[b"h"][:-2]
    with pytest.raises(CodecError):
        decode_fields(fields)


# --- keys --------------------------------------------------------------------------------


def crc16_xmodem(data: bytes) -> int:
    """CRC16-CCITT (XMODEM), the checksum Redis Cluster uses for key slots."""
    crc = 0
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else crc << 1
            crc &= 0xFFFF
    return crc


def cluster_slot(key: str) -> int:
    """HASH_SLOT of the Redis Cluster specification, hash tags included."""
    k = key.encode()
    start = k.find(b"{")
    if start != -1:
        end = k.find(b"}", start + 1)
        if end > start + 1:
            k = k[start + 1 : end]
    return crc16_xmodem(k) % 16384


def test_crc16_matches_the_reference_values_of_the_cluster_spec() -> None:
    assert crc16_xmodem(b"123456789") == 0x31C3  # the spec's test vector
    assert cluster_slot("foo") == 12182 and cluster_slot("{user1000}.following") == cluster_slot("user1000")


@pytest.mark.parametrize("prefix", ["ms", "mstest-abc", "a.b_c-1"])
def test_all_keys_of_a_session_share_its_hash_tag_and_slot(prefix: str) -> None:
    keys = Keys(prefix)
    slots_seen = set()
    for _ in range(20):
        sid = new_session_id()
        session = [keys.meta(sid), keys.state(sid), keys.reply(sid, new_job_id()), *keys.session_keys(sid)]
        for key in session:
            assert key.startswith(f"{prefix}:") and f"{{{sid}}}" in key
            assert key.count("{") == 1 and key.count("}") == 1
        slots = {cluster_slot(k) for k in session}
        assert slots == {crc16_xmodem(sid.encode()) % 16384}
        slots_seen |= slots
    assert len(slots_seen) > 1  # sessions spread over the cluster


def test_session_keys_are_meta_state_and_exemplars() -> None:
    keys = Keys("p")
    assert keys.session_keys("s") == ["p:{s}:meta", "p:{s}:state", "p:{s}:ex"]
    assert keys.stream("memnet") == "p:{jobs}:memnet"


def test_the_job_streams_share_one_slot() -> None:
    # A worker reads every stream in one XREADGROUP, which a cluster runs on one slot only.
    keys = Keys("ms")
    assert cluster_slot(keys.stream("memnet")) == cluster_slot(keys.stream("vma"))


@pytest.mark.parametrize("prefix", ["a{b", "a}b", "a:b", "a b", ""])
def test_a_key_prefix_that_would_break_hash_tags_is_refused(prefix: str) -> None:
    with pytest.raises(ValidationError):
        Settings(key_prefix=prefix)


def test_session_ids_are_128_bit_random_hex() -> None:
    ids = [new_session_id() for _ in range(2000)]
    assert len(set(ids)) == len(ids)
    for sid in ids:
        assert SESSION_ID_RE.match(sid) and re.fullmatch(r"[0-9a-f]{32}", sid)
    # every one of the 128 bits varies across ids (not a counter, not a timestamp prefix)
    ones = [sum((int(s, 16) >> bit) & 1 for s in ids) for bit in range(128)]
    assert all(400 < n < 1600 for n in ones), ones
    assert new_job_id() != new_job_id() and SESSION_ID_RE.match(new_job_id())


@pytest.mark.parametrize(
    "sid", ["0" * 31, "0" * 33, "A" * 32, "g" * 32, "{" + "0" * 30 + "}", "0" * 31 + "\n", ""]
)
def test_session_id_pattern_refuses_anything_but_32_lowercase_hex(sid: str) -> None:
    assert not SESSION_ID_RE.match(sid)


# --- Lua scripts against a real Redis ----------------------------------------------------


@pytest.fixture
def session(rdb: redis.Redis, key_prefix: str) -> tuple[Keys, str]:
    keys = Keys(key_prefix)
    sid = new_session_id()
    rdb.hset(keys.meta(sid), mapping={"kind": "memnet", "ttl": 100, "version": 0})
    return keys, sid


def commit(
    rdb: redis.Redis,
    keys: Keys,
    sid: str,
    expected_step: int,
    patches: tuple[tuple[str, int, bytes], ...] = (),
    **fields: bytes,
) -> int | str:
    """Run COMMIT_STATE: set `fields` whole, then apply byte `patches` (field, offset, bytes)."""
    script = rdb.register_script(scripts.COMMIT_STATE)
    args: list[object] = [expected_step, 100, b"the reply", 50, len(fields)]
    for name, value in fields.items():
        args += [name, value]
    for name, offset, data in patches:
        args += [name, offset, data]
    res = script(keys=[keys.meta(sid), keys.state(sid), keys.reply(sid, "job1")], args=args)
    return res.decode() if isinstance(res, bytes) else int(res)


def test_commit_applies_when_the_step_matches_and_sets_ttls(rdb: redis.Redis, session) -> None:
    keys, sid = session
    assert commit(rdb, keys, sid, 0, step=b"5", h=b"\x00\x01") == 1  # the new version
    assert rdb.hgetall(keys.state(sid)) == {b"step": b"5", b"h": b"\x00\x01"}
    assert rdb.hget(keys.meta(sid), "version") == b"1"
    assert rdb.get(keys.reply(sid, "job1")) == b"the reply"
    assert 90 < rdb.ttl(keys.meta(sid)) <= 100
    assert 90 < rdb.ttl(keys.state(sid)) <= 100
    assert 40 < rdb.ttl(keys.reply(sid, "job1")) <= 50
    assert commit(rdb, keys, sid, 5, step=b"9") == 2  # the next chunk continues from 5
    assert rdb.hget(keys.state(sid), "step") == b"9" and rdb.hget(keys.meta(sid), "version") == b"2"


def test_commit_patches_bytes_in_place(rdb: redis.Redis, session) -> None:
    keys, sid = session
    assert commit(rdb, keys, sid, 0, step=b"1", ring=b"abcdefgh") == 1
    assert commit(rdb, keys, sid, 1, (("ring", 0, b"X"), ("ring", 6, b"YZ")), step=b"2") == 2
    assert rdb.hget(keys.state(sid), "ring") == b"XbcdefYZ"
    assert rdb.hget(keys.state(sid), "step") == b"2"


@pytest.mark.parametrize("expected", [0, 3, 7])  # the session is at step 4
def test_commit_at_another_step_is_a_conflict_and_writes_nothing(rdb: redis.Redis, session, expected) -> None:
    keys, sid = session
    assert commit(rdb, keys, sid, 0, step=b"4", ring=b"abcd") == 1
    rdb.delete(keys.reply(sid, "job1"))
    before_state, before_meta = rdb.hgetall(keys.state(sid)), rdb.hgetall(keys.meta(sid))
    rdb.persist(keys.meta(sid))
    assert commit(rdb, keys, sid, expected, (("ring", 0, b"Z"),), step=b"99", h=b"x") == "conflict"
    assert rdb.hgetall(keys.state(sid)) == before_state
    assert rdb.hgetall(keys.meta(sid)) == before_meta
    assert rdb.ttl(keys.meta(sid)) == -1  # TTL not touched either
    assert not rdb.exists(keys.reply(sid, "job1"))


def test_commit_to_a_session_without_meta_is_gone_and_writes_nothing(rdb: redis.Redis, key_prefix) -> None:
    keys, sid = Keys(key_prefix), new_session_id()
    assert commit(rdb, keys, sid, 0, step=b"1") == "gone"
    assert not rdb.exists(keys.meta(sid), keys.state(sid), keys.reply(sid, "job1"))


def test_a_patch_outside_the_stored_field_is_an_error(rdb: redis.Redis, session) -> None:
    keys, sid = session
    assert commit(rdb, keys, sid, 0, step=b"1", ring=b"abcd") == 1
    for patch in (("ring", 3, b"XY"), ("missing", 0, b"X")):
        with pytest.raises(redis.ResponseError, match="patch outside"):
            commit(rdb, keys, sid, 1, (patch,), step=b"2")
    assert rdb.hgetall(keys.state(sid)) == {b"step": b"1", b"ring": b"abcd"}
    assert rdb.hget(keys.meta(sid), "version") == b"1"


def test_a_commit_refused_for_a_bad_patch_writes_nothing(rdb: redis.Redis, session) -> None:
    keys, sid = session
    assert commit(rdb, keys, sid, 0, step=b"1", ring=b"abcd") == 1
    with pytest.raises(redis.ResponseError, match="patch outside"):
        commit(rdb, keys, sid, 1, (("ring", 0, b"X"), ("ring", 3, b"YZ")), step=b"2")
    assert rdb.hgetall(keys.state(sid)) == {b"step": b"1", b"ring": b"abcd"}


def test_touch_slides_the_ttl_of_meta_and_state(rdb: redis.Redis, session) -> None:
    keys, sid = session
    touch = rdb.register_script(scripts.TOUCH)
    rdb.hset(keys.state(sid), "step", 1)
    rdb.expire(keys.meta(sid), 5)
    assert touch(keys=[keys.meta(sid), keys.state(sid)]) == 100
    assert 90 < rdb.ttl(keys.meta(sid)) <= 100 and 90 < rdb.ttl(keys.state(sid)) <= 100
    gone = new_session_id()
    assert touch(keys=[keys.meta(gone), keys.state(gone)]) == 0
    assert not rdb.exists(keys.meta(gone))


def test_submit_refuses_once_the_stream_holds_cap_jobs(rdb: redis.Redis, key_prefix: str) -> None:
    stream = Keys(key_prefix).stream("memnet")
    submit = rdb.register_script(scripts.SUBMIT)
    assert submit(keys=[stream], args=[2, "op", "points", "values", b"\x00\xff"]) is not None
    assert submit(keys=[stream], args=[2, "op", "points"]) is not None
    assert submit(keys=[stream], args=[2, "op", "points"]) is None
    assert rdb.xlen(stream) == 2
    first = rdb.xrange(stream)[0][1]
    assert first == {b"op": b"points", b"values": b"\x00\xff"}


def test_entry_ms_reads_the_time_redis_gave_the_entry(rdb: redis.Redis, key_prefix: str) -> None:
    before = rdb.time()
    stream = f"{key_prefix}:ms-probe"
    entry_id = rdb.xadd(stream, {"a": 1})
    rdb.delete(stream)
    redis_ms = before[0] * 1000 + before[1] / 1000
    assert redis_ms - 1 <= entry_ms(entry_id) <= redis_ms + 5_000
    assert entry_ms(entry_id) == entry_ms(entry_id.decode()), "bytes and str ids alike"
