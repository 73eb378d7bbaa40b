"""A worker's batch window closes on the worker's clock, not at Redis's next cron tick.

Redis answers a timed-out XREADGROUP BLOCK when its event loop next wakes; with nothing else
arriving (every client waiting on this batch) that is its next cron tick, up to 100 ms later at
the default hz of 10. The reader sleeps out the window instead and then reads without blocking.
"""

from __future__ import annotations

import time

import redis

from app.config import Settings
from app.queue.reader import BatchReader
from app.store.keys import Keys


def test_a_lone_job_is_read_within_the_window_on_an_idle_redis(settings: Settings, rdb: redis.Redis) -> None:
    keys = Keys(settings.key_prefix)
    stream = keys.stream("memnet")
    reader = BatchReader(rdb, keys, [stream], "c1", max_batch=64, max_wait_ms=5)
    reader.ensure_group()
    waits = []
    for i in range(8):
        rdb.xadd(stream, {"v": str(i)})
        start = time.perf_counter()
        batch = reader.read_batch(block_ms=None)
        waits.append(time.perf_counter() - start)
        assert len(batch) == 1
        reader.ack({stream: [d.entry_id for d in batch]})
    # Each wait is the rest of the 5 ms window and two round trips: well under a cron tick.
    # With blocking reads the median wait here was 100 ms.
    assert sorted(waits)[len(waits) // 2] < 0.03, waits
