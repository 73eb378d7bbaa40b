"""Model cards in the checkpoint directory, read as JSON (no torch: the API uses this).

A model is a (name, version) pair. Each version is its own card and weights file pair in the
checkpoint directory, under any file stem: ``memnet-mackey-glass.json`` (card ``"name":
"memnet-mackey-glass", "version": "1"``) and ``memnet-mackey-glass.v2.json`` (same name,
``"version": "2"``) are two versions of one model, served side by side. A session keeps the
version it was created with; new sessions get the latest one that a worker has loaded.

Which version is the latest (`version_order`): versions made of dot-separated integers
("2", "10", "1.4") compare as numbers, part by part, so "10" is newer than "9". Any other
version ("exp-a", "2024-05-01") ranks below every numbered one; among themselves they
compare by the card's ``created`` time, then as strings. Numbered versions outranking named
ones keeps an ad-hoc name dropped in for a trial from becoming the default by accident.

Reading the directory is `app.checkpoint_scan.CheckpointScanner`'s job (it skips files still
being copied); this module is what the rest of the service asks of the result.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ModelKey = tuple[str, str]  # (name, version)


@dataclass(frozen=True)
class ModelInfo:
    """What the service needs to know of one checkpoint version without loading its weights."""

    name: str
    kind: str
    version: str
    input_dim: int
    card: dict[str, Any] = field(repr=False)
    path: Path | None = None  # the card's file
    weights_sha256: str = ""  # as verified when the directory was scanned ("" if not recorded)

    @property
    def config(self) -> dict[str, Any]:
        return dict(self.card.get("config", {}))

    @property
    def key(self) -> ModelKey:
        return (self.name, self.version)

    @property
    def created(self) -> str:
        return str(self.card.get("created", ""))


def numeric_version(version: str) -> tuple[int, ...]:
    """The parts of a dot-separated integer version ("1.10" -> (1, 10)); () for any other."""
    parts = version.split(".")
    if all(p.isascii() and p.isdigit() for p in parts):  # not "" (from "1..2"), "-1" or "²"
        return tuple(int(p) for p in parts)
    return ()


def version_order(info: ModelInfo) -> tuple[tuple[int, ...], str, str]:
    """Sort key of a model's versions, oldest first (see the module docstring for the rule)."""
    return (numeric_version(info.version), info.created, info.version)


def newest(infos: Iterable[ModelInfo]) -> ModelInfo | None:
    """The latest of some versions of one model, or None when there are none."""
    return max(infos, key=version_order, default=None)


@dataclass
class LoadedBy:
    """Which live workers report one model version loaded, and its kind (from their heartbeats)."""

    kind: str
    workers: list[str] = field(default_factory=list)


def loaded_versions(beats: Iterable[Mapping[str, Any]]) -> dict[ModelKey, LoadedBy]:
    """The versions live workers have loaded, from their heartbeats' ``loaded`` lists.

    A heartbeat without one (a worker from before versions) counts for no version.
    """
    out: dict[ModelKey, LoadedBy] = {}
    for beat in beats:
        for m in beat.get("loaded") or []:
            if isinstance(m, dict) and "name" in m and "version" in m:
                key = (str(m["name"]), str(m["version"]))
                out.setdefault(key, LoadedBy(str(m.get("kind", "")))).workers.append(str(beat.get("id", "")))
    return out


class Catalog(Mapping[str, ModelInfo]):
    """Every version of every model in the checkpoint directory, and which one new sessions get.

    As a mapping it is name -> the version new sessions get: the latest version in the
    directory that a live worker has loaded, or, when live workers report none of them (none
    has started yet), the latest in the directory, which a worker loads when it starts (or
    when the first job for it comes). A version in the directory that no worker has loaded
    while another one has is listed, never handed out.
    """

    def __init__(self, models: Iterable[ModelInfo] = (), loaded: Iterable[ModelKey] = ()) -> None:
        self._versions: dict[str, list[ModelInfo]] = {}
        self._loaded: frozenset[ModelKey] = frozenset()
        self._latest: dict[str, ModelInfo] = {}
        self.update(models, loaded)

    def update(
        self, models: Iterable[ModelInfo], loaded: Iterable[ModelKey] | None = None
    ) -> list[ModelInfo]:
        """Replace the directory's contents (and, if given, what workers have loaded); returns
        the versions that are new to this catalog."""
        before = {m.key for ms in self._versions.values() for m in ms}
        versions: dict[str, list[ModelInfo]] = {}
        for m in models:
            versions.setdefault(m.name, []).append(m)
        for ms in versions.values():
            ms.sort(key=version_order)
        self._versions = versions
        if loaded is not None:
            self._loaded = frozenset(loaded)
        self._latest = {}
        for name, ms in versions.items():
            served = [m for m in ms if m.key in self._loaded]
            self._latest[name] = (served or ms)[-1]
        return [m for ms in versions.values() for m in ms if m.key not in before]

    def versions(self, name: str) -> list[ModelInfo]:
        """The versions of ``name`` in the directory, oldest first ([] when it has none)."""
        return list(self._versions.get(name, []))

    def version(self, name: str, version: str) -> ModelInfo | None:
        return next((m for m in self._versions.get(name, []) if m.version == version), None)

    def all(self) -> list[ModelInfo]:
        """Every version of every model, by name, oldest version first."""
        return [m for name in sorted(self._versions) for m in self._versions[name]]

    def __getitem__(self, name: str) -> ModelInfo:
        return self._latest[name]

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._latest))

    def __len__(self) -> int:
        return len(self._latest)
