"""Drawing preprocessing (app.kinds.vma.images): formats, ink, framing, thin strokes, blanks, size limits."""

from __future__ import annotations

import base64
import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image, ImageDraw

from app.errors import InvalidImage, PayloadTooLarge
from app.kinds.vma.images import (
    MAX_IMAGE_PIXELS,
    MAX_REQUEST_PIXELS,
    _decode_all,
    decode_image,
    decode_item,
    decode_pixels,
    to_drawing,
)
from tests.conftest import drawings, png_b64


def b64(img: Image.Image, fmt: str = "PNG", **save: object) -> str:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **save)
    return base64.b64encode(buf.getvalue()).decode()


def extent(out: np.ndarray) -> tuple[int, int]:
    """Height and width of the ink's bounding box."""
    rows, cols = np.flatnonzero(out.any(axis=1)), np.flatnonzero(out.any(axis=0))
    return int(rows[-1] - rows[0] + 1), int(cols[-1] - cols[0] + 1)


Colour = int | tuple[int, ...]


def sketch(
    size: tuple[int, int] = (280, 280), mode: str = "L", paper: Colour = 255, ink: Colour = 0
) -> Image.Image:
    """A character-like drawing: a slanted stroke through a ring, pen 4% of the canvas wide."""
    w, h = size
    img = Image.new(mode, size, paper)
    draw = ImageDraw.Draw(img)
    pen = max(1, round(0.04 * min(w, h)))
    draw.line([(0.25 * w, 0.8 * h), (0.75 * w, 0.2 * h)], fill=ink, width=pen)
    draw.ellipse([0.35 * w, 0.35 * h, 0.65 * w, 0.65 * h], outline=ink, width=pen)
    return img


@pytest.fixture(scope="module")
def reference() -> np.ndarray:
    return decode_image(b64(sketch()), "ref")


def test_wide_image_keeps_a_stroke_the_plain_downscale_loses() -> None:
    img = Image.new("L", (3000, 1000), 255)
    ImageDraw.Draw(img).line([(300, 500), (2700, 500)], fill=0, width=40)
    out = decode_image(b64(img), "w")
    # One unbroken line, across 2400/3000 of the width, 1 or 2 pixels thick, in the middle.
    height, width = extent(out)
    assert 1 <= height <= 2 and width >= 21, out
    assert out.any(axis=0).sum() == width and 12 <= int(np.flatnonzero(out.any(axis=1))[0]) <= 14
    # Padded to a square and box-filtered alone, the stroke fills at most 40/107 of a pixel: lost.
    square = Image.new("L", (3000, 3000), 255)
    square.paste(img, (0, 1000))
    plain = 1.0 - np.asarray(square.resize((28, 28), Image.Resampling.BOX), dtype=np.float32) / 255.0
    assert plain.max() < 0.4


def test_small_drawing_on_a_wide_canvas_is_cut_around_its_ink() -> None:
    img = Image.new("L", (3000, 1000), 255)
    draw = ImageDraw.Draw(img)
    draw.line([(1500, 100), (1500, 900)], fill=0, width=40)
    draw.line([(1300, 500), (1700, 500)], fill=0, width=40)
    out = decode_image(b64(img), "w")
    height, width = extent(out)
    # Padded to 3000x3000 the cross would span 7 pixels; cut around its ink it spans 12.
    assert height >= 12 and 5 <= width <= height, out
    assert out[:, 14].sum() >= 10  # the vertical stroke is whole, through the middle


def test_a_drawing_that_fills_its_canvas_keeps_its_frame() -> None:
    for img in drawings(6, seed=21):
        for scale in (1, 3, 5):
            np.testing.assert_array_equal(decode_image(png_b64(img, scale=scale), "x"), img)


@pytest.mark.parametrize(
    ("image", "fmt"),
    [
        (Image.new("L", (50, 50), 255), "PNG"),
        (Image.new("RGB", (640, 480), (30, 30, 30)), "PNG"),
        (Image.new("RGBA", (64, 64), (0, 0, 0, 0)), "PNG"),  # fully transparent
        (Image.new("RGBA", (64, 64), (0, 0, 0, 255)), "WEBP"),
        (Image.new("L", (64, 64), 250), "JPEG"),
    ],
)
def test_blank_images_are_refused_saying_why(image: Image.Image, fmt: str) -> None:
    with pytest.raises(InvalidImage) as e:
        decode_item(b64(image, fmt), None, "exemplars[2]")
    assert "exemplars[2]" in e.value.detail and "no ink after resizing to 28x28" in e.value.detail
    assert e.value.extra["at"] == "exemplars[2]"


def test_marks_too_small_for_the_canvas_are_refused() -> None:
    img = Image.new("L", (4000, 4000), 255)
    draw = ImageDraw.Draw(img)
    draw.rectangle([10, 10, 13, 13], fill=0)  # two specks at opposite corners
    draw.rectangle([3980, 3980, 3983, 3983], fill=0)
    with pytest.raises(InvalidImage, match="no ink after resizing to 28x28: its marks are too small"):
        decode_image(b64(img), "images[0]")


def test_blank_pixel_arrays_are_refused() -> None:
    with pytest.raises(InvalidImage, match=r"images\[1\]: no ink"):
        decode_pixels(np.full((28, 28), 0.49).tolist(), "images[1]")
    one = np.zeros((28, 28))
    one[3, 4] = 0.5
    assert decode_pixels(one.tolist(), "x").sum() == 1


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
def test_data_urls_are_taken(fmt: str, reference: np.ndarray) -> None:
    plain = b64(sketch(), fmt, **({"quality": 90} if fmt != "PNG" else {}))
    media = {"PNG": "png", "JPEG": "jpeg", "WEBP": "webp"}[fmt]
    for prefix in (f"data:image/{media};base64,", f"DATA:image/{media.upper()};BASE64,"):
        np.testing.assert_array_equal(decode_image(prefix + plain, "x"), decode_image(plain, "x"))
    assert (decode_image(plain, "x") != reference).sum() <= 4


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("data:image/gif;base64,R0lGODlh", "'image/gif': the image must be PNG, JPEG or WebP"),
        ("data:image/png,iVBORw0KGgo=", "must be base64"),
        ("data:image/png;base64", "must be base64"),
        ("data:image/png;base64,%%%", "not valid base64"),
    ],
)
def test_bad_data_urls_say_what_is_wrong(url: str, message: str) -> None:
    with pytest.raises(InvalidImage, match=message):
        decode_image(url, "images[0]")


def test_jpeg_and_webp_decode_like_png(reference: np.ndarray) -> None:
    for fmt, save in (("JPEG", {"quality": 75}), ("WEBP", {"quality": 60}), ("WEBP", {"lossless": True})):
        out = decode_image(b64(sketch(), fmt, **save), fmt)
        assert (out != reference).sum() <= 4, (fmt, save)
    rgb = sketch(mode="RGB", paper=(250, 245, 230), ink=(20, 20, 90))
    assert (decode_image(b64(rgb, "JPEG", quality=50), "x") != reference).sum() <= 6


def test_phone_photos_are_turned_upright() -> None:
    img = Image.new("L", (300, 100), 255)
    ImageDraw.Draw(img).rectangle([20, 40, 280, 60], fill=0)  # a horizontal bar, shown turned 90 degrees
    exif = Image.Exif()
    exif[0x0112] = 6
    height, width = extent(decode_image(b64(img, "JPEG", exif=exif.tobytes()), "x"))
    assert height > 5 * width


@pytest.mark.parametrize(
    ("mode", "paper", "ink"),
    [
        ("RGBA", (0, 0, 0, 0), (0, 0, 0, 255)),  # dark strokes on a transparent canvas
        ("RGBA", (255, 255, 255, 0), (0, 0, 0, 255)),  # the same, transparent white underneath
        ("RGBA", (0, 0, 0, 0), (255, 255, 255, 255)),  # light strokes on a transparent canvas
        ("LA", (0, 0), (0, 255)),
        ("RGBA", (255, 255, 255, 255), (0, 0, 0, 255)),  # alpha channel, all opaque
        ("L", 0, 255),  # light on dark
        ("RGB", (20, 30, 120), (250, 250, 100)),  # yellow on blue
    ],
)
def test_ink_is_found_whatever_the_polarity_or_alpha(
    mode: str, paper: Colour, ink: Colour, reference: np.ndarray
) -> None:
    out = decode_image(b64(sketch(mode=mode, paper=paper, ink=ink)), mode)
    assert (out != reference).sum() <= 4


def test_sixteen_bit_png_is_not_clipped_to_white() -> None:
    deep = np.full((100, 100), 65535, dtype=np.uint16)
    deep[20:80, 45:55] = 10280  # dark grey: 40 of 255, far above 255 of 65535
    png16 = b64(Image.fromarray(deep))
    assert Image.open(io.BytesIO(base64.b64decode(png16))).mode == "I;16"
    eight = decode_image(b64(Image.fromarray((deep // 257).astype(np.uint8))), "x")
    np.testing.assert_array_equal(decode_image(png16, "x"), eight)
    assert extent(eight)[0] >= 15


@pytest.mark.parametrize(
    ("fmt", "named"),
    [("GIF", "a GIF"), ("BMP", "a BMP"), ("TIFF", "a TIFF")],
)
def test_other_formats_are_refused_naming_the_accepted_ones(fmt: str, named: str) -> None:
    with pytest.raises(InvalidImage) as e:
        decode_image(b64(sketch(), fmt), "images[4]")
    assert f"images[4]: the image is {named}: it must be PNG, JPEG or WebP" == e.value.detail


def test_junk_and_broken_files_say_so() -> None:
    with pytest.raises(InvalidImage, match="the data is not an image: it must be PNG, JPEG or WebP"):
        decode_image(base64.b64encode(b"hello, world").decode(), "x")
    whole = base64.b64decode(b64(sketch()))
    with pytest.raises(InvalidImage, match="not a decodable PNG"):
        decode_image(base64.b64encode(whole[: len(whole) // 2]).decode(), "x")


def bomb_png(width: int, height: int) -> str:
    """A 1-bit PNG of width x height white pixels: a few hundred KB that inflate to width x height."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    packer = zlib.compressobj(9)
    row = b"\x00" + b"\xff" * ((width + 7) // 8)  # filter byte, then 8 pixels a byte
    idat = b"".join(packer.compress(row * 1000) for _ in range(height // 1000)) + packer.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    raw = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    return base64.b64encode(raw).decode()


def test_decompression_bombs_are_refused_by_their_size_not_as_undecodable() -> None:
    bomb = bomb_png(20000, 20000)  # 400 megapixels: past Pillow's own bomb limit too
    assert len(bomb) < 200_000
    with pytest.raises(InvalidImage) as e:
        decode_image(bomb, "images[0]")
    assert "20000x20000 = 400,000,000 pixels is too large to decode safely" in e.value.detail
    assert "decodable" not in e.value.detail and e.value.extra["max_pixels"] == MAX_IMAGE_PIXELS
    with pytest.raises(PayloadTooLarge) as too_many:
        _decode_all([(None, np.eye(28).tolist()), (bomb, None)], "images")
    assert too_many.value.extra == {"pixels": 400_000_000, "max_pixels": MAX_REQUEST_PIXELS}


def test_one_image_over_its_own_limit_is_422_within_the_request_budget() -> None:
    big = bomb_png(5000, 5000)
    assert MAX_REQUEST_PIXELS > 5000 * 5000  # under the request's budget: refused as one image
    with pytest.raises(
        InvalidImage, match=r"images\[1\]: image of 5000x5000 = 25,000,000 pixels is too large"
    ):
        _decode_all([(png_b64(drawings(1)[0]), None), (big, None)], "images")


def test_to_drawing_takes_grey_levels_directly() -> None:
    grey = np.ones((90, 60), dtype=np.float32)
    grey[10:80, 28:32] = 0.0  # a vertical bar, 70 of 90 pixels tall
    out = to_drawing(grey, "x")
    height, width = extent(out)
    assert out.shape == (28, 28) and out.dtype == np.uint8 and 20 <= height <= 23 and width <= 2
    with pytest.raises(InvalidImage, match="blank"):
        to_drawing(np.full((40, 40), 0.95, dtype=np.float32), "x")
