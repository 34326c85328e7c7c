"""The whole journey in a real browser (Debian's Chromium driven by Playwright), with a screenshot of each tab.

prepare the emoji set at 16 px -> train the tiny preset for a few ticks (chart and grid appear) -> reload the
page mid-run (the form shows the run's settings) -> stop -> resume (the length stays) -> stop -> generate a grid
and a GIF from the new snapshot, then a grid of the built-in demo network. Screenshots go to docs/screenshots/.
"""

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHOTS = ROOT / "docs" / "screenshots"
CHROMIUM = os.environ.get("STUDIO_CHROMIUM", "/usr/bin/chromium")

pytestmark = [pytest.mark.browser, pytest.mark.slow]

try:
    from playwright.sync_api import expect, sync_playwright
except ImportError:  # pragma: no cover - reported as a skip below
    sync_playwright = None


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_app(prefix, *args):
    """app.py (with `args`) on a free port and a fresh workdir -> (url, work folder); afterwards its trainings and
    the app are stopped and the folder removed. Skips without Playwright or Chromium."""
    if sync_playwright is None:
        pytest.skip("playwright is not installed")
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium)")
    work = Path(tempfile.mkdtemp(prefix=prefix))
    port = _free_port()
    log = open(work / "app.log", "wb")
    proc = subprocess.Popen([sys.executable, "app.py", "--workdir", str(work / "studio"), "--port", str(port), *args],
                            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.time() + 90
        while time.time() < deadline:
            try:
                urllib.request.urlopen(url, timeout=2)
                break
            except OSError:
                if proc.poll() is not None:
                    raise AssertionError("app.py exited: " + (work / "app.log").read_text()[-2000:])
                time.sleep(0.5)
        else:
            raise AssertionError("app.py did not answer in 90 s")
        yield url, work
    finally:
        from ui.supervisor import Supervisor

        try:
            Supervisor(work / "studio").kill(None)
            for v in Supervisor(work / "studio").live():
                Supervisor(work / "studio").kill(v.run_dir)
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=30)
            log.close()
        print((work / "app.log").read_text(errors="replace")[-4000:])  # shown by pytest when the test failed
        shutil.rmtree(work, ignore_errors=True)


@pytest.fixture(scope="module")
def server():
    with running_app("studio-browser-test-") as running:
        yield running


@pytest.fixture(scope="module")
def page(server):
    url, _ = server
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM,
                                    args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        pg = browser.new_page(viewport={"width": 1400, "height": 1000})
        pg.set_default_timeout(30_000)
        pg.goto(url)
        pg.wait_for_selector("#tabs")
        yield pg
        browser.close()


def field(pg, elem_id):
    return pg.locator(f"#{elem_id}").locator("input, textarea").first


def choose(pg, elem_id, value):
    box = field(pg, elem_id)
    box.click()
    pg.get_by_role("option", name=value, exact=True).click()
    expect(box).to_have_value(value)


def no_error(pg):
    toasts = pg.locator(".toast-body.error")
    if toasts.count():
        raise AssertionError("the page shows an error: " + toasts.first.inner_text())


def wait_text(pg, selector, text, timeout_s):
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        no_error(pg)
        if text in pg.locator(selector).inner_text():
            return
        time.sleep(0.5)
    raise AssertionError(f"{selector} never showed {text!r}; it shows {pg.locator(selector).inner_text()[:300]!r}")


def shot(pg, name):
    SHOTS.mkdir(parents=True, exist_ok=True)
    hide = pg.add_style_tag(content=".toast-wrap { display: none !important; }")  # notices would cover the page
    pg.wait_for_timeout(600)
    pg.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)
    hide.evaluate("e => e.remove()")


def test_journey(page, server):
    pg = page
    _, work = server
    studio = work / "studio"

    # Opens on the Generate tab; with no network yet it says how to make one.
    expect(pg.get_by_role("tab", name="Generate", exact=True)).to_have_attribute("aria-selected", "true")
    expect(pg.locator("#generate-btn")).to_be_visible()

    # Data: the emoji set at 16 px, a few hundred images.
    pg.get_by_role("tab", name="Data", exact=True).click()
    expect(pg.locator("#data-empty")).to_contain_text("No datasets yet")
    field(pg, "data-name").fill("emoji16")
    choose(pg, "data-resolution", "16")
    field(pg, "data-max-images").fill("300")
    pg.locator("#prepare-btn").click()
    wait_text(pg, "#data-summary", "Prepared", 120)
    expect(pg.locator("#data-summary")).to_contain_text("300 images")
    assert (studio / "datasets" / "emoji16.zip").is_file()
    expect(pg.locator("#data-preview img")).to_be_visible()
    expect(pg.locator("#datasets-table")).to_contain_text("emoji16.zip")
    shot(pg, "data")
    pg.get_by_text("Getting started").click()  # fold the guide: the other screenshots show the tab itself

    # Train: tiny preset, short ticks so the page has something to show within seconds.
    pg.get_by_role("tab", name="Train", exact=True).click()
    expect(field(pg, "train-dataset")).to_have_value("emoji16.zip")
    field(pg, "train-kimg").fill("30")  # not the form's default: a reload must not bring that back
    pg.get_by_text("More settings").click()
    field(pg, "train-batch").fill("8")
    field(pg, "train-tick").fill("0.032")
    field(pg, "train-snap").fill("2")
    # Left empty, R1 gamma and the ADA target are the preset's (a number field would show and send 0).
    expect(field(pg, "train-gamma")).to_have_value("")
    expect(field(pg, "train-target")).to_have_value("")
    pg.locator("#train-start-btn").click()
    wait_text(pg, "#train-status", "RUNNING", 240)
    # The chart and the newest grid appear after the first ticks, refreshed by the page itself.
    expect(pg.locator("#train-plot .js-plotly-plot")).to_be_visible(timeout=240_000)
    expect(pg.locator("#fakes-img img")).to_be_visible(timeout=240_000)
    wait_text(pg, "#train-status", "s/kimg", 240)
    wait_text(pg, "#fakes-slider", "kimg", 240)
    expect(field(pg, "train-log")).to_have_value(re.compile(r"^tick \d+", re.M), timeout=60_000)

    run_dir = next((studio / "runs").iterdir())
    short = run_dir.name[:5]
    options = json.loads((run_dir / "training_options.json").read_text())
    assert options["r1_gamma"] > 0 and options["ada_target"] == 0.6 and options["batch_size"] == 8

    # A reload mid-run: the form shows the watched run's settings, not its defaults.
    pg.reload()
    pg.wait_for_selector("#tabs")
    if pg.get_by_text("From pictures to new pictures").is_visible():
        pg.get_by_text("Getting started").click()  # fold the guide again: the screenshot shows the tab itself
    pg.get_by_role("tab", name="Train", exact=True).click()
    wait_text(pg, "#train-status", "RUNNING", 60)
    expect(field(pg, "train-kimg")).to_have_value("30")
    expect(field(pg, "train-dataset")).to_have_value("emoji16.zip")
    expect(field(pg, "train-preset")).to_have_value("tiny")
    pg.get_by_text("More settings").click()
    expect(field(pg, "train-batch")).to_have_value("8")
    expect(field(pg, "train-tick")).to_have_value("0.032")
    expect(field(pg, "train-snap")).to_have_value("2")
    # Buttons follow the run: Stop while it trains, no Resume; Start says it makes a new run.
    expect(pg.locator("#train-stop-btn")).to_have_text(f"Stop run {short}")
    expect(pg.locator("#train-resume-btn")).to_be_hidden()
    expect(pg.locator("#train-start-btn")).to_have_text("Start a new run")
    # The log box shows its newest line, and long lines wrap inside it (none runs past its edge).
    wait_text(pg, "#train-status", "s/kimg", 240)
    log_area = field(pg, "train-log")
    deadline = time.time() + 240
    while log_area.input_value().count("\n") < 20 and time.time() < deadline:  # more than the box shows at once
        pg.wait_for_timeout(1000)
    pg.wait_for_timeout(3500)  # one more refresh of the page
    box = log_area.evaluate("t => ({top: t.scrollTop, height: t.clientHeight, full: t.scrollHeight, "
                            "ws: getComputedStyle(t).whiteSpace, value: t.value})")
    assert box["full"] > box["height"], "the test needs more log than fits the box"
    assert box["top"] + box["height"] >= box["full"] - 4, f"the newest log line is out of view: {box}"
    assert box["ws"] == "pre-wrap", box["ws"]
    last = box["value"].rstrip("\n").splitlines()[-1]
    assert last and last in (run_dir / "log.txt").read_text()
    # The tick in the status is the newest tick line of log.txt.
    shot(pg, "train")

    pg.locator("#train-stop-btn").click()
    wait_text(pg, "#train-status", "STOPPED", 240)
    # Once the run stands still, the status's tick is log.txt's last tick line (not the next tick's number). While
    # it runs the page lags the log by up to one refresh, which on a fast machine is several ticks.
    status_tick = int(re.search(r"tick (\d+)", pg.locator("#train-status").inner_text()).group(1))
    logged = [int(m) for m in re.findall(r"^tick (\d+)", (run_dir / "log.txt").read_text(), re.M)]
    assert status_tick == logged[-1], (status_tick, logged[-3:])
    expect(pg.locator("#train-stop-btn")).to_be_hidden()
    expect(pg.locator("#train-resume-btn")).to_have_text(f"Resume run {short}")
    expect(pg.locator("#train-status")).to_contain_text(f"Resume run {short}")  # says how to continue
    status = json.loads((run_dir / "status.json").read_text())
    # Every snapshot kept its own file and a true name; the status names the one just written.
    from engine.checkpoint import load_snapshot
    from engine import runs

    snaps = runs.list_snapshots(run_dir)
    assert len(snaps) >= 2
    for named, path in snaps:
        nimg = int(load_snapshot(path)["progress"]["cur_nimg"])
        assert int(named) == nimg // 1000 and ("_" not in path.name or path.name.endswith(f"_{nimg % 1000:03d}.pt"))
    assert status["snapshot"] == snaps[-1][1].name
    expect(pg.locator("#train-status")).to_contain_text(status["snapshot"])
    # The newest grid is labelled with the kimg at which it was drawn.
    expect(pg.locator("#fakes-slider")).to_contain_text(f"at {status['kimg']:.3f} kimg")
    # The slider stands where its label says: "Grid n of n" at n, counting from 1.
    label = re.search(r"Grid (\d+) of (\d+)", pg.locator("#fakes-slider").inner_text())
    assert label and label[1] == label[2], pg.locator("#fakes-slider").inner_text()
    assert pg.locator("#fakes-slider input[type=number]").input_value() == label[1]

    # Resume keeps the run's length (the form shows it; nobody changed it), and says so at once.
    pg.locator("#train-resume-btn").click()
    expect(pg.locator(".toast-body").filter(has_text="Resuming run")).to_be_visible(timeout=30_000)
    wait_text(pg, "#train-status", "RUNNING", 240)
    expect(pg.locator("#train-status")).to_contain_text("of 30 kimg")
    assert json.loads((run_dir / "status.json").read_text())["total_kimg"] == 30
    wait_text(pg, "#train-status", "ETA", 60)  # a time left, or "measuring" until the resumed process timed a tick
    pg.locator("#train-stop-btn").click()
    wait_text(pg, "#train-status", "STOPPED", 240)
    expect(pg.locator("#train-runs")).to_contain_text("stopped")
    expect(pg.locator("#train-runs")).to_contain_text("/ 30")

    # Generate: the new run's newest snapshot is offered first, by run number, dataset and kimg; a grid, a GIF.
    pg.get_by_role("tab", name="Generate", exact=True).click()
    # (the list refreshes when the tab opens, through the same queue as the Train tab's polling: allow it time)
    expect(field(pg, "generate-network")).to_have_value(re.compile(r"^run 00000 · emoji16 · \d[\d.,]* kimg$"),
                                                        timeout=30_000)
    wait_text(pg, "#generate-info", "16 px RGB", 30)
    field(pg, "generate-seeds").fill("0-7")
    pg.locator("#generate-btn").click()
    expect(pg.locator("#generate-gallery img")).to_have_count(8, timeout=60_000)
    thumb = pg.locator("#generate-gallery img").first
    assert thumb.evaluate("e => getComputedStyle(e).imageRendering") == "pixelated"
    box = pg.locator("#generate-gallery").bounding_box()
    assert box["height"] < 1.6 * thumb.bounding_box()["height"] + 60  # no empty space under one row
    pg.locator("#video-btn").click()
    gif = pg.locator("#video-out img")
    expect(gif).to_be_visible(timeout=120_000)
    assert ".gif" in (gif.get_attribute("src") or "")
    no_error(pg)
    outputs = list((studio / "outputs").rglob("*.gif"))
    assert outputs and outputs[0].stat().st_size > 0
    pg.locator("#mix-btn").click()
    expect(pg.locator("#mix-img img")).to_be_visible(timeout=60_000)
    expect(pg.locator("#mix-img")).to_contain_text("layers 0-3 taken from each column's seed")

    # The built-in demo network (32 px emoji) makes the screenshot's grid.
    choose(pg, "generate-network", "Demo: emoji (built in)")
    wait_text(pg, "#generate-info", "32 px RGB", 30)
    field(pg, "generate-seeds").fill("0-15")
    pg.locator("#generate-btn").click()
    expect(pg.locator("#generate-gallery img")).to_have_count(16, timeout=60_000)
    for button, image in (("#video-btn", "#video-out img"), ("#mix-btn", "#mix-img img")):  # the demo's, too
        before = pg.locator(image).get_attribute("src")
        pg.locator(button).click()
        expect(pg.locator(image)).not_to_have_attribute("src", before, timeout=120_000)
    no_error(pg)
    shot(pg, "generate")

    pg.get_by_role("tab", name="System", exact=True).click()
    wait_text(pg, "#system-info", "bias_act", 30)
    shot(pg, "system")
