"""Drawings as users send them, through the real API and a real worker: blank ones refused
with nothing stored, wide canvases, data: URLs, JPEG and WebP, and images too large to decode."""

from __future__ import annotations

import base64
import io

import httpx
import numpy as np
from PIL import Image, ImageDraw

from tests.conftest import drawings, png_b64, problem
from tests.unit.test_images import bomb_png


def new_session(client: httpx.Client) -> str:
    r = client.post("/v1/sessions", json={"kind": "vma", "capacity": 16})
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def encoded(img: Image.Image, fmt: str = "PNG", **save: object) -> str:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **save)
    return base64.b64encode(buf.getvalue()).decode()


def stored(client: httpx.Client, sid: str) -> list[np.ndarray]:
    """The session's exemplars as the service keeps them, ink = 1."""
    page = client.get(f"/v1/sessions/{sid}/exemplars", params={"images": True}).json()
    grey = [
        np.asarray(Image.open(io.BytesIO(base64.b64decode(e["image"]))).convert("L"))
        for e in page["exemplars"]
    ]
    return [(g < 128).astype(np.uint8) for g in grey]


def count(client: httpx.Client, sid: str) -> int:
    return int(client.get(f"/v1/sessions/{sid}").json()["exemplars"])


def wide_stroke() -> Image.Image:
    """3000 x 1000, one 40-pixel pen stroke: a box filter alone leaves nothing of it at 28x28."""
    img = Image.new("L", (3000, 1000), 255)
    draw = ImageDraw.Draw(img)
    draw.line([(400, 700), (2600, 300)], fill=0, width=40)
    return img


def test_blank_drawings_are_refused_and_nothing_is_stored(client: httpx.Client, start_worker) -> None:
    start_worker()
    sid = new_session(client)
    url = f"/v1/sessions/{sid}"
    good = drawings(2, seed=31)
    first = {"exemplars": [{"pixels": good[0].tolist(), "label": "a"}]}
    assert client.post(f"{url}/exemplars", json=first).status_code == 201
    blanks: dict[str, dict[str, object]] = {
        "white PNG": {"image": encoded(Image.new("L", (280, 280), 255))},
        "transparent PNG": {"image": encoded(Image.new("RGBA", (280, 280), (0, 0, 0, 0)))},
        "white JPEG": {"image": encoded(Image.new("RGB", (640, 480), (255, 255, 255)), "JPEG")},
        "zero pixels": {"pixels": np.zeros((28, 28)).tolist()},
    }
    for name, blank in blanks.items():
        # Next to a good drawing: all or none, so the good one is not stored either.
        body = {"exemplars": [{"pixels": good[1].tolist(), "label": "b"}, {**blank, "label": "blank"}]}
        detail = problem(client.post(f"{url}/exemplars", json=body), 422, "invalid-image")["detail"]
        assert detail.startswith("exemplars[1]: no ink"), (name, detail)
        assert count(client, sid) == 1, name
        r = client.post(f"{url}/classify", json={"images": [blank]})
        detail = problem(r, 422, "invalid-image")["detail"]
        assert detail.startswith("images[0]: no ink"), (name, detail)
    image_detail = problem(
        client.post(f"{url}/classify", json={"images": [blanks["white PNG"]]}), 422, "invalid-image"
    )["detail"]
    assert "no ink after resizing to 28x28" in image_detail
    assert [e["label"] for e in client.get(f"{url}/exemplars").json()["exemplars"]] == ["a"]


def test_a_wide_drawing_is_stored_with_its_stroke_and_finds_itself(
    client: httpx.Client, start_worker
) -> None:
    start_worker()
    sid = new_session(client)
    url = f"/v1/sessions/{sid}"
    others = drawings(3, seed=32)
    wide = encoded(wide_stroke())
    items = [{"pixels": d.tolist(), "label": f"other{i}"} for i, d in enumerate(others)]
    r = client.post(f"{url}/exemplars", json={"exemplars": [*items, {"image": wide, "label": "wide"}]})
    assert r.status_code == 201, r.text
    kept = stored(client, sid)[3]
    # The stroke rises from left to right across most of the frame, unbroken.
    cols = np.flatnonzero(kept.any(axis=0))
    assert cols[-1] - cols[0] >= 18 and len(cols) == cols[-1] - cols[0] + 1, kept
    left_row, right_row = np.flatnonzero(kept[:, cols[0]]).mean(), np.flatnonzero(kept[:, cols[-1]]).mean()
    assert left_row - right_row >= 2, kept
    r = client.post(f"{url}/classify", json={"images": [{"image": wide}], "top_k": 2})
    assert r.status_code == 200, r.text
    res = r.json()["results"][0]
    assert res["label"] == "wide" and res["top"][0]["exemplar_id"] == 3, res


def test_data_urls_jpeg_and_webp_are_accepted(client: httpx.Client, start_worker) -> None:
    start_worker()
    sid = new_session(client)
    img = drawings(1, seed=33)[0]
    png = png_b64(img, scale=6)
    big = Image.open(io.BytesIO(base64.b64decode(png)))
    bodies = [
        {"image": "data:image/png;base64," + png, "label": "png-url"},
        {"image": encoded(big, "JPEG", quality=85), "label": "jpeg"},
        {
            "image": "data:image/jpeg;base64," + encoded(big.convert("RGB"), "JPEG", quality=70),
            "label": "jpeg-url",
        },
        {"image": "data:image/webp;base64," + encoded(big, "WEBP", quality=80), "label": "webp-url"},
    ]
    r = client.post(f"/v1/sessions/{sid}/exemplars", json={"exemplars": bodies})
    assert r.status_code == 201, r.text
    for body, kept in zip(bodies, stored(client, sid), strict=True):
        assert (kept != img).sum() <= 2, (body["label"], kept)
    r = client.post(
        f"/v1/sessions/{sid}/classify", json={"images": [{"image": "data:image/png;base64," + png}]}
    )
    assert r.status_code == 200 and r.json()["results"][0]["label"] == "png-url", r.text


def test_other_formats_are_refused_naming_the_accepted_ones(client: httpx.Client) -> None:
    sid = new_session(client)
    refused = {
        "data:image/gif;base64,R0lGODlhAQABAAAAACw=": "'image/gif': the image must be PNG, JPEG or WebP",
        encoded(Image.new("L", (40, 40), 255), "GIF"): "the image is a GIF: it must be PNG, JPEG or WebP",
        encoded(Image.new("L", (40, 40), 255), "BMP"): "the image is a BMP: it must be PNG, JPEG or WebP",
    }
    for image, message in refused.items():
        r = client.post(f"/v1/sessions/{sid}/exemplars", json={"exemplars": [{"image": image, "label": "x"}]})
        detail = problem(r, 422, "invalid-image")["detail"]
        assert detail.startswith("exemplars[0]: ") and message in detail, detail


def test_images_too_large_to_decode_say_so(client: httpx.Client) -> None:
    sid = new_session(client)
    url = f"/v1/sessions/{sid}/classify"
    bomb = bomb_png(20000, 20000)  # a few hundred KB, 400 megapixels
    detail = problem(client.post(url, json={"images": [{"image": bomb}]}), 413, "payload-too-large")["detail"]
    assert "400,000,000 pixels" in detail and "decodable" not in detail
    detail = problem(
        client.post(url, json={"images": [{"image": bomb_png(5000, 5000)}]}), 422, "invalid-image"
    )["detail"]
    assert detail.startswith(
        "images[0]: image of 5000x5000 = 25,000,000 pixels is too large to decode safely"
    )
