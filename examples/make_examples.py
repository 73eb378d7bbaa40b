"""Make the example files in this folder: drawings for the few-shot (VMA) walk-through and a
monthly series for `memserve stream`. Deterministic: running it again writes the same files.

    python examples/make_examples.py            # into examples/
    python examples/make_examples.py --out DIR

Drawings: four made-up characters (alpha, beta, gamma, delta), each a few pen strokes given as
control points on a unit square. Every drawing of a character jitters them (a random small
rotation, scale, shear and shift, and a little noise per point), smooths them into curves
(Chaikin's corner cutting) and draws them with a round pen, binarised: 105 x 105 pixels, black
ink on white, like Omniglot's drawings. `<name>.png` and `<name>-2.png` are two drawings of each
character; `query.png` is a third drawing of alpha, to classify.

Series: `series.csv`, 300 months from 2000-01 (a date column and a value column): a level with
a linear trend, a yearly season, noise, and two spikes (months 150 and 240).
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

SIZE = 105  # Omniglot's drawings are 105 x 105
PEN = 3.2  # pen radius in pixels
HERE = Path(__file__).resolve().parent

# Each character: strokes, each a list of (x, y) control points, y downwards, in [0, 1].
CHARACTERS: dict[str, list[list[tuple[float, float]]]] = {
    "alpha": [
        [(0.85, 0.25), (0.66, 0.46), (0.46, 0.63), (0.27, 0.63), (0.18, 0.5), (0.27, 0.37),
         (0.46, 0.37), (0.66, 0.55), (0.86, 0.77)],
    ],
    "beta": [
        [(0.32, 0.92), (0.31, 0.4), (0.33, 0.2), (0.44, 0.11), (0.58, 0.13), (0.63, 0.27),
         (0.52, 0.41), (0.36, 0.45)],
        [(0.36, 0.45), (0.6, 0.49), (0.71, 0.63), (0.62, 0.78), (0.44, 0.8), (0.32, 0.7)],
    ],
    "gamma": [
        [(0.18, 0.22), (0.33, 0.24), (0.46, 0.45), (0.52, 0.66), (0.47, 0.86), (0.55, 0.88),
         (0.57, 0.7), (0.62, 0.45), (0.78, 0.2)],
    ],
    "delta": [
        [(0.7, 0.18), (0.5, 0.12), (0.36, 0.18), (0.4, 0.32), (0.6, 0.46), (0.7, 0.64),
         (0.6, 0.82), (0.4, 0.83), (0.29, 0.68), (0.36, 0.52), (0.6, 0.46)],
    ],
}  # fmt: skip


def chaikin(points: np.ndarray, rounds: int = 3) -> np.ndarray:
    """Smooth a polyline by corner cutting, keeping its end points."""
    for _ in range(rounds):
        a, b = points[:-1], points[1:]
        cut = np.empty((2 * len(a), 2))
        cut[0::2] = 0.75 * a + 0.25 * b
        cut[1::2] = 0.25 * a + 0.75 * b
        points = np.vstack([points[:1], cut, points[-1:]])
    return points


def draw(strokes: list[list[tuple[float, float]]], rng: np.random.Generator) -> Image.Image:
    """One drawing of a character: jittered, smoothed strokes, black ink on white, binary."""
    angle = math.radians(rng.uniform(-8, 8))
    scale = rng.uniform(0.9, 1.08)
    shear = rng.uniform(-0.12, 0.12)
    shift = rng.uniform(-0.04, 0.04, size=2)
    rot = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    affine = scale * rot @ np.array([[1.0, shear], [0.0, 1.0]])
    supersample = 4
    big = SIZE * supersample
    img = Image.new("L", (big, big), 255)
    pen = ImageDraw.Draw(img)
    r = PEN * supersample
    for stroke in strokes:
        pts = np.asarray(stroke) + rng.normal(0.0, 0.012, size=(len(stroke), 2))
        pts = (pts - 0.5) @ affine.T + 0.5 + shift
        curve = chaikin(pts) * (big - 1)
        for x, y in curve:  # a round pen: a disc at every point, and lines between them
            pen.ellipse((x - r, y - r, x + r, y + r), fill=0)
        pen.line([tuple(p) for p in curve], fill=0, width=int(2 * r))
    small = img.resize((SIZE, SIZE), Image.Resampling.BOX)
    return small.point(lambda v: 0 if v < 128 else 255)


def drawings(out: Path) -> list[Path]:
    written = []
    for i, (name, strokes) in enumerate(CHARACTERS.items()):
        rng = np.random.default_rng(1000 + i)
        for suffix in ("", "-2"):
            path = out / f"{name}{suffix}.png"
            draw(strokes, rng).save(path, optimize=True)
            written.append(path)
    query = out / "query.png"
    draw(CHARACTERS["alpha"], np.random.default_rng(2024)).save(query, optimize=True)
    return [*written, query]


def series(out: Path, months: int = 300) -> Path:
    rng = np.random.default_rng(7)
    t = np.arange(months)
    values = 120.0 + 0.12 * t + 9.0 * np.sin(2 * np.pi * t / 12) + 3.0 * np.cos(2 * np.pi * t / 6)
    values += rng.normal(0.0, 1.2, size=months)
    values[150] += 30.0  # two spikes
    values[240] -= 26.0
    path = out / "series.csv"
    lines = ["month,sales"]
    for i, v in enumerate(values):
        lines.append(f"{2000 + i // 12}-{i % 12 + 1:02d}-01,{v:.2f}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=HERE, help="folder to write into (default: examples/)")
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    for path in [*drawings(args.out), series(args.out)]:
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
