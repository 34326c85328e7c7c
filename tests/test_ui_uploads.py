"""A visitor's uploads in the shared dashboard: never kept after prepare, never served as an active document,
and /config never shows the app's folder."""

import shutil
import socket
import tempfile
import zipfile
from pathlib import Path

import httpx
import pytest
from gradio_client import Client, handle_file
from PIL import Image

import app as studio_app
from ui.common import Studio
from ui.data_tab import SRC_UPLOAD

LABELS_AUTO = "Automatic (the source's own, if any)"
SVG = b"<svg xmlns='http://www.w3.org/2000/svg'><script>alert(document.domain)</script></svg>"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def shared():
    d = Path(tempfile.mkdtemp(prefix="studio-upload-test-"))
    work = d / "studio"
    # Left behind by a prepare that never finished, and an uploaded network that must stay.
    (work / "uploads" / "old-images").mkdir(parents=True)
    (work / "uploads" / "old-images" / "x.svg").write_bytes(SVG)
    (work / "uploads" / "networks").mkdir()
    (work / "uploads" / "networks" / "keep.pt").write_bytes(b"kept")
    studio = Studio(work, shared=True, max_upload_mb=5)
    demo = studio_app.serve(studio, "127.0.0.1", free_port())
    client = Client(demo.local_url, verbose=False, download_files=str(d / "_client"))
    yield studio, demo, client, d
    demo.close()
    shutil.rmtree(d, ignore_errors=True)


def prepare(client, name, files):
    return client.predict(SRC_UPLOAD, [handle_file(str(f)) for f in files], "", name, 16, 48, "center-crop", "RGB",
                          LABELS_AUTO, False, api_name="/prepare")


def test_stale_dataset_uploads_are_removed_at_start_up(shared):
    studio, *_ = shared
    assert not (studio.uploads_dir / "old-images").exists()
    assert (studio.uploads_dir / "networks" / "keep.pt").read_bytes() == b"kept"


def test_rejected_upload_is_not_kept(shared):
    studio, _, client, d = shared
    svg = d / "pic.svg"
    svg.write_bytes(SVG)
    with pytest.raises(Exception):
        prepare(client, "evil", [svg])
    assert not (studio.datasets_dir / "evil.zip").exists()
    assert sorted(p.name for p in studio.uploads_dir.iterdir()) == ["networks"]


def test_used_upload_is_removed_after_prepare(shared):
    studio, _, client, d = shared
    z = d / "pics.zip"
    with zipfile.ZipFile(z, "w") as zf:
        for i in range(4):
            img = d / f"{i}.png"
            Image.new("RGB", (16, 16), (60 * i, 10, 200)).save(img)
            zf.write(img, img.name)
    prepare(client, "good", [z])
    assert (studio.datasets_dir / "good.zip").is_file()
    assert sorted(p.name for p in studio.uploads_dir.iterdir()) == ["networks"]


@pytest.mark.parametrize("name,body", [("a.svg", SVG), ("a.html", b"<script>alert(1)</script>"),
                                       ("a.xml", b"<?xml version='1.0'?><x/>"), ("a.js", b"alert(1)")])
def test_active_files_are_served_as_attachments(shared, name, body):
    studio, demo, _, _ = shared
    planted = studio.outputs_dir / name  # any file of the workdir a visitor might have put there
    planted.write_bytes(body)
    r = httpx.get(f"{demo.local_url}gradio_api/file={planted}")
    assert r.status_code == 200 and r.content == body
    assert r.headers["content-type"] == "application/octet-stream"
    assert r.headers["content-disposition"] == "attachment"
    assert r.headers["x-content-type-options"] == "nosniff"
    assert "sandbox" in r.headers["content-security-policy"]


def test_uploaded_svg_in_gradios_cache_is_an_attachment(shared):
    _, demo, _, _ = shared
    up = httpx.post(f"{demo.local_url}gradio_api/upload", files={"files": ("x.svg", SVG, "image/svg+xml")})
    assert up.status_code == 200, up.text
    path = up.json()[0]
    r = httpx.get(f"{demo.local_url}gradio_api/file={path}")
    assert r.status_code == 200 and r.content == SVG
    assert r.headers["content-type"] == "application/octet-stream"
    assert r.headers["content-disposition"].startswith("attachment")


def test_images_are_still_served_as_images(shared):
    studio, demo, _, _ = shared
    png = studio.outputs_dir / "ok.png"
    Image.new("RGB", (4, 4)).save(png)
    r = httpx.get(f"{demo.local_url}gradio_api/file={png}")
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert "content-disposition" not in r.headers or "attachment" not in r.headers["content-disposition"]
    assert r.headers["x-content-type-options"] == "nosniff"


def test_config_does_not_reveal_the_app_folder(shared):
    _, demo, _, _ = shared
    cfg = httpx.get(f"{demo.local_url}config").text
    assert "studio-logo" in cfg and "data:image/svg+xml;base64," in cfg  # the logo is still there, inlined
    assert str(studio_app.ROOT) not in cfg
