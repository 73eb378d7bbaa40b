"""The layering DESIGN.md fixes: the API never imports torch; models never import the app."""

from __future__ import annotations

import subprocess
import sys

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
