"""Reading prepared datasets: ours and NVIDIA's layout, zip and folder, labels, x-flip, subsets, DataLoader workers."""

import io
import json
import pickle
import zipfile

import numpy as np
import pytest
from PIL import Image

from engine.data.dataset import ImageDataset
from engine.errors import UserError


def nvidia_dataset(root, n=12, res=8, channels=3, labels=None, as_zip=False):
    """A dataset laid out as NVIDIA's dataset_tool writes it, built by hand. Returns the pixel arrays [N, C, H, W]."""
    rng = np.random.RandomState(5)
    arrays = rng.randint(0, 256, (n, channels, res, res)).astype(np.uint8)
    files = {}
    for i, a in enumerate(arrays):
        im = Image.fromarray(a[0] if channels == 1 else a.transpose(1, 2, 0))
        buf = io.BytesIO()
        im.save(buf, "PNG")
        files[f"{i // 1000:05d}/img{i:08d}.png"] = buf.getvalue()
    names = sorted(files)
    doc = {"labels": None if labels is None else [[names[i], labels[i]] for i in range(n)]}
    files["dataset.json"] = json.dumps(doc).encode()
    if as_zip:
        with zipfile.ZipFile(root, "w", zipfile.ZIP_STORED) as zf:
            for k, v in files.items():
                zf.writestr(k, v)
    else:
        for k, v in files.items():
            (root / k).parent.mkdir(parents=True, exist_ok=True)
            (root / k).write_bytes(v)
    return arrays


@pytest.mark.parametrize("as_zip", [False, True])
def test_reads_nvidia_layout_with_int_labels(tmp_path, as_zip):
    path = tmp_path / ("d.zip" if as_zip else "d")
    if not as_zip:
        path.mkdir()
    labels = [3, 0, 1, 3, 2, 0, 1, 1, 0, 2, 3, 4]
    arrays = nvidia_dataset(path, labels=labels, as_zip=as_zip)
    ds = ImageDataset(path, use_labels=True)
    assert len(ds) == 12 and ds.image_shape == [3, 8, 8] and ds.resolution == 8 and ds.num_channels == 3
    assert ds.label_dim == 5 and ds.label_shape == [5] and ds.has_labels and ds.has_onehot_labels
    assert ds.name == "d"
    for i in range(12):
        img, label = ds[i]
        assert img.dtype == np.uint8 and np.array_equal(img, arrays[i])
        assert label.dtype == np.float32 and label.tolist() == np.eye(5, dtype=np.float32)[labels[i]].tolist()
    no_labels = ImageDataset(path)
    assert no_labels.label_dim == 0 and not no_labels.has_labels and no_labels[0][1].shape == (0,)


def test_float_labels_and_grey(tmp_path):
    labels = [[0.5, -1.0], [2.0, 0.25], [0.0, 0.0]]
    arrays = nvidia_dataset(tmp_path, n=3, channels=1, labels=labels)
    ds = ImageDataset(tmp_path, use_labels=True)
    assert ds.image_shape == [1, 8, 8] and ds.label_dim == 2 and not ds.has_onehot_labels
    img, label = ds[1]
    assert np.array_equal(img, arrays[1]) and label.tolist() == [2.0, 0.25]


def test_xflip_doubles_and_mirrors(tmp_path):
    arrays = nvidia_dataset(tmp_path, n=5, labels=[0, 1, 2, 0, 1])
    ds = ImageDataset(tmp_path, use_labels=True, xflip=True)
    assert len(ds) == 10
    for i in range(5):
        assert np.array_equal(ds[i][0], arrays[i])
        assert np.array_equal(ds[i + 5][0], arrays[i][:, :, ::-1])
        assert ds[i + 5][0].flags["C_CONTIGUOUS"]
        assert np.array_equal(ds[i][1], ds[i + 5][1])


def test_max_size_subset_is_seeded_and_sorted(tmp_path):
    arrays = nvidia_dataset(tmp_path, n=12)
    a = ImageDataset(tmp_path, max_size=5, random_seed=1)
    b = ImageDataset(tmp_path, max_size=5, random_seed=1)
    c = ImageDataset(tmp_path, max_size=5, random_seed=2)
    assert len(a) == 5
    picked = [next(j for j in range(12) if np.array_equal(a[i][0], arrays[j])) for i in range(5)]
    assert picked == sorted(picked)
    assert picked == np.sort(np.random.RandomState(1).permutation(12)[:5]).tolist()  # NVIDIA's rule
    assert all(np.array_equal(a[i][0], b[i][0]) for i in range(5))
    assert any(not np.array_equal(a[i][0], c[i][0]) for i in range(5))
    assert len(ImageDataset(tmp_path, max_size=50)) == 12


def test_clear_errors(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        ImageDataset(tmp_path / "missing.zip")
    (tmp_path / "notzip.zip").write_text("hello")
    with pytest.raises(UserError, match="neither a folder nor a zip"):
        ImageDataset(tmp_path / "notzip.zip")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no image files"):
        ImageDataset(tmp_path / "empty")
    good = tmp_path / "good"
    good.mkdir()
    nvidia_dataset(good, n=2)
    with pytest.raises(UserError, match="is 8x8 but resolution 16"):
        ImageDataset(good, resolution=16)
    rect = tmp_path / "rect"
    rect.mkdir()
    Image.new("RGB", (8, 4)).save(rect / "a.png")
    with pytest.raises(UserError, match="square"):
        ImageDataset(rect)
    odd = tmp_path / "odd"
    odd.mkdir()
    Image.new("RGB", (12, 12)).save(odd / "a.png")
    with pytest.raises(UserError, match="power of two"):
        ImageDataset(odd)
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    Image.new("RGB", (8, 8)).save(mixed / "a.png")
    Image.new("RGB", (16, 16)).save(mixed / "b.png")
    ds = ImageDataset(mixed)
    with pytest.raises(UserError, match="b.png is 16x16"):
        ds[1]
    partial = tmp_path / "partial"
    partial.mkdir()
    nvidia_dataset(partial, n=3, labels=[0, 1, 2])
    (partial / "dataset.json").write_text(json.dumps({"labels": [["00000/img00000000.png", 0]]}))
    with pytest.raises(UserError, match="no label for 00000/img00000001.png"):
        ImageDataset(partial, use_labels=True)


def test_pickles_without_open_zip_and_works_in_dataloader_workers(tmp_path):
    import torch

    arrays = nvidia_dataset(tmp_path / "d.zip", n=16, labels=list(range(4)) * 4, as_zip=True)
    ds = ImageDataset(tmp_path / "d.zip", use_labels=True, xflip=True)
    ds[0]  # opens the zip in this process
    clone = pickle.loads(pickle.dumps(ds))
    assert clone._zip is None and np.array_equal(clone[3][0], arrays[3])
    loader = torch.utils.data.DataLoader(ds, batch_size=8, shuffle=False, num_workers=2)
    imgs, labels = [], []
    for x, c in loader:
        assert x.dtype == torch.uint8 and x.shape[1:] == (3, 8, 8) and c.shape[1:] == (4,)
        imgs.append(x.numpy())
        labels.append(c.numpy())
    imgs = np.concatenate(imgs)
    assert imgs.shape[0] == 32
    assert np.array_equal(imgs[:16], arrays) and np.array_equal(imgs[16:], arrays[:, :, :, ::-1])
    assert np.concatenate(labels)[:16].argmax(1).tolist() == list(range(4)) * 4
