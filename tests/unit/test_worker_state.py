"""The worker's state cache and its in-place ring-buffer patches, against a real Redis."""

from __future__ import annotations

import numpy as np
import pytest
import redis

from app.kinds.memnet.state import WHOLE_RINGS_UP_TO, SessionState, StateCache, commit_args, ring_runs
from app.store import scripts
from app.store.keys import Keys


@pytest.mark.parametrize(
    ("start", "length", "capacity", "runs"),
    [
        (0, 1, 8, [(0, 1)]),
        (6, 2, 8, [(6, 2)]),
        (6, 3, 8, [(6, 2), (0, 1)]),
        (3, 8, 8, [(0, 8)]),
        (5, 20, 8, [(0, 8)]),
    ],
)
def test_ring_runs(start: int, length: int, capacity: int, runs: list[tuple[int, int]]) -> None:
    assert ring_runs(start, length, capacity) == runs


def _write(state: SessionState, rows: np.ndarray) -> SessionState:
    """What a chunk does to the ring: each point writes its pair at pos, then pos advances."""
    keys, values, pos = state.keys.copy(), state.values.copy(), state.pos
    n = keys.shape[0]
    for row in rows:
        keys[pos], values[pos] = row, -row
        pos = (pos + 1) % n
    h = state.h + 1
    return SessionState(h, keys, values, min(state.count + len(rows), n), pos)


# Patches (what a large ring gets), then this small ring's own way: written whole.
@pytest.mark.parametrize("whole_up_to", [0, WHOLE_RINGS_UP_TO])
def test_patched_and_whole_commits_leave_redis_equal_to_the_new_state(
    rdb: redis.Redis, key_prefix: str, whole_up_to: int
) -> None:
    keys = Keys(key_prefix)
    sid = "ab" * 16
    commit = rdb.register_script(scripts.COMMIT_STATE)
    rdb.hset(keys.meta(sid), mapping={"kind": "memnet", "ttl": 60})
    rng = np.random.default_rng(0)
    n, dk = 8, 4
    state = SessionState(
        np.zeros(3, np.float32), np.zeros((n, dk), np.float32), np.zeros((n, dk), np.float32), 0, 0
    )
    stored: SessionState | None = None
    step = 0
    for length in [1, 3, 7, 8, 2, 5, 19, 1, 6, 4]:
        rows = rng.standard_normal((length, dk)).astype(np.float32)
        new = _write(state, rows)
        pairs, patches = commit_args(stored, new, length, {}, {"step": b"%d" % (step + length)}, whole_up_to)
        assert bool(patches) == (whole_up_to == 0 and stored is not None and length < n)
        args = [step, 60, b"reply", 60, len(pairs) // 2, *pairs, *patches]
        version = commit(keys=[keys.meta(sid), keys.state(sid), keys.reply(sid, f"j{step}")], args=args)
        assert isinstance(version, int)
        back = SessionState.from_redis(rdb.hgetall(keys.state(sid)))
        np.testing.assert_array_equal(back.keys, new.keys)
        np.testing.assert_array_equal(back.values, new.values)
        np.testing.assert_array_equal(back.h, new.h)
        state, stored, step = new, new, step + length
    # A stale worker (expected step behind) changes nothing.
    before = rdb.hgetall(keys.state(sid))
    assert (
        commit(keys=[keys.meta(sid), keys.state(sid), keys.reply(sid, "x")], args=[0, 60, b"r", 60, 0])
        == b"conflict"
    )
    assert rdb.hgetall(keys.state(sid)) == before


def test_cache_is_keyed_on_the_commit_etag_and_bounded_in_bytes() -> None:
    def st(v: float) -> SessionState:
        return SessionState(
            np.full(4, v, np.float32), np.zeros((2, 2), np.float32), np.zeros((2, 2), np.float32), 0, 0
        )

    per = st(0).nbytes
    cache = StateCache(max_bytes=2 * per)
    cache.put("a", b"e1", st(1))
    cache.put("b", b"e1", st(2))
    assert cache.get("a", b"e1") is not None and cache.get("a", b"e2") is None  # another commit: miss
    cache.put("c", b"e1", st(3))  # over the bound: evicts the least recently used ("b")
    assert cache.get("b", b"e1") is None and cache.get("a", b"e1") is not None
    assert cache.get("c", b"e1") is not None
    assert cache.bytes == 2 * per
    cache.drop("a")
    assert cache.bytes == per
