"""The web page at `/` in a real browser (headless Chromium through Playwright) against the real
service: uvicorn (the `api` fixture) and a real worker process, on a real Redis.

The few-shot panel is driven with mouse strokes on its canvas, the streaming panel with a built-in
demo series; a full-page screenshot of each lands in tests/artifacts/ (git-ignored) for a person
to look at. Needs the system Chromium (Debian: `apt-get install chromium`) and the `playwright`
Python package; Playwright's own browser download is not used.
"""

from __future__ import annotations

import base64
import math
import os
import re
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from app.api.auth import key_digest, new_api_key
from app.config import ApiKey, Settings
from tests.conftest import REPO, SCALED_TEST_MODEL, VMA_TEST_MODEL, ApiServer, drawings, png_b64

try:
    from playwright.sync_api import Page, Playwright, expect, sync_playwright
except ImportError:  # the marker below skips every test, saying why
    sync_playwright = None


def _chromium() -> str | None:
    if os.access("/usr/bin/chromium", os.X_OK):
        return "/usr/bin/chromium"
    return shutil.which("chromium")


CHROMIUM = _chromium()
ARTIFACTS = REPO / "tests" / "artifacts"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip
SPIKES_AT = (120, 190, 255)  # app/static/js/series.js: SPIKES_AT
BAND80 = (0xB7, 0xCD, 0xF5)  # app/static/js/plot.js: COLORS.band80, an opaque fill
FBAND80 = (0xF9, 0xC9, 0x95)  # COLORS.fband80
ANOMALY = (0xD9, 0x2D, 0x20)  # COLORS.anomaly

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        sync_playwright is None, reason="the playwright package is missing: pip install playwright"
    ),
    pytest.mark.skipif(
        CHROMIUM is None, reason="no system Chromium (/usr/bin/chromium): apt-get install chromium"
    ),
]


# ----------------------------------------------------------------------------- the browser


@pytest.fixture(scope="module")
def playwright() -> Iterator[Playwright]:
    with sync_playwright() as p:
        yield p


@dataclass
class Browser:
    """A page in a fresh Chromium profile, and what went wrong in it."""

    page: Page
    origin: str
    errors: list[str] = field(default_factory=list)  # uncaught exceptions, console errors
    foreign: list[str] = field(default_factory=list)  # requests to anywhere but the server

    def clean(self, failed_loads: bool = False) -> None:
        """Nothing loaded from outside the server, and no script error. Chromium logs every error
        status a fetch gets (a 401, a 422) as a console error: allowed where the test causes them."""
        assert self.foreign == [], f"the page reached outside the server: {self.foreign}"
        loads = [e for e in self.errors if e.startswith("console: Failed to load resource")]
        others = [e for e in self.errors if e not in loads]
        assert others == [], f"script errors: {others}"
        assert failed_loads or loads == [], f"requests that failed: {loads}"


@pytest.fixture
def browser(playwright: Playwright, tmp_path: Path) -> Iterator[Callable[[str], Browser]]:
    """Factory: browser(url) -> a Browser showing the page at url, in a fresh user data dir."""
    contexts = []

    def open_page(url: str) -> Browser:
        ctx = playwright.chromium.launch_persistent_context(
            tmp_path / f"chromium-profile-{len(contexts)}", executable_path=CHROMIUM, headless=True,
            args=CHROMIUM_ARGS, viewport={"width": 1440, "height": 1000}, device_scale_factor=1,
        )  # fmt: skip
        contexts.append(ctx)
        page = ctx.pages[0] if ctx.pages else ctx.new_page()
        b = Browser(page, url.rstrip("/"))
        page.on("pageerror", lambda e: b.errors.append(f"pageerror: {e}"))
        page.on("console", lambda m: m.type == "error" and b.errors.append(f"console: {m.text}"))
        page.on("request", lambda r: _is_foreign(r.url, b.origin) and b.foreign.append(r.url))
        page.goto(url)
        return b

    yield open_page
    for ctx in contexts:
        ctx.close()


def _is_foreign(url: str, origin: str) -> bool:
    return not (url.startswith((origin + "/", "data:", "blob:")) or url == origin)


def screenshot(page: Page, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / name
    page.screenshot(path=str(path), full_page=True)
    return path


# ----------------------------------------------------------------------------- drawing

# Strokes in pad coordinates (the pad is 280 x 280).
T_SHAPE = [[(60, 60), (220, 60)], [(140, 60), (140, 230)]]
T_WIDE = [[(40, 80), (240, 80)], [(140, 80), (130, 240)]]
RING = [[(140 + 80 * math.cos(k * math.pi / 8), 140 + 80 * math.sin(k * math.pi / 8)) for k in range(17)]]


def draw(page: Page, strokes: list[list[tuple[float, float]]]) -> None:
    """Clears the pad and draws `strokes` with the mouse (press, move in steps, release)."""
    page.click("#pad-clear")
    box = page.locator("#pad").bounding_box()
    assert box is not None
    for stroke in strokes:
        x, y = stroke[0]
        page.mouse.move(box["x"] + x, box["y"] + y)
        page.mouse.down()
        for x, y in stroke[1:]:
            page.mouse.move(box["x"] + x, box["y"] + y, steps=4)
        page.mouse.up()


PAD_HAS_INK = """() => {
    const data = document.getElementById("pad").getContext("2d").getImageData(0, 0, 280, 280).data;
    return data.some((v) => v < 128);
}"""


def ink_fraction(page: Page, selector: str) -> float:
    """Fraction of the canvas' pixels that are dark: the strokes really landed on the pad."""
    return float(page.evaluate(
        """(sel) => {
            const c = document.querySelector(sel);
            const d = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
            let dark = 0;
            for (let i = 0; i < d.length; i += 4) if (d[i] < 128) dark++;
            return dark / (c.width * c.height);
        }""",
        selector,
    ))  # fmt: skip


def add_exemplar(page: Page, strokes: list[list[tuple[float, float]]], label: str, expect_count: int) -> None:
    draw(page, strokes)
    assert ink_fraction(page, "#pad") > 0.02
    page.fill("#vma-label", label)
    page.click("#vma-add")
    expect(page.locator("#memory .thumb")).to_have_count(expect_count)


def images_loaded(page: Page, selector: str) -> list[int]:
    """naturalWidth of each image: 28 for a decoded 28 x 28 PNG, 0 for a broken one."""
    return list(page.eval_on_selector_all(selector, "els => els.map(e => e.naturalWidth)"))


# ----------------------------------------------------------------------------- the plot


def plot_pixels(page: Page) -> dict[str, Any]:
    """Counts of the plot canvas' pixels in the colours of the 80 % bands and the anomaly rings,
    and a checksum of all of them."""
    return dict(page.evaluate(
        """([band, fband, ring]) => {
            const c = document.getElementById("plot");
            const d = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
            const is = (i, rgb) => d[i] === rgb[0] && d[i + 1] === rgb[1] && d[i + 2] === rgb[2];
            let band80 = 0, fband80 = 0, anomaly = 0, sum = 0;
            for (let i = 0; i < d.length; i += 4) {
                if (is(i, band)) band80++;
                if (is(i, fband)) fband80++;
                if (is(i, ring)) anomaly++;
                sum = (sum * 31 + d[i] + 7 * d[i + 1] + 13 * d[i + 2]) % 1000000007;
            }
            return {band80, fband80, anomaly, sum};
        }""",
        [BAND80, FBAND80, ANOMALY],
    ))  # fmt: skip


def counter(page: Page, selector: str) -> int:
    return int(page.inner_text(selector))


# ----------------------------------------------------------------------------- tests


def test_few_shot_panel_draw_remember_sample_classify(api: ApiServer, start_worker, browser) -> None:
    start_worker()
    b = browser(api.url)
    page = b.page
    expect(page.locator("#tenant")).to_have_text("authentication off (local use)")
    # The page's Content-Security-Policy has the browser refuse anything from elsewhere.
    csp = page.evaluate("() => fetch('/').then((r) => r.headers.get('content-security-policy'))")
    assert "default-src 'self'" in csp and "connect-src 'self'" in csp

    page.click("#vma-new")  # no model typed: the server's default VMA model
    expect(page.locator("#vma-session")).to_contain_text(VMA_TEST_MODEL)

    add_exemplar(page, T_SHAPE, "alpha", 1)
    add_exemplar(page, RING, "beta", 2)
    add_exemplar(page, T_WIDE, "alpha", 3)
    expect(page.locator("#memory-count")).to_have_text("(3)")
    captions = page.locator("#memory .thumb .cap").all_inner_texts()
    assert captions == ["#0 alpha", "#1 beta", "#2 alpha"]
    assert images_loaded(page, "#memory img") == [28, 28, 28]  # the stored drawings, as PNGs

    # Samples from one label, then from one exemplar picked in the memory grid.
    page.select_option("#sample-source", "label:alpha")
    page.click("#vma-samples")
    expect(page.locator("#samples .thumb img")).to_have_count(8)
    assert images_loaded(page, "#samples img") == [28] * 8
    assert all(c.startswith("alpha ← #") for c in page.locator("#samples .cap").all_inner_texts())
    page.click("#memory .thumb[data-id='1']")
    expect(page.locator("#sample-source")).to_have_value("ex:1")
    page.click("#vma-samples")
    expect(page.locator("#samples .cap").first).to_have_text("beta ← #1")
    assert page.locator("#samples .cap").all_inner_texts() == ["beta ← #1"] * 8
    # Temperature 0 draws the exemplar's mean drawing every time; the model's own varies.
    sources = page.locator("#samples img")
    varied = sources.evaluate_all("(imgs) => imgs.map((i) => i.src)")
    page.select_option("#sample-temperature", "0")
    page.click("#vma-samples")
    expect(sources.first).not_to_have_attribute("src", varied[0])
    assert len(set(sources.evaluate_all("(imgs) => imgs.map((i) => i.src)"))) == 1
    assert len(set(varied)) > 1
    # Anchored at the exemplar's own z, the mean drawing is another one.
    prior_mean = sources.first.get_attribute("src")
    page.select_option("#sample-anchor", "1")
    page.click("#vma-samples")
    expect(sources.first).not_to_have_attribute("src", prior_mean or "")
    assert len(set(sources.evaluate_all("(imgs) => imgs.map((i) => i.src)"))) == 1
    page.select_option("#sample-anchor", "")
    page.select_option("#sample-temperature", "")

    # The very drawing of exemplar 0 again: on the random-init test model its address ranks first
    # (h_q starts as a copy of h), and two of the three exemplars are alpha.
    draw(page, T_SHAPE)
    page.click("#vma-classify")
    expect(page.locator("#classify-result")).to_be_visible()
    expect(page.locator("#scores .bar")).to_have_count(2)
    assert page.inner_text("#scores .bar.best .name") == "alpha"
    widths = page.eval_on_selector_all(
        "#scores .fill", "els => els.map(e => e.getBoundingClientRect().width)"
    )
    assert widths[0] > 0 and widths[0] >= widths[1]
    assert float(page.inner_text("#kl")) >= 0
    assert page.inner_text("#novel") in ("novel", "familiar")
    expect(page.locator("#top .thumb")).to_have_count(3)  # top 5 of 3 exemplars
    assert page.locator("#top .cap").first.inner_text().startswith("#0 ")
    assert images_loaded(page, "#top img") == [28, 28, 28]

    # Image files: one goes onto the pad, several go to memory under the label.
    files = [{"name": f"g{i}.png", "mimeType": "image/png", "buffer": base64.b64decode(png_b64(img, scale=5))}
             for i, img in enumerate(drawings(2, seed=3))]  # fmt: skip
    page.click("#pad-clear")
    page.set_input_files("#pad-file", files[:1])
    page.wait_for_function(PAD_HAS_INK)  # the image is decoded asynchronously
    page.fill("#vma-label", "gamma")
    page.set_input_files("#pad-file", files)
    expect(page.locator("#memory .thumb")).to_have_count(5)
    assert page.locator("#memory .thumb .cap").all_inner_texts()[3:] == ["#3 gamma", "#4 gamma"]

    assert page.locator("#status.error").count() == 0, page.inner_text("#status")
    screenshot(page, "page-fewshot.png")
    b.clean()


def test_stream_panel_bands_forecast_and_spike_anomalies(api: ApiServer, start_worker, browser) -> None:
    start_worker()
    b = browser(api.url)
    page = b.page
    blank = plot_pixels(page)

    # A model with intervals: bands, forecast bands and anomaly flags.
    page.fill("#mn-model", SCALED_TEST_MODEL)
    page.select_option("#demo", "spikes")
    expect(page.locator("#series-info")).to_contain_text("300 points")
    page.click("#mn-new")
    expect(page.locator("#mn-session")).to_contain_text(SCALED_TEST_MODEL)
    page.click("#mn-stream")
    page.wait_for_function("() => Number(document.getElementById('count-points').textContent) > 30")
    assert plot_pixels(page)["sum"] != blank["sum"]  # drawing live, not only at the end
    expect(page.locator("#count-points")).to_have_text("300", timeout=40_000)
    expect(page.locator("#mn-stream")).to_be_enabled()

    px = plot_pixels(page)
    assert px["band80"] > 500, px  # the one-step 80 % band
    assert px["fband80"] > 50, px  # the forecast's 80 % band
    assert px["anomaly"] > 0, px  # rings around flagged points
    flagged = {
        int(t) for t in page.eval_on_selector_all("#anomaly-list li", "els => els.map(e => e.dataset.t)")
    }
    assert counter(page, "#count-anomalies") == len(flagged) > 0
    # The first spike at least: the small test model's bands widen a lot after it (the real
    # models flag the later ones too).
    assert SPIKES_AT[0] in flagged, f"spikes at {SPIKES_AT}, anomalies at {sorted(flagged)}"
    assert page.locator("#status.error").count() == 0, page.inner_text("#status")
    screenshot(page, "page-stream.png")

    # The server's default model here has no intervals (and 2 dimensions): the page drops
    # `level` after the 422 and streams on without bands; Stop halts it part way.
    page.fill("#mn-model", "")
    page.select_option("#demo", "sine")
    page.click("#mn-new")
    expect(page.locator("#mn-session")).to_contain_text("2 dimensions")
    page.click("#mn-stream")
    page.wait_for_function("() => Number(document.getElementById('count-points').textContent) > 30")
    page.click("#mn-stop")
    expect(page.locator("#mn-stream")).to_be_enabled()
    stopped_at = counter(page, "#count-points")
    assert 30 < stopped_at < 300
    page.wait_for_timeout(300)
    assert counter(page, "#count-points") == stopped_at
    assert page.locator("#status.error").count() == 0, page.inner_text("#status")
    px = plot_pixels(page)
    assert px["band80"] == 0 and counter(page, "#count-anomalies") == 0, px
    screenshot(page, "page-stream-no-intervals.png")

    # A pasted CSV: a header, a date column that is skipped, a gap row that is dropped.
    page.fill("#csv", "date,value,other\n2024-01-01,1.5,7\n2024-01-02,,8\n2024-01-03,2.5,9\n2024-01-04,3,1\n")
    page.click("#csv-use")
    expect(page.locator("#series-info")).to_have_text(
        "pasted CSV: value: 3 points, 2 numeric columns (1 row without a number skipped)"
    )
    b.clean(failed_loads=True)  # the one 422 for `level`


def test_keys_on_the_page_shows_401_without_the_key_and_works_with_it(
    settings: Settings, start_worker, browser
) -> None:
    key = new_api_key()
    keyed = settings.model_copy(
        update={"auth": "keys", "api_keys": [ApiKey(tenant="alice", sha256=key_digest(key))]}
    )
    server = ApiServer(keyed).start()
    try:
        start_worker()
        b = browser(server.url)
        page = b.page
        status = page.locator("#status")
        expect(status).to_be_visible()
        expect(status).to_have_class(re.compile(r"\berror\b"))
        expect(status).to_contain_text("401")
        expect(status).to_contain_text("A valid API key is needed")
        expect(status).to_contain_text("Authorization: Bearer")
        page.click("#vma-new")  # refused too, and said so
        expect(status).to_contain_text("New VMA session: 401")
        screenshot(page, "page-keys-401.png")

        page.fill("#api-key", "msk_not-a-key")
        page.click("#auth-form button")
        expect(status).to_contain_text("the API key is not valid")

        page.fill("#api-key", key)
        page.click("#auth-form button")
        expect(page.locator("#tenant")).to_have_text("tenant alice")
        expect(status).to_be_hidden()
        assert page.evaluate("sessionStorage.getItem('memserve.apiKey')") == key
        page.click("#vma-new")
        expect(page.locator("#vma-session")).to_contain_text(VMA_TEST_MODEL)
        add_exemplar(page, T_SHAPE, "alpha", 1)
        page.reload()  # the key and the session survive a reload of the tab
        expect(page.locator("#tenant")).to_have_text("tenant alice")
        expect(page.locator("#api-key")).to_have_value(key)
        expect(page.locator("#vma-session")).to_contain_text(VMA_TEST_MODEL)
        expect(page.locator("#memory .thumb")).to_have_count(1)
        screenshot(page, "page-keys-ok.png")
        b.clean(failed_loads=True)  # the 401s
    finally:
        server.stop()
