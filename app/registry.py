"""The model kinds the service serves: one line per kind, one folder per kind (`app/kinds/<kind>/`).

A kind's folder holds all that the kind is. Its torch-free half (``requests``, ``wire``,
``replies``, ``routes``) is what API processes load; its worker half (``worker``: the runner and
its engines per backend) is what workers load. Both are named here by module path and imported
only when asked for, so the API never loads a worker half, a worker never loads the routes, and
the service's own layers (api/, worker/) import no kind: a kind plugs into them.

Adding a kind: a folder with ``routes.py`` (``routers``: the kind's FastAPI routers) and
``worker.py`` (``load``, ``runner``), then one `Kind` line below (or `register` it).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType


@dataclass(frozen=True)
class Kind:
    """A model kind: its name (in cards, sessions, stream keys and metrics) and its package."""

    name: str
    package: str
    exported: bool = True  # its checkpoints carry ONNX graphs, which the onnx backend checks

    def api(self) -> ModuleType:
        """The torch-free half the API serves: ``routers``."""
        return importlib.import_module(f"{self.package}.routes")

    def worker(self) -> ModuleType:
        """The worker half: ``load(info, backend)`` and ``runner(...)``."""
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
