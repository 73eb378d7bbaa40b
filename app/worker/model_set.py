"""The checkpoint versions a worker serves, and how it picks up new ones while it runs.

Every complete version in the checkpoint directory is loaded at startup. Then, every
``MEMSERVE_RELOAD_INTERVAL_S`` between two batches, the worker rescans the directory and loads
the versions it has not loaded yet; a job naming a version not loaded here makes it rescan at
once (at most once a second) before the job is refused. ``0`` turns both off: the directory is
read once, at startup. Loading happens between batches (or, for such a job, before its batch
runs), so jobs wait for it and never see half a model.

Nothing is ever unloaded: sessions keep the version they were created with until they end,
and a worker cannot know that none is left. Removing a version's files therefore changes
nothing for a worker that has loaded it; a worker started after the removal does not have it
and refuses its jobs (503 model-unavailable). A loaded version is immutable: should its files
change in place, the change is ignored with a warning (drop a new version instead).
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from app import registry
from app.catalog import ModelInfo, ModelKey, newest
from app.checkpoint_scan import CheckpointScanner
from app.config import Settings
from app.worker.backends import Backend
from models.checkpoint import load_checkpoint

log = logging.getLogger("memserve.worker")

ON_DEMAND_MIN_S = 1.0  # a flood of jobs for a missing version rescans once a second, not per batch


class ModelSet:
    """Loaded checkpoint versions by (name, version); the runners share these dicts."""

    def __init__(self, settings: Settings, backend: Backend) -> None:
        self.backend = backend
        self.interval = settings.reload_interval_s
        self.scanner = CheckpointScanner(settings.checkpoint_dir, require_onnx=backend.name == "onnx")
        # Per kind, its loaded versions (each kind's `Served`): the kind's runner shares the dict.
        self.models: dict[str, dict[ModelKey, Any]] = {kind: {} for kind in registry.names()}
        self.latest: dict[str, ModelKey] = {}  # the newest loaded version of each name
        self.infos: dict[ModelKey, ModelInfo] = {}
        self._failed: dict[ModelKey, str] = {}  # versions whose load failed -> `_fingerprint` of them
        self._changed: set[ModelKey] = set()  # loaded versions whose files changed since (warned)
        self._next_poll = time.monotonic() + self.interval
        self._last_on_demand = float("-inf")
        # Rebound, never mutated: the heartbeat thread reads it while the worker loads.
        self.beat: dict[str, Any] = {"models": [], "loaded": []}

    def load_new(self) -> list[ModelInfo]:
        """Scan the directory and load every complete version not loaded yet; the new ones."""
        added = []
        for info in self.scanner.scan():
            if info.kind not in self.models or self._known(info):
                continue
            try:
                self._load(info)
            except Exception as e:
                # Whatever a bad file makes the loader raise, a serving worker must survive it;
                # the same files are not tried again, fixed ones are.
                self._failed[info.key] = _fingerprint(info)
                log.error("could not load %s version %s from %s: %s", info.name, info.version, info.path, e)
                continue
            added.append(info)
        if added:
            self._publish()
        return added

    def poll(self) -> list[ModelInfo]:
        """`load_new` when the reload interval has passed (never when it is 0)."""
        if self.interval <= 0 or time.monotonic() < self._next_poll:
            return []
        self._next_poll = time.monotonic() + self.interval
        return self.load_new()

    def ensure(self, name: str, version: str | None) -> list[ModelInfo]:
        """Rescan at once for a job naming a version not loaded here (at most once a second:
        a burst of such jobs costs one scan); the versions it loaded."""
        loaded = name in self.latest if version is None else (name, version) in self.infos
        now = time.monotonic()
        if loaded or self.interval <= 0 or now - self._last_on_demand < ON_DEMAND_MIN_S:
            return []
        self._last_on_demand = now
        log.info("a job names %s version %s, not loaded here: rescanning", name, version or "(any)")
        return self.load_new()

    def _known(self, info: ModelInfo) -> bool:
        """Whether this version was loaded or failed to load already (then it is not tried again)."""
        loaded = self.infos.get(info.key)
        if loaded is not None:
            if loaded.weights_sha256 != info.weights_sha256 and info.key not in self._changed:
                self._changed.add(info.key)
                log.warning(
                    "%s changed after %s version %s was loaded from it; versions are immutable, so the "
                    "loaded one is kept: drop a new version instead", info.path, info.name, info.version,
                )  # fmt: skip
            return True
        return self._failed.get(info.key) == _fingerprint(info)

    def _load(self, info: ModelInfo) -> None:
        assert info.path is not None
        model, card = load_checkpoint(info.path)
        self.models[info.kind][info.key] = self.backend.serve(model, card, info.path.parent)
        self.infos[info.key] = info
        self._failed.pop(info.key, None)
        latest = newest(m for m in self.infos.values() if m.name == info.name)
        assert latest is not None
        self.latest[info.name] = latest.key
        where = self.backend.describe()
        log.info(
            "loaded %s %s version %s (%s) on %s, %s backend", info.kind, info.name, info.version,
            info.path.name, where["device"], where["backend"],
        )  # fmt: skip

    def _publish(self) -> None:
        infos = sorted(self.infos.values(), key=lambda m: m.key)
        self.beat = {
            "models": sorted({m.name for m in infos}),
            "loaded": [{"name": m.name, "version": m.version, "kind": m.kind} for m in infos],
        }


def _fingerprint(info: ModelInfo) -> str:
    """What a version's files say, to tell a fixed copy from the one that failed to load."""
    return info.weights_sha256 + json.dumps(info.card, sort_keys=True)
