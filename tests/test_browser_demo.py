"""What a visitor of a public demo link sees, in a real browser (Debian's Chromium driven by Playwright): app.py
with --auth and --public-viewers serves the demo page at / (the published network's name, the owner's description,
sample grids; Generate and Explore only; no server path, run or dataset) and the owner's login at /studio/.
Screenshot: docs/screenshots/demo-page.png.
"""

import pytest

from test_browser import CHROMIUM, ROOT, SHOTS, running_app

pytestmark = [pytest.mark.browser, pytest.mark.slow]

try:
    from playwright.sync_api import expect, sync_playwright
except ImportError:  # pragma: no cover - running_app skips then
    sync_playwright = None


@pytest.fixture(scope="module")
def server():
    with running_app("studio-browser-demo-", "--auth", "owner:secret", "--public-viewers", "--publish", "demo",
                     "--publish-name", "Emoji faces", "--publish-description",
                     "Little faces drawn by a network trained on emoji.") as running:
        yield running


def test_a_visitor_sees_the_demo_page(server):
    url, work = server
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM,
                                    args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        try:
            pg = browser.new_page(viewport={"width": 1400, "height": 1000})
            pg.set_default_timeout(30_000)
            pg.goto(url)
            pg.wait_for_selector("#demo-tabs")
            # The published network: its name (the default demo comes first), the owner's words, sample grids.
            expect(pg.locator("#demo-network input")).to_have_value("Emoji")
            pg.locator("#demo-network input").click()
            pg.get_by_role("option", name="Emoji faces", exact=True).click()
            expect(pg.locator("#demo-about")).to_contain_text("Emoji faces")
            expect(pg.locator("#demo-about")).to_contain_text("Little faces drawn by a network trained on emoji.")
            expect(pg.locator("#demo-samples img")).to_be_visible()
            expect(pg.locator("#demo-limits")).to_contain_text("up to 16 images per grid")
            # Generate and Explore only: no Data, Train or System tab, no upload of networks, no export.
            tabs = [t.strip() for t in pg.get_by_role("tab").all_inner_texts()]
            assert tabs == ["Generate", "Explore"], tabs
            body = pg.locator("body").inner_text()
            for word in ("Train", "Dataset", "Export", "Upload a network", "System", "run 0", "kimg"):
                assert word not in body, word
            html = pg.content()
            assert str(work) not in html and str(ROOT) not in html
            # A grid.
            pg.locator("#demo-seeds textarea, #demo-seeds input").first.fill("0-5")
            pg.locator("#demo-generate").click()
            expect(pg.locator("#demo-gallery img")).to_have_count(6, timeout=60_000)
            pg.wait_for_timeout(500)
            tiles = pg.locator("#demo-gallery img, #demo-samples img").evaluate_all(
                "imgs => imgs.map(i => [i.naturalWidth, getComputedStyle(i).imageRendering,"
                " i.getBoundingClientRect().width])")
            assert all(r == "pixelated" and w >= 2 * 32 for _, r, w in tiles), tiles  # pixel-sharp, drawn large
            SHOTS.mkdir(parents=True, exist_ok=True)
            pg.wait_for_timeout(600)
            pg.screenshot(path=str(SHOTS / "demo-page.png"), full_page=True)
            # Over a visitor's limit: one line, the page keeps what it showed.
            pg.locator("#demo-seeds textarea, #demo-seeds input").first.fill("0-99")
            pg.locator("#demo-generate").click()
            expect(pg.locator(".toast-body.error")).to_contain_text("at most 16", timeout=30_000)
            expect(pg.locator("#demo-gallery img")).to_have_count(6)
            # Explore: the live view follows the direction sliders.
            pg.get_by_role("tab", name="Explore", exact=True).click()
            expect(pg.locator("#demo-image img")).to_be_visible(timeout=30_000)
            # The owner's dashboard is behind the owner's login.
            pg.goto(url + "studio/")
            expect(pg.get_by_role("button", name="Login")).to_be_visible()
            assert "demo-tabs" not in pg.content()
        finally:
            browser.close()
