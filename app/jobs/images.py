"""Client images -> binary 28x28 drawings, the way the training data looks (ink = 1).

A drawing comes as a base64 PNG of any size, grey or colour (with or without alpha), or as
a 28x28 array of numbers in [0, 1] (1 = ink). PNGs are flattened onto white, made grey,
and their ink found relative to the background: the background is the colour of the
border, so dark ink on light paper and light ink on a dark screen both work. The ink map is
padded to a square (keeping the aspect ratio), box-filtered down to 28x28 and thresholded
at 0.4. Omniglot's 28x28 set was made by downscaling 105x105 drawings: its test drawings,
upscaled to 105x105 (bilinear) and decoded here, come back 99.98% pixel-identical at 0.4
(100% at 0.5, 99.6% at 0.3); 0.4 rather than 0.5 keeps thin pen strokes that straddle two
output pixels.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import io
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from app.errors import InvalidImage, PayloadTooLarge
from app.store.exemplars import IMAGE_SIZE

MAX_PNG_PIXELS = 4096 * 4096  # larger images are refused before they are decoded
MAX_REQUEST_PIXELS = 2 * MAX_PNG_PIXELS  # all the images of one request, checked before any is decoded
DECODE_THREADS = 2  # concurrent decodes per API process; more requests wait their turn
_pool: ThreadPoolExecutor | None = None
INK_THRESHOLD = 0.4  # of the box-filtered ink map
BINARY_THRESHOLD = 0.5  # of client pixel arrays


def _unbase64(b64: str, where: str) -> bytes:
    try:
        return base64.b64decode(b64, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidImage(f"{where}: image is not valid base64", at=where) from None


def decode_png(b64: str, where: str) -> np.ndarray:
    """A base64 PNG -> (28, 28) uint8 in {0, 1}; InvalidImage says what is wrong and where."""
    return _decode_png_bytes(_unbase64(b64, where), where)


def _decode_png_bytes(raw: bytes, where: str) -> np.ndarray:
    try:
        with Image.open(io.BytesIO(raw), formats=["PNG"]) as img:
            if img.width * img.height > MAX_PNG_PIXELS:
                size = f"{img.width}x{img.height}"
                raise InvalidImage(f"{where}: image of {size} pixels is too large", at=where)
            img.load()
            grey = _flatten(img)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        raise InvalidImage(f"{where}: image is not a decodable PNG", at=where) from None
    return _to_binary(grey)


def _flatten(img: Image.Image) -> np.ndarray:
    """Any PNG mode -> grey float32 in [0, 1], transparent parts white."""
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(white, rgba)
    return np.asarray(img.convert("L"), dtype=np.float32) / 255.0


def _to_binary(grey: np.ndarray) -> np.ndarray:
    border = np.concatenate([grey[0], grey[-1], grey[:, 0], grey[:, -1]])
    background = float(np.median(border))
    ink = np.abs(grey - background)  # distance from the background colour
    if ink.max() > 0:
        ink = ink / ink.max()
    h, w = ink.shape
    side = max(h, w)
    square = np.zeros((side, side), dtype=np.float32)
    top, left = (side - h) // 2, (side - w) // 2
    square[top : top + h, left : left + w] = ink
    small = Image.fromarray(square, mode="F").resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BOX)
    return (np.asarray(small) > INK_THRESHOLD).astype(np.uint8)


def decode_pixels(pixels: Any, where: str) -> np.ndarray:
    """A 28x28 array of numbers in [0, 1] -> (28, 28) uint8 in {0, 1} (ink where >= 0.5)."""
    try:
        arr = np.asarray(pixels, dtype=np.float64)
    except (TypeError, ValueError):
        raise InvalidImage(f"{where}: pixels must be a 28 x 28 array of numbers", at=where) from None
    if arr.shape != (IMAGE_SIZE, IMAGE_SIZE):
        raise InvalidImage(
            f"{where}: pixels must be a 28 x 28 array, got shape {list(arr.shape)}",
            at=where, shape=list(arr.shape),
        )  # fmt: skip
    if not np.isfinite(arr).all() or arr.min() < 0 or arr.max() > 1:
        raise InvalidImage(f"{where}: pixel values must be finite numbers in [0, 1]", at=where)
    return (arr >= BINARY_THRESHOLD).astype(np.uint8)


def decode_item(image: str | None, pixels: Any, where: str) -> np.ndarray:
    """Exactly one of a base64 PNG or a pixel array -> (28, 28) uint8 in {0, 1}."""
    if (image is None) == (pixels is None):
        raise InvalidImage(f"{where}: give exactly one of 'image' (base64 PNG) or 'pixels'", at=where)
    return decode_png(image, where) if image is not None else decode_pixels(pixels, where)


def _png_pixels(raw: bytes) -> int:
    """Width x height from a PNG's header, without decoding it (0 when unreadable: the decode
    that follows reports what is wrong with it)."""
    try:
        with Image.open(io.BytesIO(raw), formats=["PNG"]) as img:
            return int(img.width * img.height)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        return 0


def _raw_or_none(image: str | None) -> bytes | None:
    """The PNG bytes of a base64 image; None for no image or invalid base64 (reported later)."""
    if image is None:
        return None
    try:
        return base64.b64decode(image, validate=True)
    except (binascii.Error, ValueError):
        return None


def _decode_all(items: list[tuple[str | None, Any]], prefix: str) -> np.ndarray:
    raws = [_raw_or_none(image) for image, _ in items]  # each base64 decoded once, budget and all
    total = sum(_png_pixels(raw) for raw in raws if raw is not None)
    if total > MAX_REQUEST_PIXELS:
        raise PayloadTooLarge(
            f"the request's images hold {total:,} pixels; at most {MAX_REQUEST_PIXELS:,} in one "
            "request: send them in several requests, or scale them down first (they become 28 x 28)",
            pixels=total, max_pixels=MAX_REQUEST_PIXELS,
        )  # fmt: skip
    out = []
    for i, ((image, pixels), raw) in enumerate(zip(items, raws, strict=True)):
        where = f"{prefix}[{i}]"
        if raw is None or pixels is not None:  # no PNG bytes: the checks of decode_item say why
            out.append(decode_item(image, pixels, where))
        else:
            out.append(_decode_png_bytes(raw, where))
    return np.stack(out)


async def decode_items(items: list[tuple[str | None, Any]], prefix: str) -> np.ndarray:
    """Decode a request's drawings -> (N, 28, 28) uint8, off the event loop.

    A large PNG takes seconds to decode; done on the event loop it stalls every other request
    of the API process, health checks included. So decoding runs in a small thread pool
    (Pillow and numpy release the GIL while they work), after the request's total pixel count
    has been checked from the PNG headers alone (413 above ``MAX_REQUEST_PIXELS``).
    """
    global _pool
    if _pool is None:
        _pool = ThreadPoolExecutor(max_workers=DECODE_THREADS, thread_name_prefix="decode")
    return await asyncio.get_running_loop().run_in_executor(_pool, _decode_all, items, prefix)


def encode_png(probs: np.ndarray) -> str:
    """(28, 28) ink probabilities -> base64 PNG, dark ink on white (how drawings are shown)."""
    grey = np.clip(np.rint(255.0 * (1.0 - probs)), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(grey, mode="L").save(buf, format="PNG", optimize=False)
    return base64.b64encode(buf.getvalue()).decode("ascii")
