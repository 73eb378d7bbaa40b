"""Finding the complete checkpoint versions in a directory, without torch, while files arrive.

A version is complete when its card parses, its weights file is there with the sha256 its
card records (``files.sha256``, which `save_checkpoint` always writes) and, for a worker on
the ONNX backend, its exported graphs are there with the hashes in the card, exported from
these weights. Anything less is a copy in progress, or a mistake: it is skipped, logged once
with the reason, and looked at again at the next scan. So files may be copied in any order;
a card without a recorded hash is taken as soon as its weights file exists, which is why the
card should be copied last. Hashes are cached on (size, mtime): a scan re-reads only files
that changed.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app import registry
from app.catalog import ModelInfo, ModelKey

log = logging.getLogger("memserve.checkpoints")


class Incomplete(Exception):
    """Why a card in the directory is not (yet) a usable checkpoint version."""

    def __init__(self, reason: str, key: ModelKey | None = None) -> None:
        super().__init__(reason)
        self.key = key


@dataclass(frozen=True)
class _Hashed:
    size: int
    mtime_ns: int
    sha256: str


class CheckpointScanner:
    """Scans one checkpoint directory, again and again, for its complete versions."""

    def __init__(self, directory: Path, require_onnx: bool = False) -> None:
        self.directory = Path(directory)
        self.require_onnx = require_onnx
        self.skipped: dict[ModelKey, str] = {}  # versions seen at the last scan but not complete
        self._logged: dict[str, str] = {}  # card file name -> the reason last logged for it
        self._hashes: dict[Path, _Hashed] = {}

    def scan(self) -> list[ModelInfo]:
        """Every complete version in the directory (the first card of a duplicated version)."""
        found: dict[ModelKey, ModelInfo] = {}
        reasons: dict[str, str] = {}
        self.skipped = {}
        for card_path in sorted(self.directory.glob("*.json")):
            try:
                info = self._check(card_path)
                if (first := found.get(info.key)) is not None:
                    where = first.path.name if first.path else "another card"
                    raise Incomplete(f"the same name and version as {where}: ignored")
            except Incomplete as e:
                reasons[card_path.name] = str(e)
                if e.key is not None:
                    self.skipped[e.key] = str(e)
                continue
            found[info.key] = info
        self._log(reasons, {m.path.name for m in found.values() if m.path is not None})
        return list(found.values())

    def _log(self, reasons: dict[str, str], complete: set[str]) -> None:
        # Once per card and reason: a copy in progress would otherwise log at every scan.
        for name, reason in reasons.items():
            if self._logged.get(name) != reason:
                log.warning("checkpoint %s skipped: %s (looked at again at the next scan)", name, reason)
        for name in self._logged.keys() - reasons.keys():
            if name in complete:
                log.info("checkpoint %s is complete now", name)
        self._logged = reasons
        self._hashes = {p: h for p, h in self._hashes.items() if p.exists()}

    def _check(self, card_path: Path) -> ModelInfo:
        try:
            card = json.loads(card_path.read_text())
        except (OSError, ValueError) as e:
            raise Incomplete(f"unreadable card ({e})") from None
        if not isinstance(card, dict) or "kind" not in card:
            raise Incomplete("not a model card (no kind)")
        name, version = str(card.get("name") or card_path.stem), str(card.get("version", "1"))
        key = (name, version)
        try:
            files = card.get("files") or {}
            weights = card_path.parent / str(files.get("weights") or f"{card_path.stem}.safetensors")
            digest = self._sha256(weights)
            if digest is None:
                raise Incomplete(f"weights file {weights.name} is missing", key)
            if files.get("sha256") and digest != files["sha256"]:
                raise Incomplete(f"{weights.name} does not match the sha256 in its card", key)
            if self.require_onnx and _exported(str(card["kind"])):
                self._check_graphs(card, card_path, key)
            cfg = card.get("config") or {}
            input_dim = int(card.get("input_dim") or cfg.get("input_dim", 1))
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            raise Incomplete(f"unusable card ({type(e).__name__}: {e})", key) from None
        return ModelInfo(name, str(card["kind"]), version, input_dim, card, card_path, digest)

    def _check_graphs(self, card: dict[str, Any], card_path: Path, key: ModelKey) -> None:
        """The checks of `models.export.graph_paths`, here without torch and with cached hashes."""
        fix = f"run `memserve export --model {card_path.stem} --dir {card_path.parent}`"
        onnx = card.get("onnx")
        if not onnx:
            raise Incomplete(f"no ONNX graphs: {fix}", key)
        if onnx.get("weights_sha256") != (card.get("files") or {}).get("sha256"):
            raise Incomplete(f"its ONNX graphs were exported from other weights: {fix}", key)
        for graph in onnx["graphs"].values():
            path = card_path.parent / graph["file"]
            digest = self._sha256(path)
            if digest is None:
                raise Incomplete(f"ONNX graph {graph['file']} is missing", key)
            if digest != graph["sha256"]:
                raise Incomplete(f"ONNX graph {graph['file']} does not match the sha256 in its card", key)

    def _sha256(self, path: Path) -> str | None:
        """The file's sha256 (None when it does not exist), re-read only when it changed."""
        try:
            st = path.stat()
        except FileNotFoundError:
            return None
        cached = self._hashes.get(path)
        if cached is not None and (cached.size, cached.mtime_ns) == (st.st_size, st.st_mtime_ns):
            return cached.sha256
        h = hashlib.sha256()
        with path.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        self._hashes[path] = _Hashed(st.st_size, st.st_mtime_ns, h.hexdigest())
        return h.hexdigest()


def _exported(kind: str) -> bool:
    """Whether checkpoints of ``kind`` carry ONNX graphs: a served kind's, unless it says not."""
    served = registry.get(kind)
    return served is not None and served.exported
