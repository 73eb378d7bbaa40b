"""VMA's worker half: a loaded checkpoint served on the worker's backend, and its runner."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import redis

from app.catalog import ModelKey
from app.config import Settings
from app.kinds.vma.bf16 import Bf16Decoding
from app.kinds.vma.memory import VMAEngine
from app.kinds.vma.requests import MAX_SAMPLES
from app.kinds.vma.runner import VmaRunner
from app.kinds.vma.served import PIX_FLOATS, ServedVMA, VmaCosts
from app.store.keys import Keys
from app.worker.backends import Backend
from app.worker.budget import WorkBudget
from models.vma import VMA

log = logging.getLogger("memserve.worker")


def serve(model: VMA, card: dict[str, Any], card_dir: Path, backend: Backend) -> ServedVMA:
    """Wrap a loaded checkpoint for the runner, on the torch module or on its exported graphs."""
    costs = VmaCosts.measure(model.eval())
    engine: VMAEngine
    precision = {"query_embedding": "fp32", "decoder": "fp32"}
    if backend.name == "torch":
        engine = model.to(backend.device)
    else:
        from app.kinds.vma.onnx import OnnxVMA  # onnxruntime only for workers that run it

        paths, placement = backend.graphs(card, card_dir)
        engine = OnnxVMA(model, paths, placement, backend.threads, backend.int8_query())
        precision["query_embedding"] = "int8" if engine.query_graph.endswith("_int8") else "fp32"
        if backend.int8_query() and precision["query_embedding"] == "fp32":
            log.warning(
                "MEMSERVE_QUERY_EMBEDDING=int8, but %s has no int8 graph (exported before it): float32 "
                "runs; `memserve export --model %s` writes it", card.get("name"), card.get("name"),
            )  # fmt: skip
    if backend.bf16_decoder():
        engine = Bf16Decoding(engine, model)
        precision["decoder"] = "bf16"
    return ServedVMA(engine, card, backend.device, costs, precision, backend.on_gpu())


def runner(
    r: redis.Redis, keys: Keys, models: dict[ModelKey, ServedVMA], settings: Settings,
    latest: dict[str, ModelKey], budget: WorkBudget,
) -> VmaRunner:  # fmt: skip
    """The runner of every loaded VMA version, with its memory cache; the budget must hold one
    drawing classified at the most samples a request may ask, with each model loaded at start."""
    for (name, version), served in models.items():
        what = f"one drawing at samples {MAX_SAMPLES} with {name} {version}"
        budget.require(MAX_SAMPLES * (served.costs.decoder_eval + PIX_FLOATS * 4), what)
    return VmaRunner(
        r, keys, models, settings.reply_ttl_s, settings.max_deliveries,
        cache_bytes=settings.memory_cache_mb << 20, latest=latest, budget=budget,
        split=settings.vma_split_batch,
    )  # fmt: skip
