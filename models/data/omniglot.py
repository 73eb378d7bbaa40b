"""Omniglot 28x28 (``omniglot/images_{background,evaluation}_28x28.npz``) and few-shot episodes.

Each npz key is one character, ``images_<set>/<Alphabet>/characterNN``, holding a uint8 (20, 784)
array with background 255. ``load_omniglot`` inverts it so ink = 1 and returns a float32 array
(n_characters, 20, 28, 28) in {0, 1} plus the keys. Training uses the background alphabets only;
the evaluation alphabets are never trained on.

Validation during training holds out whole characters of the background set
(``split_characters``), so the held-out numbers measure what serving needs: drawings of
characters the model never saw.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from models.data.timeseries import default_data_dir

SETS = ("background", "evaluation")
IMAGE_SIZE = 28
DRAWERS = 20


def omniglot_path(which: str, data: str | Path | None = None) -> Path:
    """The npz of set ``which``; ``data``: the data folder (holding omniglot/), omniglot/ or the file."""
    assert which in SETS, f"which must be one of {SETS}"
    base = Path(data) if data is not None else default_data_dir()
    name = f"images_{which}_28x28.npz"
    for candidate in (base, base / name, base / "omniglot" / name):
        if candidate.is_file() and candidate.name == name:
            return candidate
    raise FileNotFoundError(
        f"Omniglot file {name} not found under {base} (pass --data PATH or set MEMSERVE_DATA_DIR)"
    )


def load_omniglot(which: str, data: str | Path | None = None) -> tuple[np.ndarray, list[str]]:
    """(n_characters, 20, 28, 28) float32 with ink = 1, and the character keys, sorted by key."""
    with np.load(omniglot_path(which, data)) as z:
        keys = sorted(z.files)
        raw = np.stack([z[k] for k in keys])  # (C, 20, 784) uint8, background 255
    assert raw.shape[1:] == (DRAWERS, IMAGE_SIZE * IMAGE_SIZE), f"unexpected Omniglot shape {raw.shape}"
    images = (raw < 128).astype(np.float32)  # invert: ink = 1
    return images.reshape(len(keys), DRAWERS, IMAGE_SIZE, IMAGE_SIZE), keys  # (C, 20, 784) -> (C, 20, S, S)


def alphabet_of(key: str) -> str:
    return key.split("/")[-2]


def split_characters(keys: list[str], val_frac: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Indices of training and held-out characters; a fixed random share of each alphabet is held out."""
    rng = np.random.default_rng(seed)
    train, val = [], []
    by_alphabet: dict[str, list[int]] = {}
    for i, k in enumerate(keys):
        by_alphabet.setdefault(alphabet_of(k), []).append(i)
    for idx in by_alphabet.values():
        idx = list(rng.permutation(idx))
        n_val = round(val_frac * len(idx))
        val += idx[:n_val]
        train += idx[n_val:]
    return np.array(sorted(train)), np.array(sorted(val))


def with_rotations(images: np.ndarray) -> np.ndarray:
    """(C, 20, S, S) -> (4 C, 20, S, S): each character rotated by 0, 90, 180 and 270 degrees is a class."""
    return np.concatenate([np.rot90(images, r, axes=(2, 3)) for r in range(4)]).copy()


@dataclass
class Episode:
    """One few-shot problem: a memory of labelled drawings and queries of the same classes."""

    memory: np.ndarray  # (n_way * shots, S, S)
    memory_labels: np.ndarray  # (n_way * shots,) in [0, n_way)
    queries: np.ndarray  # (n_way * n_query, S, S)
    query_labels: np.ndarray  # (n_way * n_query,)
    classes: np.ndarray  # (n_way,) character indices


def sample_episode(
    images: np.ndarray, rng: np.random.Generator, n_way: int, shots: int, n_query: int
) -> Episode:
    """n_way characters, ``shots`` drawings of each in memory and ``n_query`` other drawings as queries."""
    n_chars, n_drawers = images.shape[:2]
    assert n_way <= n_chars, f"{n_way}-way needs at least {n_way} characters, have {n_chars}"
    assert shots + n_query <= n_drawers, f"{shots} shots + {n_query} queries exceed {n_drawers} drawings"
    classes = rng.choice(n_chars, n_way, replace=False)
    drawers = np.stack([rng.permutation(n_drawers)[: shots + n_query] for _ in classes])  # (n_way, s+q)
    picked = images[classes[:, None], drawers]  # (n_way, shots + n_query, S, S)
    s = images.shape[-1]
    labels = np.arange(n_way)
    return Episode(
        memory=picked[:, :shots].reshape(-1, s, s),  # (n_way, shots, S, S) -> (n_way shots, S, S)
        memory_labels=np.repeat(labels, shots),
        queries=picked[:, shots:].reshape(-1, s, s),  # (n_way, n_query, S, S) -> (n_way n_query, S, S)
        query_labels=np.repeat(labels, n_query),
        classes=classes,
    )
