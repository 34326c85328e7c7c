"""The Explore tab through gradio_client against a real server: live view, directions, projection, library."""

import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
from gradio_client import handle_file
from PIL import Image

from test_ui_api import save_network, start, tiny_generator

NET = "uploaded / tiny16.pt"


@pytest.fixture(scope="module")
def served():
    d = Path(tempfile.mkdtemp(prefix="studio-explore-test-"))
    work = d / "studio"
    net_dir = work / "uploads" / "networks"
    net_dir.mkdir(parents=True)
    save_network(tiny_generator(), net_dir / "tiny16.pt")
    save_network(tiny_generator(res=8), net_dir / "tiny8.pt")
    studio, demo, client = start(work)
    yield studio, client, d
    demo.close()
    shutil.rmtree(d, ignore_errors=True)


def _img(out):
    path = out if isinstance(out, str) else out["path"]
    return np.asarray(Image.open(path))


@pytest.mark.slow
def test_explore_journey(served):
    studio, client, d = served
    sliders = [0.0] * 5
    live = lambda seed, *s: client.predict(NET, seed, 0.7, "const", None, "all", *s, api_name="/explore_live")
    img0, lat = live(3.0, *sliders)
    assert "ms" in lat
    img_half = live(3.5, *sliders)[0]
    assert _img(img0).shape == (16, 16, 3)
    assert not np.array_equal(_img(img0), _img(img_half))  # a fractional seed is a new image
    found = client.predict(NET, "sefa", "all", None, api_name="/explore_find")
    assert all(isinstance(v, (dict, float, int)) for v in found)
    img_edit = live(3.5, 4.0, 0, 0, 0, 0)[0]
    assert not np.array_equal(_img(img_half), _img(img_edit))  # the direction slider moves the image
    status = client.predict(NET, "edited", 3.5, 0.7, None, "const", "all", 4.0, 0, 0, 0, 0, api_name="/explore_save")
    assert "saved 'edited' (edit)" in status[0]
    pic = d / "photo.png"
    Image.fromarray(np.random.RandomState(1).randint(0, 255, [20, 28, 3]).astype(np.uint8)).save(pic)
    out = client.predict(NET, handle_file(str(pic)), 10, "w", "pixel", None, "const", api_name="/explore_project")
    assert "step 10/10" in out[1] and "pixels" in out[1]
    assert _img(out[0]).shape == (16, 32, 3)  # target beside the projection
    status = client.predict(NET, "my photo", 3.5, 0.7, None, "const", "all", 0, 0, 0, 0, 0, api_name="/explore_save")
    assert "saved 'my photo' (projection)" in status[0]
    assert (studio.workdir / "latents" / "my photo.npz").is_file()
    gif = client.predict(NET, 0, "-3,3", 6, "all", "const", api_name="/explore_gif")
    assert Image.open(gif if isinstance(gif, str) else gif["path"]).n_frames == 6
    walk = client.predict(NET, "edited,my photo", True, "const", api_name="/explore_walk")
    assert Image.open(walk if isinstance(walk, str) else walk["path"]).n_frames == 32  # 2 keys x 16, looped
    loaded = client.predict(NET, "my photo", "const", api_name="/explore_load")
    assert "saved latent my photo" in loaded[1]
    with pytest.raises(Exception, match="another network"):
        client.predict("uploaded / tiny8.pt", "my photo", "const", api_name="/explore_load")
    with pytest.raises(Exception, match="not a picture"):
        (d / "notes.png").write_text("hello")
        client.predict(NET, handle_file(str(d / "notes.png")), 10, "w", "pixel", None, "const",
                       api_name="/explore_project")
