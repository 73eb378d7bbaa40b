"""Synthetic pen-stroke characters: drawings to benchmark, test and calibrate with when no
dataset is at hand (`memserve bench vma` without Omniglot, `memserve export`'s int8 ranges)."""

from __future__ import annotations

import numpy as np

from models.data.omniglot import IMAGE_SIZE


def _render(strokes: np.ndarray) -> np.ndarray:
    """Polylines (strokes, knots, 2) in pixel coordinates -> (S, S) uint8 drawing, 2 px thick."""
    t = np.linspace(0.0, 1.0, 16)[:, None]
    a, b = strokes[:, :-1, None, :], strokes[:, 1:, None, :]  # (strokes, knots - 1, 1, 2)
    points = (a + (b - a) * t).reshape(-1, 2)  # (strokes, knots - 1, 16, 2) -> (P, 2)
    yx = np.clip(np.rint(points).astype(np.int64), 0, IMAGE_SIZE - 2)
    img = np.zeros((IMAGE_SIZE, IMAGE_SIZE), np.uint8)
    for dy, dx in ((0, 0), (0, 1), (1, 0), (1, 1)):
        img[yx[:, 0] + dy, yx[:, 1] + dx] = 1
    return img


def synthetic_drawings(n_chars: int, n_drawings: int, seed: int = 0) -> np.ndarray:
    """(n_chars, n_drawings, S, S) uint8 in {0, 1}: each character is 2-4 random strokes; its
    drawings jitter the stroke knots and shift the whole, like different people drawing it."""
    rng = np.random.default_rng(seed)
    out = np.zeros((n_chars, n_drawings, IMAGE_SIZE, IMAGE_SIZE), np.uint8)
    for c in range(n_chars):
        proto = rng.uniform(4.0, IMAGE_SIZE - 6.0, size=(int(rng.integers(2, 5)), 3, 2))
        for d in range(n_drawings):
            out[c, d] = _render(proto + rng.normal(0.0, 0.8, proto.shape) + rng.integers(-1, 2, size=2))
    return out
