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


def _save_latents(studio, net_name, names):
    """Saved latents of the uploaded network `net_name` (seeds 10, 11, ...), written as the Explore tab does."""
    from engine import latents
    from engine.checkpoint import load_network
    from engine.generate import seeds_to_ws

    G = load_network(str(studio.uploads_dir / "networks" / net_name), device="cpu")["G_ema"]
    folder = latents.library_folder(studio.workdir)
    for i, name in enumerate(names):
        latents.save_latent(folder, name, seeds_to_ws(G, [10 + i], psi=0.7), G, "seed", seed=10 + i, psi=0.7)
    return G


def test_generate_tab_uses_saved_latents(served):
    from engine.generate import synthesize
    from test_ui_api import item_path, predict

    studio, client, d = served
    G = _save_latents(studio, "tiny16.pt", ["lib a", "lib b"])
    _save_latents(studio, "tiny8.pt", ["small one"])
    # The four lists offer the latents of the picked network only; a pick of another network's latent is dropped.
    lists = client.predict(NET, ["lib a"], [], [], ["small one"], api_name="/saved_latents")
    for x in lists:
        names = {c[0] if isinstance(c, (list, tuple)) else c for c in x["choices"]}
        assert names >= {"lib a", "lib b"} and "small one" not in names
    assert [x["value"] for x in lists] == [["lib a"], [], [], []]

    # Grid: the seeds, then the saved latents, each exactly the picture its latent makes.
    from engine import latents

    want = synthesize(G, latents.load_many(latents.library_folder(studio.workdir), ["lib b", "lib a"], G))
    gallery, files = predict(client, "/generate", NET, "0-1", 0.7, None, "const", ["lib b", "lib a"])
    assert [g["caption"] if isinstance(g, dict) else g[1] for g in gallery][1:] == ["seed 1", "latent lib b",
                                                                                   "latent lib a"]
    assert np.array_equal(_img(item_path(gallery[2])), want[0])
    assert np.array_equal(_img(item_path(gallery[3])), want[1])
    only, _ = predict(client, "/generate", NET, "", 0.7, None, "const", ["lib a"])
    assert len(only) == 1 and np.array_equal(_img(item_path(only[0])), want[1])

    # Video: a looped walk through the saved latents, in the order chosen; the seeds are not used.
    gif, _, vfile = predict(client, "/video", NET, "0-5", 4, 10, "z", "cubic", True, "GIF", 0.7, None, "const",
                            ["lib a", "lib b"])
    path = gif if isinstance(gif, str) else gif["path"]
    assert "walk-lib-a-lib-b" in path
    with Image.open(path) as im:
        assert im.n_frames == 8  # 2 keys x 4 frames, looped
        assert np.array_equal(np.asarray(im.convert("RGB")), want[1])  # starts on the first chosen latent
    with pytest.raises(Exception, match="linear or cubic"):
        predict(client, "/video", NET, "", 4, 10, "z", "slerp", True, "GIF", 0.7, None, "const", ["lib a", "lib b"])
    with pytest.raises(Exception, match="at least two"):
        predict(client, "/video", NET, "", 4, 10, "w", "cubic", True, "GIF", 0.7, None, "const", ["lib a"])

    # Style mixing: saved latents as rows (after a seed) and as the only column, labelled by name.
    mix = predict(client, "/mix", NET, "85", "", "0-1", 0.7, "const", ["lib a"], ["lib b"])
    grid = _img(mix)
    assert grid.shape[0] > 3 * 16 and grid.shape[1] > 2 * 16  # 3 rows (header, seed 85, lib a) x 2 columns
    plain = _img(str(sorted(studio.outputs_dir.glob("*-mix*/style-mix.png"))[-1]))
    assert plain.shape == (3 * 16, 2 * 16, 3)
    assert np.array_equal(plain[32:, :16], want[1])  # the row header of 'lib a' is its own picture

    # A latent of another network: one clear line, in each section.
    for api, args in (("/generate", (NET, "0", 0.7, None, "const", ["small one"])),
                      ("/video", (NET, "", 4, 10, "w", "cubic", True, "GIF", 0.7, None, "const",
                                  ["lib a", "small one"])),
                      ("/mix", (NET, "1", "", "0-1", 0.7, "const", [], ["small one"]))):
        with pytest.raises(Exception, match="made for another network") as e:
            predict(client, api, *args)
        assert "\n" not in str(e.value).strip()
