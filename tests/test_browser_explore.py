"""Explore and the latent library in a real browser (Debian's Chromium driven by Playwright), on the demo network:
upload a picture, project it a few steps, move a direction slider, save two latents, then make a GIF walking
through them on the Generate tab."""

import re
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from test_browser import field, no_error, page, server, shot, wait_text  # noqa: F401 (the fixtures are used by name)

pytestmark = [pytest.mark.browser, pytest.mark.slow]

try:
    from playwright.sync_api import expect
except ImportError:  # pragma: no cover - the server fixture skips then
    expect = None


def _src(pg, selector):
    img = pg.locator(selector)
    return img.get_attribute("src") if img.count() else None


def _wait_new_src(pg, selector, old, timeout_s):
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        no_error(pg)
        src = _src(pg, selector)
        if src and src != old:
            return src
        time.sleep(0.3)
    raise AssertionError(f"{selector} did not change in {timeout_s} s")


def _pick_many(pg, elem_id, names):
    """Choose `names` in this order in a multiselect dropdown."""
    box = field(pg, elem_id)
    for name in names:
        box.click()
        pg.locator(f"#{elem_id}").get_by_role("option", name=name, exact=True).click()
    pg.keyboard.press("Escape")
    for name in names:
        expect(pg.locator(f"#{elem_id}")).to_contain_text(name)


def test_project_edit_save_and_walk(page, server):  # noqa: F811 (pytest fixtures)
    pg = page
    _, work = server
    studio = work / "studio"
    pic = Path(tempfile.mkdtemp(prefix="studio-browser-pic-")) / "photo.png"
    yy, xx = np.mgrid[0:48, 0:64]
    Image.fromarray(np.stack([xx * 4, yy * 5, 255 - xx * 3], axis=2).astype(np.uint8)).save(pic)

    pg.get_by_role("tab", name="Explore", exact=True).click()
    expect(pg.locator("#explore-image img")).to_be_visible(timeout=60_000)
    expect(pg.locator("#explore-latency")).to_contain_text("ms")

    # Projection: a picture, 10 steps; the page shows the last step and the view takes the projection.
    pg.get_by_role("button", name=re.compile(r"^Project a picture")).click()
    pg.locator("#explore-upload input[type=file]").set_input_files(str(pic))
    expect(pg.locator("#explore-upload")).to_contain_text(re.compile(r"photo\s*\.png"))  # stem and suffix apart
    steps = field(pg, "explore-steps")
    steps.fill("10")
    steps.press("Enter")
    before = _src(pg, "#explore-image img")
    pg.locator("#explore-project").click()
    wait_text(pg, "#explore-project-status", "step 10/10", 180)
    expect(pg.locator("#explore-source")).to_contain_text("projection of photo.png")
    projected = _wait_new_src(pg, "#explore-image img", before, 30)

    # Directions: find them, then a slider moves the projected picture.
    pg.locator("#explore-find").click()
    expect(pg.locator(".toast-body").filter(has_text="sefa directions")).to_be_visible(timeout=60_000)
    pg.wait_for_timeout(1500)  # the view is drawn again with the sliders at zero
    projected = _src(pg, "#explore-image img")
    slider = field(pg, "explore-dir-0")
    slider.fill("4")
    slider.press("Enter")
    edited = _wait_new_src(pg, "#explore-image img", projected, 30)

    # The library: save the edit, then the other side of the same direction.
    pg.get_by_role("button", name=re.compile(r"^Saved latents")).click()
    field(pg, "explore-name").fill("photo plus")
    pg.locator("#explore-save").click()
    wait_text(pg, "#explore-save-status", "saved 'photo plus' (edit)", 60)
    slider.fill("-4")
    slider.press("Enter")
    _wait_new_src(pg, "#explore-image img", edited, 30)
    field(pg, "explore-name").fill("photo minus")
    pg.locator("#explore-save").click()
    wait_text(pg, "#explore-save-status", "saved 'photo minus' (edit)", 60)
    shot(pg, "explore")  # for the README: the live view, the projection and the library
    library = studio / "latents"
    assert {p.name for p in library.glob("*.npz")} == {"photo plus.npz", "photo minus.npz"}

    # Generate: a looped walk through the two saved latents, as a GIF.
    pg.get_by_role("tab", name="Generate", exact=True).click()
    _pick_many(pg, "video-saved", ["photo plus", "photo minus"])
    pg.get_by_role("radio", name="cubic", exact=True).check()
    pg.locator("#video-btn").click()
    gif = pg.locator("#video-out img")
    expect(gif).to_be_visible(timeout=120_000)
    expect(gif).to_have_attribute("src", re.compile(r"walk-photo-plus-photo-minus\.gif"))
    no_error(pg)
    made = sorted((studio / "outputs").rglob("walk-photo-plus-photo-minus.gif"))
    assert len(made) == 1
    with Image.open(made[0]) as im:
        assert im.n_frames == 24  # 2 latents x 12 frames, looped back to the first
        first = np.asarray(im.convert("RGB"), dtype=np.float32)
        im.seek(12)
        middle = np.asarray(im.convert("RGB"), dtype=np.float32)
    # The walk starts on the first saved latent and passes through the second (GIF colours are approximate).
    plus = np.asarray(Image.open(library / "photo plus.png").convert("RGB"), dtype=np.float32)
    minus = np.asarray(Image.open(library / "photo minus.png").convert("RGB"), dtype=np.float32)
    assert np.abs(first - plus).mean() < np.abs(first - minus).mean()
    assert np.abs(middle - minus).mean() < np.abs(middle - plus).mean()

    # A grid of two seeds and a saved latent: every tile is drawn the same way, pixel-sharp at the same size.
    field(pg, "generate-seeds").fill("0-1")
    _pick_many(pg, "generate-saved", ["photo plus"])
    pg.locator("#generate-btn").click()
    expect(pg.locator("#generate-gallery img")).to_have_count(3, timeout=60_000)
    pg.wait_for_timeout(500)
    tiles = pg.locator("#generate-gallery img").evaluate_all(
        "imgs => imgs.map(i => [i.naturalWidth, getComputedStyle(i).imageRendering,"
        " Math.round(i.getBoundingClientRect().width)])")
    assert len({(n, r, w) for n, r, w in tiles}) == 1, tiles
    natural, rendering, width = tiles[0]
    assert natural == 32 and rendering == "pixelated" and width >= 2 * natural, tiles


def test_error_messages_read_as_written(page, server):  # noqa: F811 (pytest fixtures)
    """A refused value is quoted in the message: the page shows the quotes (and any markup the user typed) as
    text, not as HTML entities or as markup."""
    pg = page
    pg.get_by_role("tab", name="Generate", exact=True).click()
    for typed, expected in (("0-99999999", "'0-99999999'"), ("<b>7</b>", "'<b>7</b>'")):
        field(pg, "generate-seeds").fill(typed)
        pg.locator("#generate-btn").click()
        toast = pg.locator(".toast-body.error").last
        expect(toast).to_be_visible(timeout=30_000)
        text = toast.inner_text()
        assert expected in text, text
        assert "&#x27;" not in text and "&lt;" not in text and "&amp;" not in text, text
        assert toast.locator("b").count() == 0  # the user's markup is shown, not rendered
        pg.locator(".toast-close").last.click()
        expect(pg.locator(".toast-body.error")).to_have_count(0, timeout=10_000)
    field(pg, "generate-seeds").fill("0-7")


def test_direction_sliders_work_before_find_directions(page, server):  # noqa: F811 (pytest fixtures)
    """The directions are found with the network: the first slider moves the picture without pressing Find."""
    pg = page
    pg.reload()
    pg.wait_for_selector("#tabs")
    pg.get_by_role("tab", name="Explore", exact=True).click()
    pg.wait_for_selector("#explore-image img", timeout=60_000)
    before = _wait_new_src(pg, "#explore-image img", None, 60)
    slider = pg.locator("#explore-dir-0 input[type=number]")
    slider.fill("6")
    slider.press("Enter")
    _wait_new_src(pg, "#explore-image img", before, 30)
    no_error(pg)
    box, img = pg.locator("#explore-image").bounding_box(), pg.locator("#explore-image img").bounding_box()
    assert img["height"] >= 0.9 * box["height"] - 2  # drawn to its box, not at the network's 32 px


def test_a_file_that_is_not_a_picture_is_refused_on_arrival(page, server):  # noqa: F811 (pytest fixtures)
    """A text file named .png is refused when it is dropped, by its own name (no server path), and the drop area
    comes back for the next try (no Error badge in its place)."""
    pg = page
    pg.get_by_role("tab", name="Explore", exact=True).click()
    fake = Path(tempfile.mkdtemp()) / "not-really.png"
    fake.write_text("this is text, not a picture")
    if not pg.locator("#explore-upload").is_visible():
        pg.get_by_role("button", name=re.compile(r"^Project a picture")).click()
    pg.locator("#explore-upload input[type=file]").set_input_files(str(fake))
    toast = pg.locator(".toast-body").filter(has_text="not-really.png")
    expect(toast).to_be_visible(timeout=30_000)
    text = toast.inner_text()
    assert "is not a picture this program can read" in text and "/tmp" not in text and "gradio" not in text, text
    expect(pg.locator("#explore-upload input[type=file]")).to_have_count(1, timeout=10_000)  # the drop area again
    assert pg.locator("#explore-upload .error").count() == 0
    pg.locator(".toast-close").last.click()


def _visible_error_badges(pg):
    return [b for b in pg.locator("[data-testid=status-tracker] .error").all() if b.is_visible()]


def test_an_error_leaves_what_the_user_had(page, server):  # noqa: F811 (pytest fixtures)
    """A failed event is a message only: the last grid and its download stay under a refused seed list, and a
    failed Blend keeps the networks the user chose (no "Error" badge in place of any of them)."""
    pg = page
    _, work = server
    pg.get_by_role("tab", name="Generate", exact=True).click()
    field(pg, "generate-seeds").fill("0-3")
    pg.locator("#generate-btn").click()
    expect(pg.locator("#generate-gallery img")).to_have_count(4, timeout=60_000)
    expect(pg.locator("#generate-files")).to_contain_text(".png", timeout=30_000)
    grid = [img.get_attribute("src") for img in pg.locator("#generate-gallery img").all()]
    files = pg.locator("#generate-files").inner_text()

    field(pg, "generate-seeds").fill("abc")
    pg.locator("#generate-btn").click()
    toast = pg.locator(".toast-body.error").filter(has_text="abc")
    expect(toast).to_be_visible(timeout=30_000)
    pg.wait_for_timeout(500)
    assert [img.get_attribute("src") for img in pg.locator("#generate-gallery img").all()] == grid
    assert pg.locator("#generate-gallery img").first.is_visible()
    assert pg.locator("#generate-files").inner_text() == files
    assert field(pg, "generate-seeds").input_value() == "abc"
    assert _visible_error_badges(pg) == []
    pg.locator(".toast-close").last.click()

    # A blend that fails (network B is damaged) leaves both pickers and the averaging choice as they were.
    uploads = work / "studio" / "uploads" / "networks"
    uploads.mkdir(parents=True, exist_ok=True)
    (uploads / "damaged.pt").write_bytes(b"not a network at all")
    pg.locator("#generate-refresh").click()
    label = "uploaded / damaged.pt"
    if not pg.locator("#blend-b").is_visible():
        pg.locator("#model-tools").get_by_text("Export and blend").first.click()
    choose_b = field(pg, "blend-b")
    choose_b.click()
    pg.locator("#blend-b").get_by_role("option", name=label, exact=True).click()
    expect(choose_b).to_have_value(label)
    _pick_many(pg, "average-networks", [label])
    network_before = field(pg, "generate-network").input_value()
    pg.locator("#blend-btn").click()
    toast = pg.locator(".toast-body.error").filter(has_text="damaged.pt")
    expect(toast).to_be_visible(timeout=60_000)
    pg.wait_for_timeout(500)
    assert field(pg, "blend-b").input_value() == label
    expect(pg.locator("#average-networks")).to_contain_text(label)
    assert field(pg, "generate-network").input_value() == network_before
    assert _visible_error_badges(pg) == []
    pg.locator(".toast-close").last.click()
