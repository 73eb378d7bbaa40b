"""The store a new kind's runner starts with: reads, commits at most once per job, refusals kept."""

from __future__ import annotations

import pytest
import redis

from app.config import Settings
from app.errors import SessionNotFound
from app.store.keys import Keys
from app.store.worker_sessions import WorkerSessions


def test_a_job_is_applied_once_and_a_redelivery_gets_the_first_reply(
    settings: Settings, rdb: redis.Redis
) -> None:
    keys = Keys(settings.key_prefix)
    store = WorkerSessions(rdb, keys, reply_ttl_s=60)
    rdb.hset(keys.meta("s1"), mapping={"kind": "x", "ttl": 120})
    first = store.read("s1", "job-a", ("step",))
    assert first.values == [None] and first.reply is None
    assert store.commit("s1", "job-a", {"step": 3}, b"reply-1") == b"reply-1"
    # The same job run again (a worker died after the commit): nothing changes, the first reply stands.
    again = store.read("s1", "job-a", ("step",))
    assert again.reply == b"reply-1"
    assert store.commit("s1", "job-a", {"step": 6}, b"reply-2") == b"reply-1"
    assert rdb.hget(keys.state("s1"), "step") == b"3"
    assert 0 < rdb.ttl(keys.state("s1")) <= 120  # the state lives as long as the session
    # Another job moves the session on.
    assert store.commit("s1", "job-b", {"step": 6}, b"reply-3") == b"reply-3"
    assert store.read("s1", "job-c", ("step",)).values == [b"6"]


def test_an_ended_session_is_refused_and_nothing_is_written(settings: Settings, rdb: redis.Redis) -> None:
    keys = Keys(settings.key_prefix)
    store = WorkerSessions(rdb, keys, reply_ttl_s=60)
    with pytest.raises(SessionNotFound):
        store.read("gone", "job-a", ("step",))
    with pytest.raises(SessionNotFound):
        store.commit("gone", "job-a", {"step": 1}, b"reply")
    assert not rdb.exists(keys.state("gone"), keys.reply("gone", "job-a"))
    store.keep_reply("gone", "job-b", b"refused")
    assert store.read("gone", "job-b", ("step",)).reply == b"refused"  # a re-delivery answers the same
