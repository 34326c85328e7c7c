"""engine.media: grids, PNGs of any channel count, the labelled style-mixing figure, GIF and MP4 files."""

import numpy as np
import pytest
from PIL import Image

from engine import media
from engine.errors import UserError


def test_make_grid_layout_row_by_row():
    imgs = [np.full((2, 3, 1), i * 10, np.uint8) for i in range(5)]
    grid = media.make_grid(imgs, 3, 2)
    assert grid.shape == (4, 9, 1)
    assert grid[0, 0, 0] == 0 and grid[0, 3, 0] == 10 and grid[0, 6, 0] == 20
    assert grid[2, 0, 0] == 30 and grid[2, 3, 0] == 40
    assert (grid[2:, 6:] == 0).all()  # empty cell
    with pytest.raises(UserError):
        media.make_grid(imgs, 2, 2)


@pytest.mark.parametrize("channels,mode", [(1, "L"), (3, "RGB"), (4, "RGBA")])
def test_save_image_modes(tmp_path, channels, mode):
    arr = np.random.RandomState(0).randint(0, 256, (8, 8, channels)).astype(np.uint8)
    path = media.save_image(arr, tmp_path / "sub" / "x.png")
    with Image.open(path) as im:
        assert im.mode == mode
        back = np.asarray(im)
    assert np.array_equal(back.reshape(arr.shape), arr)


def test_save_image_refuses_unwritable_place(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(UserError, match="cannot write"):
        media.save_image(np.zeros((4, 4, 3), np.uint8), tmp_path / "f" / "x.png")


def test_check_can_write(tmp_path):
    p = tmp_path / "a.png"
    media.check_can_write([p])
    p.write_bytes(b"keep")
    with pytest.raises(UserError, match="already exists.*--overwrite"):
        media.check_can_write([p, tmp_path / "b.png"])
    media.check_can_write([p], overwrite=True)
    assert p.read_bytes() == b"keep"


def _frames(n, h=16, w=16, c=3):
    rs = np.random.RandomState(0)
    return [np.clip(rs.randint(0, 256, (h, w, c)), 0, 255).astype(np.uint8) for _ in range(n)]


@pytest.mark.parametrize("channels", [1, 3, 4])
def test_gif_loops_forever(tmp_path, channels):
    path = media.write_video(iter(_frames(5, c=channels)), tmp_path / "a.gif", fps=20)
    with Image.open(path) as im:
        assert im.n_frames == 5
        assert im.info.get("loop") == 0
        assert im.info.get("duration") == 50
        assert im.size == (16, 16)


def test_mp4_is_h264_yuv420p_with_even_size(tmp_path):
    import subprocess

    import imageio_ffmpeg

    path = media.write_video(iter(_frames(6, h=15, w=17, c=1)), tmp_path / "a.mp4", fps=12)
    reader = imageio_ffmpeg.read_frames(str(path))
    meta = next(reader)
    count = sum(1 for _ in reader)
    assert count == 6
    assert meta["size"] == (18, 16)
    probe = subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-i", str(path)],
                           capture_output=True, text=True)
    assert "h264" in probe.stderr and "yuv420p" in probe.stderr


def test_video_writer_rejects_bad_output(tmp_path):
    with pytest.raises(UserError, match=r"\.gif or \.mp4"):
        media.write_video(_frames(2), tmp_path / "a.avi")
    with pytest.raises(UserError, match="fps"):
        media.write_video(_frames(2), tmp_path / "a.gif", fps=0)
    (tmp_path / "blocker").write_text("x")
    with pytest.raises(UserError, match="cannot write"):
        media.write_video(_frames(2), tmp_path / "blocker" / "a.gif")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["blocker"]
