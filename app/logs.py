"""Logging set-up shared by the API, the workers and the CLI."""

from __future__ import annotations

import logging
import sys


def setup_logging(level: str = "INFO") -> None:
    """One line per record on stderr, with the process id (API and workers interleave)."""
    root = logging.getLogger()
    if getattr(root, "_memserve", False):
        root.setLevel(level.upper())
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s [%(process)d] %(name)s: %(message)s"))
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root._memserve = True  # type: ignore[attr-defined]
