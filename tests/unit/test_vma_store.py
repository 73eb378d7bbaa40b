"""VMA exemplar storage (scripts on a real Redis), job messages and image decoding."""

from __future__ import annotations

import base64
import io

import numpy as np
import orjson
import pytest
import redis
from PIL import Image

from app.errors import InvalidImage
from app.kinds.vma.images import decode_item, decode_png, encode_png
from app.kinds.vma.wire import VmaJob
from app.queue.messages import parse_reply
from app.store import scripts
from app.store.exemplars import PIX_BYTES, Memory, pack_pixels, unpack_pixels
from app.store.keys import Keys, new_session_id
from tests.conftest import drawings, png_b64

DIM = 4


@pytest.fixture
def vma_session(rdb: redis.Redis, key_prefix: str) -> tuple[Keys, str]:
    keys = Keys(key_prefix)
    sid = new_session_id()
    rdb.hset(keys.meta(sid), mapping={"kind": "vma", "ttl": 100, "version": 0})
    return keys, sid


def commit(rdb: redis.Redis, keys: Keys, sid: str, job: str, labels: list[str], capacity: int = 10) -> bytes:
    imgs = drawings(len(labels), seed=len(labels))
    h = np.arange(len(labels) * DIM, dtype="<f4").reshape(len(labels), DIM)
    script = rdb.register_script(scripts.COMMIT_EXEMPLARS)
    args = [
        100,
        60,
        capacity,
        job,
        orjson.dumps(labels),
        len(labels),
        pack_pixels(imgs),
        h.tobytes(),
        DIM,
        "e-" + job,
    ]
    out: bytes = script(keys=[keys.meta(sid), keys.exemplars(sid), keys.reply(sid, job)], args=args)
    return out


def memory(rdb: redis.Redis, keys: Keys, sid: str) -> Memory:
    return Memory.from_fields(rdb.hmget(keys.exemplars(sid), ["ids", "labels", "pix", "h", "dim"]))


def test_commit_appends_once_per_job(rdb: redis.Redis, vma_session: tuple[Keys, str]) -> None:
    keys, sid = vma_session
    first = commit(rdb, keys, sid, "job1", ["a", "b"])
    assert orjson.loads(parse_reply(first).body) == {"ids": [0, 1], "count": 2, "version": 1}
    # The same job again (a worker died after committing): the stored reply, nothing added.
    assert commit(rdb, keys, sid, "job1", ["a", "b"]) == first
    reply = parse_reply(commit(rdb, keys, sid, "job2", ["c/\u00e9"]))
    assert orjson.loads(reply.body) == {"ids": [2], "count": 3, "version": 2}
    mem = memory(rdb, keys, sid)
    assert mem.labels == ["a", "b", "c/\u00e9"] and mem.ids.tolist() == [0, 1, 2]
    assert mem.h.shape == (3, DIM) and len(mem.pix) == 3 * PIX_BYTES
    assert rdb.ttl(keys.exemplars(sid)) > 0 and rdb.ttl(keys.meta(sid)) > 0


def test_commit_refuses_past_capacity_and_changes_nothing(
    rdb: redis.Redis, vma_session: tuple[Keys, str]
) -> None:
    keys, sid = vma_session
    commit(rdb, keys, sid, "job1", ["a", "b"], capacity=3)
    before = rdb.hgetall(keys.exemplars(sid))
    reply = parse_reply(commit(rdb, keys, sid, "job2", ["c", "d"], capacity=3))
    assert not reply.ok and reply.status == 409 and reply.slug == "capacity-reached"
    assert reply.extra == {"capacity": 3, "count": 2}
    assert rdb.hgetall(keys.exemplars(sid)) == before and rdb.hget(keys.meta(sid), "version") == b"1"


def test_commit_to_an_ended_session_is_gone(rdb: redis.Redis, vma_session: tuple[Keys, str]) -> None:
    keys, sid = vma_session
    rdb.delete(keys.meta(sid))
    assert commit(rdb, keys, sid, "job1", ["a"]) == b"gone"
    assert not rdb.exists(keys.exemplars(sid))


def test_delete_keeps_the_others_in_order(rdb: redis.Redis, vma_session: tuple[Keys, str]) -> None:
    keys, sid = vma_session
    commit(rdb, keys, sid, "job1", ["a", "b", "c"])
    whole = memory(rdb, keys, sid)
    delete = rdb.register_script(scripts.DELETE_EXEMPLAR)
    assert delete(keys=[keys.meta(sid), keys.exemplars(sid)], args=[1, 100, PIX_BYTES, "e-del"]) == 2
    mem = memory(rdb, keys, sid)
    assert mem.ids.tolist() == [0, 2] and mem.labels == ["a", "c"]
    np.testing.assert_array_equal(mem.h, whole.h[[0, 2]])
    np.testing.assert_array_equal(unpack_pixels(mem.pix), unpack_pixels(whole.pix)[[0, 2]])
    assert delete(keys=[keys.meta(sid), keys.exemplars(sid)], args=[1, 100, PIX_BYTES, "e-del"]) == b"missing"
    for eid in (0, 2):
        delete(keys=[keys.meta(sid), keys.exemplars(sid)], args=[eid, 100, PIX_BYTES, "e-del"])
    empty = memory(rdb, keys, sid)
    assert empty.size == 0 and rdb.hget(keys.exemplars(sid), "ids") == b"[]"
    # After emptying, adding works again and ids go on from where they were.
    assert orjson.loads(parse_reply(commit(rdb, keys, sid, "job9", ["z"])).body)["ids"] == [3]


def test_pixels_pack_and_jobs_round_trip() -> None:
    imgs = drawings(3, seed=9)
    assert len(pack_pixels(imgs)) == 3 * PIX_BYTES
    np.testing.assert_array_equal(unpack_pixels(pack_pixels(imgs)), imgs)
    job = VmaJob.new("s" * 32, "vma-x", "classify", "chan", imgs, "rid", method="posterior", samples=4)
    back = VmaJob.from_fields({k.encode(): v for k, v in job.to_fields().items()})
    assert back == job and back.count == 3
    np.testing.assert_array_equal(back.images(), imgs)
    with pytest.raises(ValueError):
        VmaJob.from_fields({b"h": job.to_fields()["h"], b"v": b"\x00" * 5})


def _png(arr: np.ndarray, mode: str) -> str:
    buf = io.BytesIO()
    Image.fromarray(arr, mode=mode).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def test_any_png_becomes_the_training_format() -> None:
    ink = drawings(1, seed=3)[0]
    # Colour, non-square (padded to a square, aspect kept), black ink on a pale yellow page.
    rgb = np.full((28, 42, 3), (250, 240, 200), dtype=np.uint8)
    rgb[:, 7:35][ink > 0] = (10, 10, 60)
    out = decode_png(_png(rgb, "RGB"), "x")
    assert out.shape == (28, 28) and out.dtype == np.uint8
    # The 28x42 page became 42x42 with the drawing centred, then shrank by 2/3.
    assert 0.5 < out.sum() / ink.sum() < 1.0
    # Strokes on a transparent canvas, as a drawing app exports them.
    rgba = np.zeros((56, 56, 4), dtype=np.uint8)
    rgba[..., 3][np.kron(ink, np.ones((2, 2), dtype=np.uint8)) > 0] = 255
    np.testing.assert_array_equal(decode_png(_png(rgba, "RGBA"), "x"), ink)
    assert np.array_equal(decode_png(png_b64(ink, scale=3, invert=True), "x"), ink)
    with pytest.raises(InvalidImage, match="no ink"):  # stored, it would match anything at p = 1
        decode_png(_png(np.full((30, 30), 255, dtype=np.uint8), "L"), "x")


@pytest.mark.parametrize(
    ("image", "pixels", "message"),
    [
        ("%%%", None, "base64"),
        (base64.b64encode(b"GIF89a not a png").decode(), None, "PNG"),
        (None, [[0.5] * 28] * 27, "28 x 28"),
        (None, [[1.5] * 28] * 28, "[0, 1]"),
        (None, [[float("nan")] * 28] * 28, "[0, 1]"),
        (None, [["a"] * 28] * 28, "numbers"),
        (None, None, "exactly one"),
    ],
)
def test_bad_images_say_what_is_wrong(image: str | None, pixels: object, message: str) -> None:
    with pytest.raises(InvalidImage) as e:
        decode_item(image, pixels, "images[3]")
    assert message in e.value.detail and "images[3]" in e.value.detail


def test_huge_png_is_refused_before_decoding() -> None:
    buf = io.BytesIO()
    Image.new("1", (5000, 5000), 1).save(buf, format="PNG")  # a few KB on the wire
    with pytest.raises(InvalidImage, match="too large"):
        decode_png(base64.b64encode(buf.getvalue()).decode(), "x")


def test_encoded_samples_are_dark_ink_on_white() -> None:
    probs = np.zeros((28, 28), dtype=np.float32)
    probs[5:10, 5:10] = 1.0
    grey = np.asarray(Image.open(io.BytesIO(base64.b64decode(encode_png(probs)))))
    assert grey[0, 0] == 255 and grey[7, 7] == 0
    assert np.array_equal(decode_png(encode_png(probs), "x"), (probs > 0.5).astype(np.uint8))
