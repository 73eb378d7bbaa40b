"""Job and reply messages: what goes on the stream and comes back, byte for byte."""

from __future__ import annotations

import dataclasses

import numpy as np
import orjson
import pytest

from app.errors import SeqConflict, SessionNotFound
from app.kinds.memnet.wire import PointsJob, digest
from app.queue.messages import (
    error_reply,
    frame_replies,
    ok_reply,
    parse_reply,
    unframe_replies,
)


def as_stream_entry(fields: dict[str, str | bytes]) -> dict[bytes, bytes]:
    """What XREADGROUP hands back for an entry XADDed with `fields`."""
    return {k.encode(): v if isinstance(v, bytes) else v.encode() for k, v in fields.items()}


def job(seq: int | None, values: bytes = b"") -> PointsJob:
    values = values or np.arange(6, dtype="<f4").tobytes()
    return PointsJob(
        job_id="j" * 32, sid="a" * 32, model="memnet-test", seq=seq, values=values,
        length=3, dim=2, horizon=5, reply_to="ms:replies:abc", request_id="req-1",
    )  # fmt: skip


@pytest.mark.parametrize("seq", [None, 0, 1, 123456789])
def test_points_job_round_trips_through_stream_fields(seq: int | None) -> None:
    j = job(seq)
    back = PointsJob.from_fields(as_stream_entry(j.to_fields()))
    assert back == j
    assert back.seq == seq  # 0 stays 0 (not "append"), None stays None


def test_points_job_values_are_raw_bytes_passed_unchanged() -> None:
    raw = bytes(range(256)) * 2  # every byte value, newlines and NULs included
    j = dataclasses.replace(job(0, raw), length=64, dim=2)  # 64 x 2 float32 = 512 bytes
    fields = j.to_fields()
    assert fields["v"] is raw
    back = PointsJob.from_fields(as_stream_entry(fields))
    assert back.values == raw and back.digest == digest(raw)


def test_points_job_without_optional_fields_defaults() -> None:
    entry = as_stream_entry(job(None).to_fields())
    head = orjson.loads(entry[b"h"])
    del head["rid"]
    entry[b"h"] = orjson.dumps(head)
    back = PointsJob.from_fields(entry)
    assert back.seq is None and back.request_id == ""


def test_a_job_whose_values_do_not_match_its_shape_is_malformed() -> None:
    entry = as_stream_entry(job(0).to_fields())
    entry[b"v"] = entry[b"v"][:-4]
    with pytest.raises(ValueError, match="value bytes"):
        PointsJob.from_fields(entry)


def test_digest_tells_different_chunks_apart() -> None:
    a = np.zeros(4, dtype="<f4").tobytes()
    b = np.array([0, 0, 0, 1e-30], dtype="<f4").tobytes()
    assert digest(a) == digest(bytes(a)) and digest(a) != digest(b)
    assert len(digest(a)) == 24


def test_ok_reply_passes_the_body_through_unchanged_with_numpy_arrays() -> None:
    preds = np.array([[1.5, -2.25], [3.0, 0.125]], dtype=np.float32)
    body = {"seq": 0, "step": 2, "predictions": preds, "forecast": None, "repeat": False}
    raw = ok_reply("job-1", body)
    reply = parse_reply(raw)
    assert reply.ok and reply.job_id == "job-1" and reply.status == 200 and reply.slug == ""
    assert reply.body == orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)
    assert raw.endswith(reply.body)
    decoded = orjson.loads(reply.body)
    assert decoded["predictions"] == [[1.5, -2.25], [3.0, 0.125]]
    assert decoded["forecast"] is None and decoded["repeat"] is False


def test_ok_reply_body_may_contain_newlines_in_strings() -> None:
    reply = parse_reply(ok_reply("j", {"note": "a\nb", "x": np.arange(3, dtype=np.int64)}))
    assert orjson.loads(reply.body) == {"note": "a\nb", "x": [0, 1, 2]}


def test_error_reply_round_trips_status_slug_detail_and_extra() -> None:
    raw = error_reply("job-2", SeqConflict("chunk starts at 4\nsession at 3", expected_seq=3))
    reply = parse_reply(raw)
    assert not reply.ok
    assert (reply.job_id, reply.status, reply.slug) == ("job-2", 409, "seq-conflict")
    assert reply.detail == "chunk starts at 4\nsession at 3"
    assert reply.extra == {"expected_seq": 3}
    assert reply.body == b""


def test_error_reply_without_extra_parses_to_an_empty_extra() -> None:
    reply = parse_reply(error_reply("j", SessionNotFound("gone")))
    assert reply.extra == {} and reply.status == 404


def test_parse_reply_refuses_garbage_with_a_value_error() -> None:
    with pytest.raises(ValueError):
        parse_reply(b"not json\n{}")


def test_replies_framed_in_one_message_come_back_whole() -> None:
    replies = [
        ok_reply("a", {"x": [1.0, 2.0]}),
        error_reply("b", SeqConflict("no", expected_seq=3)),
        b"\n",
    ]
    assert unframe_replies(frame_replies(replies)) == replies
    with pytest.raises(ValueError, match="framing"):
        unframe_replies(frame_replies(replies)[:-1])
