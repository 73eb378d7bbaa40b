"""Client drawings -> binary 28x28 drawings, the way the training data looks (ink = 1).

Inputs. A drawing comes as an encoded image (PNG, JPEG or WebP; plain base64 or a
``data:image/...;base64,`` URL) of any size, grey or colour, with or without alpha, or as a
28x28 array of numbers in [0, 1] (1 = ink, taken at >= 0.5 and used as is: it is already in
the training format). Other formats (GIF, BMP, SVG, ...) are refused, naming the accepted ones.

What ink is. Omniglot's drawings are dark strokes on white paper; users also send light
strokes on a dark screen, and strokes on a transparent canvas. So:

* transparent parts are the paper: the image is laid over white when its opaque pixels are
  mostly dark, over black when they are mostly light, so the strokes always show;
* the paper's colour is the median colour of the image's border, and ink is how far a pixel
  is from it (any colour, either polarity), relative to the strongest ink in the image;
  below ``NOISE_FLOOR`` of that is paper (JPEG ringing, scanner grain);
* an image whose darkest-to-lightest difference from the paper is under ``MIN_CONTRAST`` of
  the grey range has no ink.

Preprocessing, as the training drawings were made. Omniglot's 28x28 set was made by
downscaling 105x105 drawings. Its characters span 12 to 23 of the 28 pixels (5th to 95th
percentile), roughly centred, with strokes 1 to 2 pixels wide. The steps:

1. Frame: the image padded to a square (aspect kept, centred), as the sender framed it. When
   the ink would span less than ``MIN_FILL`` of that square (a small drawing on a large or
   wide canvas), the square is instead cut around the ink's bounding box, with a margin, so
   the ink spans ``MIN_FILL`` of it: no smaller than all but the smallest 5% of training
   drawings. Never smaller than 28x28, though: a drawing is not enlarged past its own pixels.
   A drawing that spans that much keeps the sender's framing.
2. Downscale with a box filter to 28x28 (each output pixel the mean of the source pixels
   whose centres fall in it, as Pillow's box filter). Strokes thinner than ``MIN_STROKE``
   output pixels (a fine pen on a large canvas) first have their ink scaled up to that width,
   so they survive as the thinnest training strokes do.
3. Threshold at ``INK_THRESHOLD``: 0.4 rather than 0.5 keeps thin strokes that straddle two
   output pixels.

Omniglot's evaluation drawings come back unchanged when sent at 28x28. Upscaled to 105x105
(bilinear) first, they come back 99.9% pixel-identical, apart from the 5.7% that span under
12 pixels, which step 1 enlarges.

A drawing with no ink left (blank, one colour, or marks too small for the image's size) is
refused (422 ``invalid-image``): stored, it would match every query alike.

Size limits. Image sizes are read from the headers before anything is decoded: a request's
images together hold at most ``MAX_REQUEST_PIXELS`` (413), one image at most
``MAX_IMAGE_PIXELS`` (422, "too large"). Pillow's own decompression-bomb check is not relied
on (it stops only far larger images, and without saying how large).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import io
import math
import struct
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
from PIL import Image, ImageFile, ImageOps, JpegImagePlugin, PngImagePlugin, WebPImagePlugin

from app.errors import InvalidImage, PayloadTooLarge
from app.store.exemplars import IMAGE_SIZE

# What Pillow raises on files it cannot make sense of.
_BROKEN = (OSError, SyntaxError, ValueError, EOFError, IndexError, KeyError, TypeError, struct.error)
MAX_IMAGE_PIXELS = 4096 * 4096  # larger images are refused before they are decoded
MAX_REQUEST_PIXELS = 2 * MAX_IMAGE_PIXELS  # all the images of one request, checked before any is decoded
DECODE_THREADS = 2  # concurrent decodes per API process; more requests wait their turn
_pool: ThreadPoolExecutor | None = None
INK_THRESHOLD = 0.4  # of the box-filtered ink map
BINARY_THRESHOLD = 0.5  # of client pixel arrays
MIN_CONTRAST = 0.1  # ink differs from the paper by at least this share of the grey range
NOISE_FLOOR = 0.2  # of the strongest ink: weaker is paper
STRONG_INK = 0.5  # of the strongest ink: what the bounding box and stroke width are measured on
MIN_FILL = 12 / 28  # the ink spans at least this share of the frame (Omniglot: 5th percentile)
MIN_STROKE = 1.0  # output pixels: Omniglot's thinnest strokes

ACCEPTED = "PNG, JPEG or WebP"
_MEDIA_TYPES = ("image/png", "image/jpeg", "image/jpg", "image/webp")
_NO_INK = "no ink after resizing to 28x28"
# Formats Pillow would read but the service does not take, named so the refusal can say what it got.
_OTHER_FORMATS = (
    (b"GIF8", "a GIF"), (b"BM", "a BMP"), (b"II*\x00", "a TIFF"), (b"MM\x00*", "a TIFF"),
    (b"%PDF", "a PDF"), (b"<svg", "an SVG"), (b"<?xml", "an XML (SVG?) document"),
    (b"\x00\x00\x01\x00", "an ICO"), (b"\xff\x0a", "a JPEG XL"), (b"\x00\x00\x00\x0cJXL ", "a JPEG XL"),
)  # fmt: skip


def _unbase64(image: str, where: str) -> bytes:
    """The bytes of a base64 image, bare or as a ``data:image/...;base64,`` URL."""
    if image[:5].lower() == "data:":
        head, comma, image = image.partition(",")
        params = [p.strip().lower() for p in head[5:].split(";")]
        if not comma or "base64" not in params[1:]:
            raise InvalidImage(f"{where}: a data: URL must be base64: 'data:image/png;base64,...'", at=where)
        if params[0] not in _MEDIA_TYPES:
            raise InvalidImage(
                f"{where}: a data: URL of type {params[0] or 'none'!r}: the image must be {ACCEPTED} "
                "(image/png, image/jpeg or image/webp)",
                at=where,
            )
    try:
        return base64.b64decode(image, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidImage(f"{where}: image is not valid base64", at=where) from None


def _image_class(raw: bytes) -> type[ImageFile.ImageFile] | None:
    """Pillow's reader for an accepted format, told by the file's first bytes; None for others."""
    if raw.startswith(b"\x89PNG\r\n\x1a\n"):
        return PngImagePlugin.PngImageFile
    if raw.startswith(b"\xff\xd8\xff"):
        return JpegImagePlugin.JpegImageFile
    if raw[:4] == b"RIFF" and raw[8:12] == b"WEBP":
        return WebPImagePlugin.WebPImageFile
    return None


def _open(raw: bytes, where: str) -> ImageFile.ImageFile:
    """The image's header read (nothing decoded yet); InvalidImage for other formats or junk.

    The format's reader is called directly rather than through ``Image.open``: that skips
    Pillow's decompression-bomb check, which would refuse a huge image without its size; the
    size is checked here instead (``_check_size``), before anything is decoded."""
    reader = _image_class(raw)
    if reader is None:
        got = next((name for magic, name in _OTHER_FORMATS if raw.lstrip()[: len(magic)] == magic), None)
        what = f"the image is {got}" if got else "the data is not an image"
        raise InvalidImage(f"{where}: {what}: it must be {ACCEPTED}", at=where)
    try:
        return reader(io.BytesIO(raw))
    except _BROKEN as e:
        raise InvalidImage(f"{where}: {_unreadable(reader, e)}", at=where) from None


def _unreadable(reader: type[ImageFile.ImageFile], e: Exception) -> str:
    kind = {"WEBP": "WebP"}.get(str(reader.format), str(reader.format))
    if isinstance(e, ValueError) and "too large" in str(e).lower():  # PNG text chunks that inflate hugely
        return f"the {kind} holds more compressed metadata than is safe to decode"
    return f"the image is not a decodable {kind} (truncated or corrupt)"


def _check_size(img: Image.Image, where: str) -> None:
    pixels = img.width * img.height
    if pixels > MAX_IMAGE_PIXELS:
        raise InvalidImage(
            f"{where}: image of {img.width}x{img.height} = {pixels:,} pixels is too large to decode safely; "
            f"at most {MAX_IMAGE_PIXELS:,} pixels per image: scale it down first (it becomes 28 x 28)",
            at=where, pixels=pixels, max_pixels=MAX_IMAGE_PIXELS,
        )  # fmt: skip


def decode_image(image: str, where: str) -> np.ndarray:
    """A base64 PNG, JPEG or WebP (bare or a data: URL) -> (28, 28) uint8 in {0, 1}.

    InvalidImage says what is wrong and where: not base64, another format, too large, corrupt,
    or no ink after preprocessing."""
    return _decode_bytes(_unbase64(image, where), where)


decode_png = decode_image  # its name before JPEG and WebP were taken


def _decode_bytes(raw: bytes, where: str) -> np.ndarray:
    with _open(raw, where) as img:
        _check_size(img, where)
        try:
            img.load()
            _upright(img)
            grey, alpha = _grey_and_alpha(img)
        except _BROKEN as e:
            raise InvalidImage(f"{where}: {_unreadable(type(img), e)}", at=where) from None
    return to_drawing(grey, where, alpha)


def _upright(img: Image.Image) -> None:
    """Turned as its EXIF orientation says (phone photos), as viewers show it."""
    with contextlib.suppress(Exception):  # broken metadata is no reason to refuse the drawing itself
        ImageOps.exif_transpose(img, in_place=True)


def _grey_and_alpha(img: Image.Image) -> tuple[np.ndarray, np.ndarray | None]:
    """Grey level and opacity as float32 in [0, 1]; opacity None where the image has none."""
    if img.mode == "I" or img.mode.startswith("I;16"):  # 16-bit PNG: "L" would clip it to white
        return np.clip(np.asarray(img, dtype=np.float32) / 65535.0, 0.0, 1.0), None
    if not img.has_transparency_data:
        return np.asarray(img.convert("L"), dtype=np.float32) / 255.0, None
    rgba = img.convert("RGBA")
    alpha = np.asarray(rgba.getchannel("A"), dtype=np.float32) / 255.0
    return np.asarray(rgba.convert("L"), dtype=np.float32) / 255.0, alpha


def to_drawing(grey: np.ndarray, where: str, alpha: np.ndarray | None = None) -> np.ndarray:
    """An image's grey levels (H, W) in [0, 1], and its opacity if any -> (28, 28) uint8 in {0, 1}.

    Finds the ink, frames it, downscales with a box filter and thresholds, as the module's
    docstring says; InvalidImage when no ink is left."""
    ink = _ink_map(_over_backdrop(grey, alpha), where)
    strong = ink >= STRONG_INK
    top, left, side = _frame(strong)
    cell = side / IMAGE_SIZE  # source pixels per output pixel
    coverage = _box(_box(ink, top, cell, axis=0), left, cell, axis=1)
    stroke = _stroke_width(strong) / cell  # in output pixels
    if stroke < MIN_STROKE:  # a fine pen on a large canvas: as wide as the thinnest training strokes
        coverage *= MIN_STROKE / stroke
    out = (coverage > INK_THRESHOLD).astype(np.uint8)
    if not out.any():
        raise InvalidImage(
            f"{where}: {_NO_INK}: its marks are too small or faint for the image's size", at=where
        )
    return out


def _over_backdrop(grey: np.ndarray, alpha: np.ndarray | None) -> np.ndarray:
    """Transparent parts become paper that the opaque strokes stand out from."""
    if alpha is None or alpha.min() >= 1.0:
        return grey
    opacity = float(alpha.sum())
    if opacity == 0.0:  # nothing opaque at all: blank
        return np.ones_like(grey)
    shade = float((grey * alpha).sum()) / opacity  # how light the opaque pixels are
    backdrop = 1.0 if shade < 0.5 else 0.0
    out: np.ndarray = grey * alpha + backdrop * (1.0 - alpha)
    return out


def _ink_map(grey: np.ndarray, where: str) -> np.ndarray:
    """Ink in [0, 1]: distance from the paper's colour (the border's), relative to the strongest."""
    border = np.concatenate([grey[0], grey[-1], grey[:, 0], grey[:, -1]])
    ink = np.abs(grey - np.float32(np.median(border)))
    contrast = float(ink.max())
    if contrast < MIN_CONTRAST:
        raise InvalidImage(f"{where}: {_NO_INK}: the image is blank (one colour)", at=where)
    ink /= contrast
    ink[ink < NOISE_FLOOR] = 0.0
    return ink


def _frame(strong: np.ndarray) -> tuple[int, int, int]:
    """(top, left, side): the square cut for the drawing, in image pixels (it may reach past the
    edges: that is blank paper)."""
    h, w = strong.shape
    rows, cols = np.flatnonzero(strong.any(axis=1)), np.flatnonzero(strong.any(axis=0))
    r0, r1, c0, c1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
    canvas = max(h, w)
    # never below IMAGE_SIZE: enlarging a drawing past its own pixels adds nothing but blocks
    side = min(canvas, max(IMAGE_SIZE, math.ceil(max(r1 - r0, c1 - c0) / MIN_FILL)))
    if side == canvas:  # the ink fills the sender's frame well enough: keep it
        return (h - side) // 2, (w - side) // 2, side
    return (r0 + r1 - side) // 2, (c0 + c1 - side) // 2, side


def _stroke_width(strong: np.ndarray) -> float:
    """Mean stroke width in pixels: twice the area over the perimeter (a long stroke's perimeter is
    twice its length). The perimeter is counted along rows and columns, which overstates it by
    4/pi on average over stroke directions; hence the pi/4."""
    edges = np.count_nonzero(strong[1:] != strong[:-1]) + np.count_nonzero(strong[:, 1:] != strong[:, :-1])
    edges += sum(np.count_nonzero(line) for line in (strong[0], strong[-1], strong[:, 0], strong[:, -1]))
    return 2.0 * np.count_nonzero(strong) / (edges * math.pi / 4.0)


def _box(a: np.ndarray, start: int, cell: float, axis: int) -> np.ndarray:
    """``a`` resampled along ``axis`` to IMAGE_SIZE pixels ``cell`` source pixels wide, from
    ``start`` (past the edges counts as 0), as Pillow's box filter does it: each output pixel is
    the mean of the source pixels whose centres fall in it, or when enlarging the source pixel
    under its centre.

    Done with sums between band edges rather than by padding to the frame and resizing: a wide
    image's square frame can hold many times the image's pixels."""
    a = np.moveaxis(a, axis, 0)
    n = a.shape[0]
    if cell < 1.0:
        under = np.floor(start + (np.arange(IMAGE_SIZE) + 0.5) * cell).astype(np.intp)
        inside = (under >= 0) & (under < n)
        out = np.zeros((IMAGE_SIZE, *a.shape[1:]), dtype=np.float64)
        out[inside] = a[under[inside]]
        return np.moveaxis(out, 0, axis)
    # the first source pixel of each band (and one past the last band)
    bounds = np.ceil(start + cell * np.arange(IMAGE_SIZE + 1) - 0.5).astype(np.intp)
    clipped = np.clip(bounds, 0, n)
    cuts = np.unique(np.concatenate([[0, n], clipped]))
    sums = np.add.reduceat(a, cuts[:-1], axis=0).astype(np.float64)  # between consecutive cuts
    upto = np.concatenate([np.zeros((1, *a.shape[1:])), np.cumsum(sums, axis=0)])  # sum of a[:cut]
    per_band = np.diff(upto[np.searchsorted(cuts, clipped)], axis=0)
    counts = np.diff(bounds).reshape(-1, *([1] * (a.ndim - 1)))
    return np.moveaxis(per_band / counts, 0, axis)


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
    out = (arr >= BINARY_THRESHOLD).astype(np.uint8)
    if not out.any():
        raise InvalidImage(f"{where}: no ink: no pixel is {BINARY_THRESHOLD} or more (1 = ink)", at=where)
    return out


def decode_item(image: str | None, pixels: Any, where: str) -> np.ndarray:
    """Exactly one of an encoded image or a pixel array -> (28, 28) uint8 in {0, 1}."""
    if (image is None) == (pixels is None):
        raise InvalidImage(f"{where}: give exactly one of 'image' ({ACCEPTED}, base64) or 'pixels'", at=where)
    return decode_image(image, where) if image is not None else decode_pixels(pixels, where)


def _header_pixels(raw: bytes) -> int:
    """Width x height from an image's header, without decoding it (0 when unreadable: the decode
    that follows reports what is wrong with it)."""
    reader = _image_class(raw)
    if reader is None:
        return 0
    try:
        with reader(io.BytesIO(raw)) as img:
            return int(img.width * img.height)
    except _BROKEN:
        return 0


def _raw_or_none(image: str | None) -> bytes | None:
    """The bytes of a base64 image; None for no image or a bad one (reported later, in order)."""
    if image is None:
        return None
    try:
        return _unbase64(image, "")
    except InvalidImage:
        return None


def _decode_all(items: list[tuple[str | None, Any]], prefix: str) -> np.ndarray:
    raws = [_raw_or_none(image) for image, _ in items]  # each base64 decoded once, budget and all
    total = sum(_header_pixels(raw) for raw in raws if raw is not None)
    if total > MAX_REQUEST_PIXELS:
        raise PayloadTooLarge(
            f"the request's images hold {total:,} pixels; at most {MAX_REQUEST_PIXELS:,} in one "
            "request: send them in several requests, or scale them down first (they become 28 x 28)",
            pixels=total, max_pixels=MAX_REQUEST_PIXELS,
        )  # fmt: skip
    out = []
    for i, ((image, pixels), raw) in enumerate(zip(items, raws, strict=True)):
        where = f"{prefix}[{i}]"
        if raw is None or pixels is not None:  # no image bytes: the checks of decode_item say why
            out.append(decode_item(image, pixels, where))
        else:
            out.append(_decode_bytes(raw, where))
    return np.stack(out)


# Requests of at most this many pixel arrays (no encoded images) decode on the event loop.
INLINE_ITEMS = 4


async def decode_items(items: list[tuple[str | None, Any]], prefix: str) -> np.ndarray:
    """Decode a request's drawings -> (N, 28, 28) uint8, off the event loop.

    A large image takes seconds to decode; done on the event loop it stalls every other request
    of the API process, health checks included. So decoding runs in a small thread pool
    (Pillow and numpy release the GIL while they work), after the request's total pixel count
    has been checked from the image headers alone (413 above ``MAX_REQUEST_PIXELS``). A request of
    a few pixel arrays, bounded by the body limit, decodes in place.
    """
    global _pool
    if len(items) <= INLINE_ITEMS and all(image is None for image, _ in items):
        return _decode_all(items, prefix)  # a few 28 x 28 arrays: less work than the thread hop
    if _pool is None:
        _pool = ThreadPoolExecutor(max_workers=DECODE_THREADS, thread_name_prefix="decode")
    return await asyncio.get_running_loop().run_in_executor(_pool, _decode_all, items, prefix)


def encode_png(probs: np.ndarray) -> str:
    """(28, 28) ink probabilities -> base64 PNG, dark ink on white (how drawings are shown)."""
    grey = np.clip(np.rint(255.0 * (1.0 - probs)), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(grey, mode="L").save(buf, format="PNG", optimize=False)
    return base64.b64encode(buf.getvalue()).decode("ascii")
