"""The model kinds the service serves: one line per kind, one folder per kind (`app/kinds/<kind>/`).

A kind's folder holds all that the kind is. Its torch-free half (``requests``, ``wire``,
``replies``, ``sessions``, ``routes``) is what API processes load; its worker half (``worker``:
the runner and its engines per backend) is what workers load. Both are named here by module path
and imported only when asked for, so the API never loads a worker half, a worker never loads the
routes, and the service's own layers (api/, worker/) import no kind: a kind plugs into them.

Adding a kind: a folder with ``sessions.py`` (``rules``: its `SessionRules`), ``routes.py``
(``routers``: the kind's FastAPI routers) and ``worker.py`` (``serve``, ``runner``), then one
`Kind` line below, or ``MEMSERVE_EXTRA_KINDS`` naming it (`register_extra`) for a kind that lives
outside the service (tests/kinds/movavg is one). A ``backup.py`` (``rules``: its `BackupRules`)
is optional: without it the kind's sessions cannot be exported or imported.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from types import ModuleType
from typing import TYPE_CHECKING, Any, Literal

from app.config import SettingsError

if TYPE_CHECKING:
    from app.catalog import ModelInfo
    from app.config import Settings
    from app.store.backup import SessionDoc


@dataclass(frozen=True)
class CapacityDoc:
    """What the served OpenAPI document says of a kind's session capacity."""

    schema: dict[str, Any] = field(hash=False)  # the capacities a session of the kind may ask for
    most: int  # the largest of them
    text: str  # a sentence for the field's description


@dataclass(frozen=True)
class SessionRules:
    """How the API makes a session of a kind: the kind's ``sessions.rules`` (torch-free).

    ``default_model`` names the model a session gets when it names none (None, or a model not in
    the catalog: any model of the kind); ``capacity`` is the session's capacity from its model and
    the capacity asked for (InvalidRequest when it may not have it); ``capacity_doc`` documents
    that rule for the kind's models; ``progress`` is the session count a listing reports.
    """

    default_model: Callable[[Settings], str | None]
    capacity: Callable[[Settings, ModelInfo, int | None], int]
    capacity_doc: Callable[[Settings, Sequence[ModelInfo]], CapacityDoc]
    progress: Literal["step", "exemplars"] = "step"


@dataclass(frozen=True)
class BackupRules:
    """What a kind's sessions put in a backup document, and how an imported one is checked: the
    kind's ``backup.rules`` (torch-free; app.store.backup has the format).

    ``sections`` names the session keys of the kind a document carries (``Keys.session_keys``'s
    names, in that order: "state", "ex"); the ``meta`` section is the service's and comes first
    for every kind. ``check(doc, info, max_capacity)`` raises a 4xx MemserveError unless `doc`,
    whose model, kind, version, TTL and input_dim are already checked, fits model `info` as it is
    loaded here; ``max_capacity`` is the largest capacity a session may ask for
    (``MEMSERVE_MAX_VMA_CAPACITY``; a kind whose models fix the capacity ignores it).
    """

    sections: tuple[str, ...]
    check: Callable[[SessionDoc, ModelInfo, int], None]


@dataclass(frozen=True)
class Kind:
    """A model kind: its name (in cards, sessions, stream keys and metrics) and its package."""

    name: str
    package: str
    exported: bool = True  # its checkpoints carry ONNX graphs, which the onnx backend checks

    def api(self) -> ModuleType:
        """The torch-free half the API serves: ``routers``."""
        return importlib.import_module(f"{self.package}.routes")

    def sessions(self) -> SessionRules:
        """How the API makes sessions of this kind (torch-free)."""
        rules: SessionRules = importlib.import_module(f"{self.package}.sessions").rules
        return rules

    def backup(self) -> BackupRules | None:
        """What of this kind's sessions a backup holds (torch-free); None when the kind has no
        ``backup`` module, so that its sessions cannot be exported or imported."""
        module = f"{self.package}.backup"
        try:
            rules: BackupRules = importlib.import_module(module).rules
        except ModuleNotFoundError as e:
            if e.name != module:  # the module exists but imports something missing: a real error
                raise
            return None
        return rules

    def worker(self) -> ModuleType:
        """The worker half: ``serve(model, card, card_dir, backend)`` and ``runner(...)``.

        Importing it is what makes a worker able to load the kind's checkpoints: a kind whose
        model class `models.checkpoint` does not list registers it there on import."""
        return importlib.import_module(f"{self.package}.worker")


_KINDS: dict[str, Kind] = {
    k.name: k
    for k in (
        Kind("memnet", "app.kinds.memnet"),
        Kind("vma", "app.kinds.vma"),
    )
}


def names() -> tuple[str, ...]:
    """Every served kind, in the order their routes and streams are set up."""
    return tuple(_KINDS)


def kinds() -> tuple[Kind, ...]:
    return tuple(_KINDS.values())


def get(name: str) -> Kind | None:
    return _KINDS.get(name)


def register(kind: Kind) -> None:
    """Serve one more kind in this process (API and worker processes must both register it)."""
    _KINDS[kind.name] = kind


def unregister(name: str) -> None:
    """Stop listing a kind in this process (one that served it for a while: a test's)."""
    _KINDS.pop(name, None)


def register_extra(spec: str) -> list[Kind]:
    """Register the kinds ``MEMSERVE_EXTRA_KINDS`` names: comma-separated ``name=package``, each
    package a kind's folder importable by the process (no ONNX graphs expected); the kinds."""
    added = []
    for item in filter(None, (part.strip() for part in spec.split(","))):
        name, sep, package = (s.strip() for s in item.partition("="))
        if not sep or not name or not package:
            raise SettingsError(f"MEMSERVE_EXTRA_KINDS: {item!r} is not name=package")
        kind = Kind(name, package, exported=False)
        register(kind)
        added.append(kind)
    return added
