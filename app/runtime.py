"""Process-wide tuning shared by the API and the workers."""

from __future__ import annotations

import gc

# Allocations between young-generation collections. Each request allocates thousands of
# short-lived objects; at the default (700) the collector runs constantly and its full
# collections, which walk every live object, stalled requests for tens of milliseconds
# (p99 of the stream benchmark about 200 ms with the default, about 100 ms with this).
GC_THRESHOLDS = (50_000, 50, 100)


def tune_gc() -> None:
    """After start-up: move what is alive now (modules, app, models) out of the collector's
    sight, so collections only look at objects made while serving, and collect less often."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
