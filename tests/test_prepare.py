"""Dataset preparation: a messy corpus made here, the emoji source, CIFAR-10 and MNIST archives made by hand.

Every output image is checked against the picture it came from (the report traces each one).
"""

import argparse
import gzip
import io
import json
import os
import pickle
import struct
import subprocess
import sys
import tarfile
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from engine.data import imaging
from engine.data import prepare as prep
from engine.data.prepare import PrepareOptions
from engine.data import dataset as dataset_files
from engine.data.dataset import ImageDataset
from engine.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
RES = 16


# ----------------------------------------------------------------------------------------------------------------
# The corpus: every kind of picture users bring.


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def bomb_png() -> bytes:
    """A small PNG whose header claims 20000x20000 RGB pixels."""
    ihdr = struct.pack(">IIBBBBB", 20000, 20000, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\0" * 100)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")


def _save(im, path, **kw):
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path, **kw)


def make_corpus(root: Path) -> dict:
    """Writes the corpus under root; returns {relative name: what to expect}."""
    # CMYK JPEG of pure red.
    _save(Image.new("RGB", (40, 40), (255, 0, 0)).convert("CMYK"), root / "cats/cmyk.jpg", quality=95)
    # 16-bit grey at half scale: 8-bit 128, not the 255 a clipping conversion gives.
    _save(Image.fromarray(np.full((40, 40), 32896, np.uint16)), root / "cats/gray16.png")
    # Palette with a transparent index 0 around a blue square.
    pal = Image.new("P", (40, 40), 0)
    pal.putpalette([0, 0, 0, 0, 0, 255] + [0] * 762)
    pal.paste(1, (10, 10, 30, 30))
    _save(pal, root / "cats/palette_t.png", transparency=0)
    # Wide: 8 red columns at each side, green in the middle -> a centre crop is all green.
    wide = np.zeros((32, 48, 3), np.uint8)
    wide[:, :, 1] = 255
    wide[:, :8] = (255, 0, 0)
    wide[:, 40:] = (255, 0, 0)
    _save(Image.fromarray(wide), root / "cats/wide.png")
    # Tall: blue top and bottom quarters, yellow middle -> a centre crop is all yellow.
    tall = np.zeros((48, 24, 3), np.uint8)
    tall[:] = (255, 255, 0)
    tall[:12] = (0, 0, 255)
    tall[36:] = (0, 0, 255)
    _save(Image.fromarray(tall), root / "dogs/tall.png")
    (root / "cats/tall_copy.png").write_bytes((root / "dogs/tall.png").read_bytes())  # an exact duplicate
    # LA: grey 50, transparent left half.
    la = np.zeros((40, 40, 2), np.uint8)
    la[:, :, 0] = 50
    la[:, 20:, 1] = 255
    _save(Image.fromarray(la, "LA"), root / "dogs/la.png")
    # Animated GIF: magenta first frame, green second.
    frames = [Image.new("RGB", (40, 40), c).convert("P") for c in ((255, 0, 255), (0, 255, 0))]
    _save(frames[0], root / "dogs/anim.gif", save_all=True, append_images=frames[1:], duration=100, loop=0)
    # EXIF-rotated JPEG: stored 40x20, black left half, white right; orientation 6 shows it 20x40 black above white.
    stored = np.zeros((20, 40), np.uint8)
    stored[:, 20:] = 255
    exif = Image.Exif()
    exif[0x0112] = 6
    _save(Image.fromarray(stored).convert("RGB"), root / "dogs/exif_rot.jpg", quality=95, exif=exif.tobytes())
    # Nested deeper than the class folder: still class 'dogs'.
    _save(Image.new("RGB", (32, 32), (10, 20, 30)), root / "dogs/nested/deeper/deep.png")
    # The broken and the useless.
    noise = Image.fromarray(np.random.RandomState(0).randint(0, 256, (40, 40, 3), np.uint8))
    buf = io.BytesIO()
    noise.save(buf, "PNG")
    (root / "misc").mkdir(parents=True, exist_ok=True)
    (root / "misc/truncated.png").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    (root / "misc/zero.png").write_bytes(b"")
    (root / "misc/text.png").write_bytes(b"hello, this is not a picture\n")
    _save(Image.new("RGB", (1, 1), (1, 2, 3)), root / "misc/one.png")
    (root / "misc/bomb.png").write_bytes(bomb_png())
    # At the top: not in any class folder.
    _save(Image.new("RGB", (20, 20), (200, 100, 0)), root / "root.png")
    (root / "notes.txt").write_text("a note\n")
    (root / ".DS_Store").write_bytes(b"\0\1junk")  # hidden: never offered to the decoder
    return {
        "cats/cmyk.jpg": ("rgb", (255, 0, 0)),
        "cats/gray16.png": ("rgb", (128, 128, 128)),
        "cats/wide.png": ("rgb", (0, 255, 0)),
        "cats/tall_copy.png": ("rgb", (255, 255, 0)),
        "dogs/tall.png": ("rgb", (255, 255, 0)),
        "dogs/anim.gif": ("rgb", (255, 0, 255)),
        "dogs/nested/deeper/deep.png": ("rgb", (10, 20, 30)),
        "root.png": ("rgb", (200, 100, 0)),
    }


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus") / "pictures"
    expect = make_corpus(root)
    return root, expect


def read_zip_images(path) -> dict:
    """name -> PIL image, straight from the zip (not through our reader)."""
    out = {}
    with zipfile.ZipFile(path) as zf:
        for info in zf.infolist():
            assert info.compress_type == zipfile.ZIP_STORED, info.filename
            if info.filename.endswith(".png"):
                out[info.filename] = Image.open(io.BytesIO(zf.read(info))).copy()
    return out


def near(pixel, rgb, tol=12):
    return all(abs(int(a) - int(b)) <= tol for a, b in zip(pixel, rgb))


# ----------------------------------------------------------------------------------------------------------------


def test_messy_corpus_with_folder_labels_and_dedupe(corpus, tmp_path):
    root, expect = corpus
    calls = []
    res = prep.prepare(root, tmp_path / "out.zip", PrepareOptions(resolution=RES, labels="folders", dedupe=True), progress=lambda d, t: calls.append((d, t)))

    # Summary: 9 written; every other file skipped with its reason.
    assert res.written == 9
    assert res.skipped_by_reason == {
        "decompression-bomb": 1, "duplicate": 1, "no-label": 2, "not-an-image": 1, "too-small": 1, "truncated": 1, "zero-bytes": 1,
    }
    reasons = {s["path"]: s["reason"] for s in res.skipped}
    assert reasons == {
        "misc/bomb.png": "decompression-bomb", "dogs/tall.png": "duplicate", "root.png": "no-label", "notes.txt": "no-label",
        "misc/text.png": "not-an-image", "misc/one.png": "too-small", "misc/truncated.png": "truncated", "misc/zero.png": "zero-bytes",
    }
    assert "same pixels as cats/tall_copy.png" in next(s["detail"] for s in res.skipped if s["reason"] == "duplicate")
    assert "20000x20000 is 400 megapixels" in next(s["detail"] for s in res.skipped if s["reason"] == "decompression-bomb")
    assert res.summary_line.startswith("written 9 images (16x16 RGB)")
    assert "1 decompression-bomb" in res.summary_line and "skipped 8" in res.summary_line
    assert calls[-1] == (15, 15)  # the two top-level files were dropped while listing

    # The report beside the zip traces every output to its source.
    report = json.loads((tmp_path / "out.report.json").read_text())
    assert Path(res.report) == tmp_path / "out.report.json"
    assert report["written"] == 9 and report["skipped_by_reason"] == res.skipped_by_reason
    source_of = dict(report["files"])
    assert len(source_of) == 9

    # Layout: NVIDIA's names, in order, one shape and mode for all.
    images = read_zip_images(tmp_path / "out.zip")
    assert sorted(images) == [f"00000/img{i:08d}.png" for i in range(9)] == sorted(source_of)
    for name, im in images.items():
        assert im.size == (RES, RES) and im.mode == "RGB", (name, source_of[name], im.size, im.mode)

    # Labels: class = first folder, sorted class names kept.
    with zipfile.ZipFile(tmp_path / "out.zip") as zf:
        doc = json.loads(zf.read("dataset.json"))
    assert doc["class_names"] == ["cats", "dogs", "misc"]
    classes = {"cats": 0, "dogs": 1, "misc": 2}
    assert len(doc["labels"]) == 9
    for name, label in doc["labels"]:
        assert label == classes[source_of[name].split("/")[0]]

    # Image by image: the pixels came out as the picture meant them.
    by_source = {src: np.asarray(images[out]) for out, src in source_of.items()}
    for src, (_, rgb) in expect.items():
        if src in by_source:
            arr = by_source[src]
            assert near(arr[RES // 2, RES // 2], rgb, 20), (src, arr[RES // 2, RES // 2], rgb)
    # centre crops: no red from the wide picture's sides, no blue from the tall one's ends
    assert by_source["cats/wide.png"][:, :, 0].max() < 40
    assert by_source["cats/tall_copy.png"][:, :, 2].max() < 40
    # palette transparency -> white background around the blue square (not black, not an index map)
    pal = by_source["cats/palette_t.png"]
    assert near(pal[0, 0], (255, 255, 255), 2) and near(pal[RES // 2, RES // 2], (0, 0, 255), 2)
    # LA: transparent left half on white, grey 50 on the right
    la = by_source["dogs/la.png"]
    assert near(la[RES // 2, 1], (255, 255, 255), 2) and near(la[RES // 2, RES - 2], (50, 50, 50), 2)
    # EXIF orientation applied: black above white (unrotated it would be black left of white)
    ex = by_source["dogs/exif_rot.jpg"].mean(axis=2)
    assert ex[: RES // 2 - 2].mean() < 40 and ex[RES // 2 + 2 :].mean() > 215
    # 16-bit grey scaled, not clipped
    assert abs(int(by_source["cats/gray16.png"][3, 3, 0]) - 128) <= 1


def test_no_labels_grey_keeps_everything_usable(corpus, tmp_path):
    root, _ = corpus
    res = prep.prepare(root, tmp_path / "grey", PrepareOptions(resolution=RES, channels=1, labels="none", background="black"))
    assert res.written == 11  # the duplicate and the top-level picture are kept now
    assert res.skipped_by_reason == {"decompression-bomb": 1, "not-an-image": 2, "too-small": 1, "truncated": 1, "zero-bytes": 1}
    assert (tmp_path / "grey.report.json").is_file()
    doc = json.loads((tmp_path / "grey" / "dataset.json").read_text())
    assert doc == {"labels": None}
    files = sorted(p.relative_to(tmp_path / "grey").as_posix() for p in (tmp_path / "grey").rglob("*.png"))
    assert files == [f"00000/img{i:08d}.png" for i in range(11)]
    source_of = dict(json.loads((tmp_path / "grey.report.json").read_text())["files"])
    for f in files:
        im = Image.open(tmp_path / "grey" / f)
        assert im.mode == "L" and im.size == (RES, RES)
    la_out = next(o for o, s in source_of.items() if s == "dogs/la.png")
    la = np.asarray(Image.open(tmp_path / "grey" / la_out))
    assert la[RES // 2, 1] <= 2 and abs(int(la[RES // 2, RES - 2]) - 50) <= 2  # black background this time


def test_transforms_pad_stretch_wide(tmp_path):
    src = tmp_path / "src"
    wide = np.zeros((32, 64, 3), np.uint8)
    wide[:] = (0, 200, 0)
    wide[:, :8] = (200, 0, 0)
    _save(Image.fromarray(wide), src / "wide.png")

    def out(**kw):
        dest = tmp_path / f"o{len(list(tmp_path.iterdir()))}.zip"
        prep.prepare(src, dest, PrepareOptions(**kw))
        return np.asarray(next(iter(read_zip_images(dest).values())))

    padded = out(resolution=16, transform="pad", pad_color="#0000ff")
    assert near(padded[0, 8], (0, 0, 255), 2) and near(padded[15, 8], (0, 0, 255), 2)  # letterbox bars
    assert near(padded[8, 12], (0, 200, 0), 6) and near(padded[8, 0], (200, 0, 0), 20)  # whole picture inside
    stretched = out(resolution=16, transform="stretch", resize_filter="box")
    assert near(stretched[0, 0], (200, 0, 0), 2) and near(stretched[15, 15], (0, 200, 0), 2)
    assert near(stretched[0, 1], (200, 0, 0), 2)  # 8 of 64 columns -> 2 of 16 with a box filter
    widecrop = out(width=16, height=8, transform="center-crop-wide", min_size=1)
    assert near(widecrop[0, 8], (0, 0, 0), 2) and near(widecrop[15, 8], (0, 0, 0), 2)  # bars above and below
    assert near(widecrop[8, 12], (0, 200, 0), 6)
    cropped = out(resolution=16)
    assert cropped[:, :, 0].max() < 30  # centre crop drops the red left edge


def test_options_are_checked_with_one_clear_line(corpus, tmp_path):
    root, _ = corpus
    with pytest.raises(UserError, match="not a power of two"):
        prep.prepare(root, tmp_path / "a.zip", PrepareOptions(resolution=48))
    with pytest.raises(UserError, match="give --resolution"):
        prep.prepare(root, tmp_path / "a.zip", PrepareOptions())
    with pytest.raises(UserError, match="center-crop-wide needs --height"):
        prep.prepare(root, tmp_path / "a.zip", PrepareOptions(resolution=16, transform="center-crop-wide"))
    with pytest.raises(UserError, match="differs from the width"):
        prep.prepare(root, tmp_path / "a.zip", PrepareOptions(width=16, height=8))
    with pytest.raises(UserError, match="does not exist"):
        prep.prepare(tmp_path / "nothing-here", tmp_path / "a.zip", PrepareOptions(resolution=16))
    with pytest.raises(UserError, match="not a colour"):
        prep.prepare(root, tmp_path / "a.zip", PrepareOptions(resolution=16, background="blurple"))
    with pytest.raises(UserError, match="inside the source"):
        prep.prepare(root, root / "out.zip", PrepareOptions(resolution=16))
    with pytest.raises(UserError, match="no sub-folders"):
        prep.prepare(root / "misc", tmp_path / "a.zip", PrepareOptions(resolution=16, labels="folders"))
    assert not (tmp_path / "a.zip").exists()
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # no temporary left behind


def test_existing_dataset_is_never_overwritten_without_flag(tmp_path):
    src = tmp_path / "src"
    _save(Image.new("RGB", (16, 16), (1, 2, 3)), src / "a.png")
    dest = tmp_path / "d.zip"
    dest.write_bytes(b"precious")
    with pytest.raises(UserError, match="already exists; pass --overwrite"):
        prep.prepare(src, dest, PrepareOptions(resolution=8))
    assert dest.read_bytes() == b"precious"
    folder = tmp_path / "dfolder"
    folder.mkdir()
    (folder / "keep.txt").write_text("mine")
    with pytest.raises(UserError, match="not empty"):
        prep.prepare(src, folder, PrepareOptions(resolution=8))
    assert (folder / "keep.txt").read_text() == "mine"
    # --overwrite replaces, and an empty folder is fine without it
    assert prep.prepare(src, dest, PrepareOptions(resolution=8, overwrite=True)).written == 1
    assert len(read_zip_images(dest)) == 1
    empty = tmp_path / "empty"
    empty.mkdir()
    assert prep.prepare(src, empty, PrepareOptions(resolution=8)).written == 1


def test_nothing_written_is_an_error_and_touches_nothing(tmp_path):
    src = tmp_path / "junk"
    src.mkdir()
    (src / "a.png").write_bytes(b"")
    (src / "b.jpg").write_text("not a jpeg")
    dest = tmp_path / "x.zip"
    with pytest.raises(UserError, match=r"no image was written .*skipped 2: 1 not-an-image, 1 zero-bytes"):
        prep.prepare(src, dest, PrepareOptions(resolution=8))
    assert not dest.exists()
    report = json.loads((tmp_path / "x.report.json").read_text())
    assert report["written"] == 0 and len(report["skipped"]) == 2
    # an existing dataset stays, report and all, when a new run writes nothing
    good = tmp_path / "good"
    _save(Image.new("RGB", (16, 16)), good / "a.png")
    prep.prepare(good, tmp_path / "y.zip", PrepareOptions(resolution=8))
    before = (tmp_path / "y.zip").read_bytes(), (tmp_path / "y.report.json").read_bytes()
    with pytest.raises(UserError, match="no image was written"):
        prep.prepare(src, tmp_path / "y.zip", PrepareOptions(resolution=8, overwrite=True))
    assert ((tmp_path / "y.zip").read_bytes(), (tmp_path / "y.report.json").read_bytes()) == before


def test_zip_source_with_json_labels_round_trip(corpus, tmp_path):
    root, _ = corpus
    first = prep.prepare(root, tmp_path / "first.zip", PrepareOptions(resolution=RES, labels="folders"))
    again = prep.prepare(tmp_path / "first.zip", tmp_path / "second", PrepareOptions(resolution=8, labels="auto"))
    assert again.label_mode == "json" and again.written == first.written
    assert again.class_names == ["cats", "dogs", "misc"]
    ds1 = ImageDataset(tmp_path / "first.zip", use_labels=True)
    ds2 = ImageDataset(tmp_path / "second", use_labels=True)
    assert [ds1.get_label(i).argmax() for i in range(len(ds1))] == [ds2.get_label(i).argmax() for i in range(len(ds2))]
    assert ds2.image_shape == [3, 8, 8] and ds1.image_shape == [3, 16, 16]
    ds1.close()


@pytest.mark.slow
def test_emoji_source_in_parallel_with_max_images_and_shuffle(tmp_path):
    a = prep.prepare("emoji", tmp_path / "a.zip", PrepareOptions(resolution=16, max_images=40, workers=2, shuffle_seed=3))
    b = prep.prepare("emoji", tmp_path / "b.zip", PrepareOptions(resolution=16, max_images=40, workers=2, shuffle_seed=3))
    c = prep.prepare("emoji", tmp_path / "c.zip", PrepareOptions(resolution=16, max_images=40, workers=2))
    assert a.written == b.written == c.written == 40 and not a.skipped
    assert (tmp_path / "a.zip").read_bytes() == (tmp_path / "b.zip").read_bytes()  # deterministic
    files_a = [s for _, s in json.loads((tmp_path / "a.report.json").read_text())["files"]]
    files_c = [s for _, s in json.loads((tmp_path / "c.report.json").read_text())["files"]]
    assert files_c == sorted(files_c) and files_a != files_c and all(f.startswith("emoji/") for f in files_a)
    images = read_zip_images(tmp_path / "c.zip")
    assert len(images) == 40 and all(im.size == (16, 16) and im.mode == "RGB" for im in images.values())
    # where an emoji is transparent, the output is the white background
    from engine.data.sources import emoji_dir

    shuffled = read_zip_images(tmp_path / "a.zip")
    checked = 0
    for out, src in json.loads((tmp_path / "a.report.json").read_text())["files"]:
        alpha = np.asarray(Image.open(emoji_dir() / src.split("/", 1)[1]).convert("RGBA"))[:, :, 3]
        if alpha[:14, :14].max() == 0:  # 72 px -> 16 px: output pixel (0, 0) comes from the top-left 14x14
            assert np.asarray(shuffled[out])[0, 0].min() >= 250, src
            checked += 1
    assert checked >= 5


def test_decoder_crash_skips_only_that_picture(tmp_path, monkeypatch):
    src = tmp_path / "src"
    for i in range(40):
        _save(Image.new("RGB", (16, 16), (i, i, i)), src / f"{i:02d}.png")
    real = imaging.process_item

    def crashing(item, opts):
        if item.name == "17.png":
            os._exit(3)  # a decoder dying in C code looks like this from outside
        return real(item, opts)

    monkeypatch.setattr(imaging, "process_item", crashing)
    monkeypatch.setattr(prep, "_mp_context", lambda: __import__("multiprocessing").get_context("fork"))
    res = prep.prepare(src, tmp_path / "out.zip", PrepareOptions(resolution=8, workers=2))
    assert res.written == 39
    assert [(s["path"], s["reason"]) for s in res.skipped] == [("17.png", "decoder-crashed")]
    sources = [s for _, s in json.loads((tmp_path / "out.report.json").read_text())["files"]]
    assert sources == [f"{i:02d}.png" for i in range(40) if i != 17]


# ----------------------------------------------------------------------------------------------------------------
# NVIDIA's other sources: CIFAR-10 python tarball, MNIST idx.gz.


def make_cifar(path: Path, per_batch=2):
    rng = np.random.RandomState(1)
    batches = {}
    with tarfile.open(path, "w:gz") as tf:
        def add(name, obj):
            data = pickle.dumps(obj, protocol=2)
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))

        for b in range(1, 6):
            x = rng.randint(0, 256, (per_batch, 3072)).astype(np.uint8)
            y = [int(v) for v in rng.randint(0, 10, per_batch)]
            batches[b] = (x, y)
            add(f"data_batch_{b}", {"batch_label": "training batch", "data": x, "labels": y})
        add("batches.meta", {"label_names": ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]})
    return batches


def test_cifar_tarball(tmp_path):
    batches = make_cifar(tmp_path / "cifar-10-python.tar.gz")
    res = prep.prepare(tmp_path / "cifar-10-python.tar.gz", tmp_path / "cifar.zip", PrepareOptions(resolution=32))
    assert res.written == 10 and res.label_mode == "builtin" and res.class_names[3] == "cat"
    ds = ImageDataset(tmp_path / "cifar.zip", use_labels=True)
    assert len(ds) == 10 and ds.label_dim == 10 and ds.class_names[9] == "truck"
    k = 0
    for b in range(1, 6):
        x, y = batches[b]
        for row in range(len(y)):
            img, label = ds[k]
            assert np.array_equal(img, x[row].reshape(3, 32, 32))  # exact pixels, channel order kept
            assert label.argmax() == y[row] and label.sum() == 1
            k += 1
    ds.close()
    s = dataset_files.summary(tmp_path / "cifar.zip")
    assert s["count"] == 10 and s["num_classes"] == 10 and sum(s["class_counts"].values()) == 10


def test_cifar_pickle_that_runs_code_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo owned > " + str(tmp_path / "owned"),))

    with tarfile.open(tmp_path / "evil.tar.gz", "w:gz") as tf:
        data = pickle.dumps({"data": Evil(), "labels": []}, protocol=2)
        info = tarfile.TarInfo("cifar-10-batches-py/data_batch_1")
        info.size = len(data)
        tf.addfile(info, io.BytesIO(data))
    with pytest.raises(UserError, match="not a CIFAR-10 python batch"):
        prep.prepare(tmp_path / "evil.tar.gz", tmp_path / "e.zip", PrepareOptions(resolution=32))
    assert not (tmp_path / "owned").exists()


def write_idx(path: Path, arr: np.ndarray):
    head = struct.pack(">BBBB", 0, 0, 8, arr.ndim) + struct.pack(">" + "I" * arr.ndim, *arr.shape)
    with gzip.open(path, "wb") as f:
        f.write(head + arr.astype(np.uint8).tobytes())


def test_mnist_idx_gz_over_two_folders(tmp_path):
    n = 1003
    rng = np.random.RandomState(2)
    x = rng.randint(0, 256, (n, 28, 28))
    y = rng.randint(0, 10, n)
    write_idx(tmp_path / "train-images-idx3-ubyte.gz", x)
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", y)
    res = prep.prepare(tmp_path / "train-images-idx3-ubyte.gz", tmp_path / "mnist.zip", PrepareOptions(resolution=4, channels=1, workers=2))
    assert res.written == n and res.class_names == [str(i) for i in range(10)]
    with zipfile.ZipFile(tmp_path / "mnist.zip") as zf:
        names = set(zf.namelist())
        doc = json.loads(zf.read("dataset.json"))
    assert "00000/img00000999.png" in names and "00001/img00001000.png" in names and "00001/img00001002.png" in names
    assert [lab for _, lab in doc["labels"]] == y.tolist()
    ds = ImageDataset(tmp_path / "mnist.zip", use_labels=True)
    assert ds.image_shape == [1, 4, 4] and ds.label_dim == 10 and ds[1002][1].argmax() == y[1002]
    ds.close()
    with pytest.raises(UserError, match="labels file"):
        prep.prepare(tmp_path / "train-labels-idx1-ubyte.gz", tmp_path / "m2.zip", PrepareOptions(resolution=4))


# ----------------------------------------------------------------------------------------------------------------
# Reading back for the dashboard, and the command line.


def test_summary_and_preview_grid(corpus, tmp_path):
    root, _ = corpus
    prep.prepare(root, tmp_path / "s.zip", PrepareOptions(resolution=RES, labels="folders"))
    s = dataset_files.summary(tmp_path / "s.zip")
    assert s["count"] == 10 and s["resolution"] == RES and s["channels"] == 3
    assert s["class_names"] == ["cats", "dogs", "misc"] and s["num_classes"] == 3 and s["label_dim"] == 3
    assert s["class_counts"] == {"cats": 5, "dogs": 5, "misc": 0}
    assert s["skipped_by_reason"]["no-label"] == 2 and s["kind"] == "zip"
    grid = dataset_files.preview_grid(tmp_path / "s.zip", rows=2, cols=4)
    assert grid.size == (4 * RES, 2 * RES) and grid.mode == "RGB"
    small = dataset_files.preview_grid(tmp_path / "s.zip", rows=5, cols=5, cell=8)
    assert small.size == (5 * 8, 2 * 8)  # 10 images fill two rows of five


def _cli(argv):
    from engine.commands import prepare as cmd

    parser = argparse.ArgumentParser()
    cmd.add_arguments(parser)
    return cmd.run(parser.parse_args(argv))


def test_cli_arguments_reach_prepare(corpus, tmp_path, capsys):
    root, _ = corpus
    code = _cli(["--source", str(root), "--dest", str(tmp_path / "c.zip"), "--resolution", "8", "--labels", "folders",
                 "--dedupe", "--no-progress", "--max-images", "3", "--channels", "1"])
    assert code == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith("written 3 images (8x8 grey)") and "report:" in line
    images = read_zip_images(tmp_path / "c.zip")
    assert len(images) == 3 and {im.mode for im in images.values()} == {"L"}


def test_python_m_engine_prepare_exit_codes(corpus, tmp_path):
    root, _ = corpus
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    ok = subprocess.run([sys.executable, "-m", "engine", "prepare", "--source", str(root), "--dest", str(tmp_path / "o.zip"),
                         "--resolution", "8", "--no-progress"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.startswith("written 11 images")
    bad = subprocess.run([sys.executable, "-m", "engine", "prepare", "--source", str(root), "--dest", str(tmp_path / "o.zip"),
                          "--resolution", "8"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert bad.returncode != 0 and bad.stderr.strip().splitlines()[-1].startswith("error: --dest")
    assert "Traceback" not in bad.stderr
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "x.png").write_text("no")
    none = subprocess.run([sys.executable, "-m", "engine", "prepare", "--source", str(junk), "--dest", str(tmp_path / "n.zip"),
                           "--resolution", "8", "--no-progress"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert none.returncode != 0 and "no image was written" in none.stderr and "Traceback" not in none.stderr


def test_called_from_a_thread_like_the_dashboard(tmp_path):
    """With other threads alive, workers come from a forkserver rather than a fork of this process."""
    import threading

    out, seen = {}, []

    def job():
        try:
            out["res"] = prep.prepare("emoji", tmp_path / "t.zip", PrepareOptions(resolution=8, max_images=40, workers=2), progress=lambda d, t: seen.append((d, t)))
        except BaseException as e:  # reported below, in the test's thread
            out["err"] = e

    t = threading.Thread(target=job)
    t.start()
    t.join(120)
    assert "err" not in out, out.get("err")
    assert out["res"].written == 40 and seen[-1] == (40, 40)
    assert len(read_zip_images(tmp_path / "t.zip")) == 40
