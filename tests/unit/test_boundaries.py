"""The layering docs/architecture.md describes: the API never imports torch; models never import
the app; a kind's torch-free half is all the API loads of it; routes stand alone; only the store
and the queue talk to Redis."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO


def _modules_after_import(module: str) -> set[str]:
    code = f"import sys, {module}; print('\\n'.join(sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    return set(out.stdout.split())


def test_the_api_does_not_import_torch() -> None:
    loaded = _modules_after_import("app.api.app")
    assert "torch" not in loaded and "models" not in loaded


def test_models_do_not_import_the_app() -> None:
    loaded = _modules_after_import("models.train, models.evaluate, models.checkpoint")
    assert not any(m == "app" or m.startswith("app.") for m in loaded)


def test_the_api_loads_only_the_torch_free_half_of_each_kind() -> None:
    loaded = _modules_after_import(
        "app.api.app, app.registry; [k.api() for k in app.registry.kinds()]; "
        + "import app.kinds.memnet.wire, app.kinds.memnet.replies, app.kinds.vma.wire, app.kinds.vma.replies"
    )
    assert "torch" not in loaded and "models" not in loaded
    worker_halves = {m for m in loaded if m.startswith("app.kinds.") and m.rsplit(".", 1)[1] in WORKER_HALF}
    assert not worker_halves


WORKER_HALF = {"worker", "runner", "engine", "onnx", "memory", "state", "dist"}


def _app_imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    out = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    out |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    return {m for m in out if m.startswith("app.")}


def test_routes_do_not_import_other_routes() -> None:
    routes = [*(REPO / "app/api/routes").glob("*.py"), *(REPO / "app/kinds").glob("*/routes.py")]
    for path in routes:
        others = {m for m in _app_imports(path) if m.startswith("app.api.routes") or m.endswith(".routes")}
        assert not others, f"{path.relative_to(REPO)} imports {others}"


def test_the_service_layers_find_kinds_only_through_the_registry() -> None:
    for layer in ("api", "worker", "queue", "store"):
        for path in (REPO / "app" / layer).rglob("*.py"):
            kinds = {m for m in _app_imports(path) if m.startswith("app.kinds")}
            assert not kinds, f"{path.relative_to(REPO)} imports {kinds}"


REDIS_HOMES = ("store", "queue")  # the store, and the queue's transport


def _redis_calls(path: Path) -> list[str]:
    """Calls that reach Redis directly: pipelines, scripts, and commands on a client named ``r``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
            continue
        owner = node.func.value
        on_client = (isinstance(owner, ast.Name) and owner.id == "r") or (
            isinstance(owner, ast.Attribute) and owner.attr == "r"
        )
        if node.func.attr in ("pipeline", "register_script") or (
            on_client and node.func.attr not in ("close", "aclose")
        ):
            found.append(f"line {node.lineno}: .{node.func.attr}(")
    return found


def test_only_the_store_and_the_queue_talk_to_redis() -> None:
    for path in (REPO / "app").rglob("*.py"):
        part = path.relative_to(REPO / "app").parts[0]
        if part in REDIS_HOMES or part == "bench":  # bench/ reads result rows named r
            continue
        calls = _redis_calls(path)
        assert not calls, f"{path.relative_to(REPO)} calls Redis directly: {calls}"
    for path in (REPO / "tests/kinds").rglob("*.py"):  # the example kind too
        assert not _redis_calls(path), f"{path.relative_to(REPO)} calls Redis directly"
