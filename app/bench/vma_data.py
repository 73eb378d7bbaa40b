"""Drawings, memory plans and request bodies of ``memserve bench vma``.

Drawings come from the Omniglot evaluation set when it is found, otherwise they are
synthetic random-stroke characters; a plan says which drawings fill which session, and
queries are always other drawings of the characters in memory.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import orjson

from app.bench.stream import log
from models.data.omniglot import DRAWERS, IMAGE_SIZE, load_omniglot
from models.data.strokes import synthetic_drawings

FILL_CHUNK = 256  # the API's limit of exemplars per request
SYNTHETIC_CHARACTERS = 659  # as many as the Omniglot evaluation set
PACKED_PIXEL_BYTES = IMAGE_SIZE * IMAGE_SIZE // 8  # 98: one bit per pixel
NUMPY_JSON = orjson.OPT_SERIALIZE_NUMPY

__all__ = [
    "classify_body", "exemplar_bodies", "load_drawings", "memory_plan", "query_plan",
    "sample_bodies", "synthetic_drawings",
]  # fmt: skip


def load_drawings(data: str | None, synthetic: bool, seed: int) -> tuple[np.ndarray, str]:
    """(C, D, S, S) uint8 drawings and where they came from; Omniglot evaluation if found."""
    if not synthetic:
        try:
            images, _ = load_omniglot("evaluation", data)
            return (images > 0.5).astype(np.uint8), f"omniglot evaluation ({len(images)} characters)"
        except FileNotFoundError as exc:
            if data is not None:
                raise
            log(f"{exc}; using synthetic drawings")
    return synthetic_drawings(SYNTHETIC_CHARACTERS, DRAWERS, seed), "synthetic strokes"


def memory_plan(n_chars: int, n_drawings: int, memory: int, shots: int, offset: int) -> np.ndarray:
    """(memory, 2) (character, drawing) pairs filling one session.

    ceil(memory / shots) consecutive characters from ``offset`` (wrapping), dealt round-robin
    so the first drawings of every character go in first; later drawings stay for queries.
    """
    n = min(math.ceil(memory / shots), n_chars)
    if math.ceil(memory / n) >= n_drawings:
        raise ValueError(f"|M|={memory} needs more than {n_chars} x {n_drawings - 1} drawings")
    i = np.arange(memory)
    return np.stack([(offset + i % n) % n_chars, i // n], axis=1)


def query_plan(plan: np.ndarray, n_drawings: int, count: int, rng: np.random.Generator) -> np.ndarray:
    """``count`` (character, drawing) queries: characters of ``plan``, drawings not in memory."""
    chars = np.unique(plan[:, 0])
    first_free = int(plan[:, 1].max()) + 1
    return np.stack([rng.choice(chars, count), rng.integers(first_free, n_drawings, count)], axis=1)


def exemplar_bodies(images: np.ndarray, plan: np.ndarray) -> Iterator[tuple[bytes, int]]:
    """POST .../exemplars bodies of at most FILL_CHUNK exemplars, with how many each holds."""
    for start in range(0, len(plan), FILL_CHUNK):
        part = plan[start : start + FILL_CHUNK]
        items = [{"pixels": images[c, d], "label": str(c)} for c, d in part.tolist()]
        yield orjson.dumps({"exemplars": items}, option=NUMPY_JSON), len(part)


def classify_body(images: np.ndarray, queries: np.ndarray, method: str, samples: int | None = None) -> bytes:
    """A /classify body; pixels go as 0/1 integers, the most compact JSON form."""
    items = [{"pixels": images[c, d]} for c, d in queries.tolist()]
    body: dict = {"images": items, "method": method}
    if samples is not None:
        body["samples"] = samples
    return orjson.dumps(body, option=NUMPY_JSON)


def sample_bodies(n: int, fmt: str, labels: list[str], anchor: float | None = None) -> tuple[bytes, ...]:
    """/samples bodies alternating a draw from the whole memory with one restricted to a label;
    ``anchor`` None leaves it to the model's card."""
    base: dict = {"n": n, "format": fmt} if anchor is None else {"n": n, "format": fmt, "anchor": anchor}
    free = orjson.dumps(base)
    return tuple(b for label in labels for b in (free, orjson.dumps({**base, "label": label})))
