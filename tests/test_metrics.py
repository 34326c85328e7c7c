"""FID / KID: the math, the offline Inception detector, the real-feature cache and the result records.

The Inception detector runs at ~3-6 images/s on a small CPU, so it sees one fixed set of 48 images once
for the whole module (a fixture); the pipeline tests use a cheap stand-in detector with the same interface.
"""

import io
import json
import zipfile

import numpy as np
import pytest
import torch

from engine.errors import UserError
from engine.metrics import (append_metric_jsonl, compute, compute_many, format_time, parse_metric,
                            parse_metric_list)
from engine.metrics import detector as detmod
from engine.metrics.fid import feature_stats, fid_from_features, frechet_distance
from engine.metrics.kid import kid_from_features


# -- helpers -------------------------------------------------------------------------------------------------------


def shape_images(n, res=32, seed=0):
    """n images of coloured discs on a flat background -> uint8 [n, 3, res, res]."""
    rng = np.random.RandomState(seed)
    yy, xx = np.mgrid[:res, :res]
    out = np.zeros([n, 3, res, res], np.uint8)
    for i in range(n):
        img = np.ones([3, res, res]) * rng.uniform(0, 255, size=[3, 1, 1])
        for _ in range(3):
            cx, cy = rng.uniform(0, res, 2)
            r = rng.uniform(3, res / 3)
            img[:, (xx - cx) ** 2 + (yy - cy) ** 2 < r * r] = rng.uniform(0, 255, size=[3, 1])
        out[i] = img.astype(np.uint8)
    return out


def write_dataset_zip(path, images, labels=None):
    """NVIDIA's prepared layout: 00000/img00000000.png ... plus dataset.json."""
    from PIL import Image

    names = []
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as z:
        for i, img in enumerate(images):
            name = f"{i // 1000:05d}/img{i:08d}.png"
            buf = io.BytesIO()
            hwc = img.transpose(1, 2, 0)
            Image.fromarray(hwc[:, :, 0] if hwc.shape[2] == 1 else hwc).save(buf, format="png")
            z.writestr(name, buf.getvalue())
            names.append(name)
        lab = None if labels is None else [[n, int(l)] for n, l in zip(names, labels)]
        z.writestr("dataset.json", json.dumps({"labels": lab}))
    return path


class ProjectionDetector:
    """A cheap stand-in for Inception: 4x4 average-pooled pixels times a fixed random matrix -> [N, 32].

    Counts the images it sees so tests can tell whether reals went through it.
    """

    def __init__(self, name="test-projection"):
        self.name = name
        self.matrix = np.random.RandomState(7).randn(3 * 16, 32) / 2000
        self.seen = 0

    def features(self, images):
        x = torch.as_tensor(images).float()
        if x.shape[1] == 1:
            x = x.repeat(1, 3, 1, 1)
        x = torch.nn.functional.adaptive_avg_pool2d(x, 4).reshape(x.shape[0], -1).double().numpy()
        self.seen += x.shape[0]
        return x @ self.matrix


class ReplayGenerator(torch.nn.Module):
    """A 'network' that plays back fixed images in order, so its images equal the dataset's exactly.

    Images are stored as (x - 127.5) / 127.5 so NVIDIA's uint8 conversion (x * 127.5 + 128, truncated)
    lands on the original value.
    """

    def __init__(self, images, c_dim=0):
        super().__init__()
        self.z_dim, self.c_dim = 4, c_dim
        self.img_resolution, self.img_channels = images.shape[2], images.shape[1]
        self.register_buffer("images", (torch.from_numpy(images).float() - 127.5) / 127.5)
        self.pos = 0
        self.labels_seen = []

    def forward(self, z, c, truncation_psi=1, truncation_cutoff=None, noise_mode="const"):
        assert truncation_psi == 1
        n = z.shape[0]
        idx = (torch.arange(n) + self.pos) % self.images.shape[0]
        self.pos += n
        self.labels_seen.append(c.cpu().numpy())
        return self.images[idx]


# -- names, records --------------------------------------------------------------------------------------------------


def test_metric_names():
    assert parse_metric("fid500") == parse_metric("FID500")
    s = parse_metric("kid1k")
    assert (s.kind, s.num_gen, s.full) == ("kid", 1000, False)
    s = parse_metric("fid50k_full")
    assert (s.kind, s.num_gen, s.full) == ("fid", 50000, True)
    assert parse_metric_list("fid1k, kid1k,fid1k") == ["fid1k", "kid1k"]
    assert parse_metric_list("none") == []
    for bad in ("fid", "is50k", "fid0", "fid1k_half", "kid-5", "fid1"):
        with pytest.raises(UserError):
            parse_metric(bad)
    assert format_time(5) == "5s" and format_time(187) == "3m 07s" and format_time(7509) == "2h 05m 09s"


def test_append_metric_jsonl(tmp_path):
    result = {"results": {"fid1k": 12.5}, "metric": "fid1k", "total_time": 61.2, "total_time_str": "1m 01s",
              "num_gpus": 1, "detector": "fid-helper-default_1", "num_real": 500, "num_gen": 1000}
    append_metric_jsonl(tmp_path, result, "network-snapshot-000004.pt")
    path = append_metric_jsonl(tmp_path, dict(result, results={"fid1k": 9.0}), "network-snapshot-000008.pt")
    assert path.name == "metric-fid1k.jsonl"
    lines = [json.loads(l) for l in path.read_text().splitlines()]
    assert [l["results"]["fid1k"] for l in lines] == [12.5, 9.0]
    assert lines[1]["snapshot_pkl"] == "network-snapshot-000008.pt"
    for key in ("results", "metric", "total_time", "total_time_str", "num_gpus", "snapshot_pkl", "timestamp", "detector"):
        assert key in lines[0]


# -- math --------------------------------------------------------------------------------------------------------------


def test_kid_matches_hand_computed_mmd():
    rng = np.random.RandomState(3)
    real = rng.randn(6, 4)
    gen = rng.randn(5, 4) + 0.7
    d = 4

    def k(a, b):
        return (float(np.dot(a, b)) / d + 1) ** 3

    # With max_subset_size >= both sizes... m = 5: every subset of the 5 generated rows is all of them, and a
    # 5-row subset of the 6 real rows is drawn each round. With real trimmed to 5 rows, every round sees the
    # same sets, so the estimate must equal the textbook unbiased MMD^2 written out with loops.
    real5 = real[:5]
    m = 5
    xx = sum(k(gen[i], gen[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(real5[i], real5[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(k(gen[i], real5[j]) for i in range(m) for j in range(m)) / (m * m)
    expected = xx + yy - 2 * xy
    assert kid_from_features(real5, gen, num_subsets=7) == pytest.approx(expected, rel=1e-12)
    assert expected > 0.05  # the two sets differ, so this is not a trivial zero

    # Subsetting: with max_subset_size 3 the value is the mean over rounds of the same estimate on 3-row subsets.
    rs = np.random.RandomState(11)
    total = 0.0
    for _ in range(4):
        x = gen[rs.choice(5, 3, replace=False)]
        y = real[rs.choice(6, 3, replace=False)]
        a = sum(k(x[i], x[j]) + k(y[i], y[j]) for i in range(3) for j in range(3) if i != j) / 6
        b = sum(k(x[i], y[j]) for i in range(3) for j in range(3)) / 9
        total += a - 2 * b
    assert kid_from_features(real, gen, num_subsets=4, max_subset_size=3, seed=11) == pytest.approx(total / 4, rel=1e-12)


def test_frechet_distance_on_gaussians():
    # Closed form for diagonal covariances: ||mu1-mu2||^2 + sum (s1 + s2 - 2 sqrt(s1 s2)).
    s1, s2 = np.array([1.0, 4.0, 9.0]), np.array([4.0, 1.0, 9.0])
    mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    expected = 1 + 4 + (1 + 4 - 4) + (4 + 1 - 4) + 0
    assert frechet_distance(mu1, np.diag(s1), mu2, np.diag(s2)) == pytest.approx(expected, rel=1e-9)
    mu, cov = feature_stats(np.random.RandomState(0).randn(50, 3))
    assert cov.shape == (3, 3) and mu.shape == (3,)


@pytest.mark.parametrize("n_real,n_gen,dim", [(40, 30, 96), (200, 150, 24)])
def test_fid_sample_space_equals_sqrtm(n_real, n_gen, dim):
    # Fewer samples than dimensions (singular covariances, the usual case for small metrics) and more.
    rng = np.random.RandomState(n_real)
    real = np.abs(rng.randn(n_real, dim)) @ rng.rand(dim, dim)
    gen = np.abs(rng.randn(n_gen, dim) * 1.3 + 0.2) @ rng.rand(dim, dim)
    ref = fid_from_features(real, gen, method="sqrtm")
    assert ref > 1
    assert fid_from_features(real, gen, method="samples") == pytest.approx(ref, rel=1e-6)
    assert fid_from_features(real, gen) == pytest.approx(ref, rel=1e-6)  # auto
    assert abs(fid_from_features(real, real, method="sqrtm")) < 1e-6 * ref


# -- the offline Inception detector --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def inception_features():
    """Inception features of 16 shape images, and of the same images with Gaussian pixel noise sigma 30 and 90."""
    det = detmod.load_detector("cpu", kind="offline")
    base = shape_images(16)
    rng = np.random.RandomState(1)
    sets = {"base": base}
    for sigma in (30, 90):
        sets[sigma] = np.clip(base + rng.randn(*base.shape) * sigma, 0, 255).astype(np.uint8)
    return det, {k: det.features(torch.from_numpy(v)) for k, v in sets.items()}


def test_offline_detector_found_and_gives_2048_features(inception_features):
    det, feats = inception_features
    path = detmod.offline_detector_path()
    assert path is not None and path.name == "default_1.pt" and path.stat().st_size > 50e6
    assert det.name == detmod.OFFLINE_NAME
    f = feats["base"]
    assert f.shape == (16, 2048) and np.isfinite(f).all()
    assert (f >= 0).all() and f.std(axis=0).mean() > 0.01  # post-ReLU pool features that vary between images
    # Grayscale input is repeated to RGB: a gray image equals its 3-channel copy.
    gray = shape_images(1, res=16, seed=4)[:, :1]
    np.testing.assert_allclose(det.features(torch.from_numpy(gray)), det.features(torch.from_numpy(gray.repeat(3, 1))),
                               rtol=1e-5, atol=1e-5)


def test_fid_of_a_set_with_itself_is_zero_and_grows_with_noise(inception_features):
    # sqrtm of a 2048 x 2048 product takes 15-60 s on a small CPU; the sample-space form (what 'auto' picks for
    # fewer samples than dimensions) gives the same number (test_fid_sample_space_equals_sqrtm) in milliseconds.
    _, feats = inception_features
    self_fid = fid_from_features(feats["base"], feats["base"], method="samples")
    fid_30 = fid_from_features(feats["base"], feats[30], method="samples")
    fid_90 = fid_from_features(feats["base"], feats[90], method="samples")
    assert abs(self_fid) < 0.05
    assert 5 < fid_30 < fid_90


def test_tf_bilinear_resize_matches_shifted_grid_sample():
    # TF1 resize_bilinear samples source = dst * in / out. Expressed through grid_sample (half-pixel convention)
    # that is a shift of 1/in - 1/out in normalised coordinates with border padding.
    x = torch.rand(2, 3, 7, 7)
    out = 19
    theta = torch.tensor([[1.0, 0, 1 / 7 - 1 / out], [0, 1.0, 1 / 7 - 1 / out]]).unsqueeze(0).repeat(2, 1, 1)
    grid = torch.nn.functional.affine_grid(theta, [2, 3, out, out], align_corners=False)
    ref = torch.nn.functional.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    torch.testing.assert_close(detmod.tf_bilinear_resize(x, out), ref, rtol=1e-5, atol=1e-5)


# -- NVIDIA's detector: download, cache, fallback ------------------------------------------------------------------


def test_failed_download_falls_back_to_offline(tmp_path):
    detmod._loaded.pop((detmod.NVIDIA_NAME, "cpu"), None)
    det = detmod.load_detector("cpu", kind="auto", cache_dir=tmp_path, url="http://127.0.0.1:9/inception.pt", timeout=2)
    assert det.name == detmod.OFFLINE_NAME
    folder = tmp_path / "detectors"
    assert (folder / "inception-2015-12-05.pt.failed").is_file()
    assert not (folder / "inception-2015-12-05.pt").exists() and not list(folder.glob("*.part*"))
    with pytest.raises(UserError):
        detmod.load_detector("cpu", kind="nvidia", cache_dir=tmp_path, url="http://127.0.0.1:9/inception.pt", timeout=2)


class _FakeNvidia(torch.nn.Module):
    """Same call as NVIDIA's detector: uint8-valued [N, 3, H, W] (any size), return_features -> [N, 2048]."""

    def forward(self, x: torch.Tensor, return_features: bool = False) -> torch.Tensor:
        v = x.float().mean(dim=[2, 3])
        return v.repeat(1, 683)[:, :2048] / 255


def test_nvidia_detector_downloaded_into_cache_and_used(tmp_path):
    src = tmp_path / "served.pt"
    torch.jit.save(torch.jit.script(_FakeNvidia()), str(src))
    cache = tmp_path / "cache"
    detmod._loaded.pop((detmod.NVIDIA_NAME, "cpu"), None)
    try:
        det = detmod.load_detector("cpu", kind="auto", cache_dir=cache, url=src.as_uri(), timeout=5)
        assert det.name == detmod.NVIDIA_NAME
        assert (cache / "detectors" / "inception-2015-12-05.pt").is_file()
        f = det.features(torch.full([2, 1, 8, 8], 51, dtype=torch.uint8))
        assert f.shape == (2, 2048) and np.allclose(f, 0.2)
    finally:
        detmod._loaded.pop((detmod.NVIDIA_NAME, "cpu"), None)
    # A broken file in the cache is not trusted: auto falls back, 'nvidia' says what to do.
    (cache / "detectors" / "inception-2015-12-05.pt").write_bytes(b"not a model")
    assert detmod.load_detector("cpu", kind="auto", cache_dir=cache, download=False).name == detmod.OFFLINE_NAME
    with pytest.raises(UserError, match="delete it"):
        detmod.load_detector("cpu", kind="nvidia", cache_dir=cache, download=False)


# -- compute(): generation, real-feature cache, labels ----------------------------------------------------------------


def test_compute_self_zero_and_real_cache_reused(tmp_path):
    images = shape_images(40, res=16, seed=2)
    data = write_dataset_zip(tmp_path / "shapes.zip", images)
    det = ProjectionDetector()
    cache = tmp_path / "cache"

    res = compute("fid40", ReplayGenerator(images), data, "cpu", batch=16, cache_dir=cache, detector=det)
    assert res["metric"] == "fid40" and res["num_real"] == 40 and res["num_gen"] == 40
    assert res["detector"] == "test-projection" and res["num_gpus"] == 1 and not res["real_cache_hit"]
    assert abs(res["results"]["fid40"]) < 1e-8  # the generated images are the dataset's images
    assert det.seen == 80
    assert len(list((cache / "metric-stats").glob("*.npy"))) == 1

    det.seen = 0
    noisy = np.clip(images + np.random.RandomState(0).randn(*images.shape) * 40, 0, 255).astype(np.uint8)
    steps = []
    res2 = compute("fid40", ReplayGenerator(noisy), data, "cpu", batch=16, cache_dir=cache, detector=det,
                   progress=lambda d, t: steps.append((d, t)))
    assert res2["real_cache_hit"] and det.seen == 40  # only the generated images went through the detector
    assert res2["results"]["fid40"] > 1e-3
    assert steps[-1] == (40, 40)

    # Another detector or a changed dataset must not reuse those features.
    other = ProjectionDetector(name="other-detector")
    assert not compute("fid40", ReplayGenerator(images), data, "cpu", cache_dir=cache, detector=other)["real_cache_hit"]
    write_dataset_zip(data, images[::-1])  # same count, other content
    res3 = compute("fid40", ReplayGenerator(images), data, "cpu", cache_dir=cache, detector=det)
    assert not res3["real_cache_hit"] and res3["num_real"] == 40


def test_compute_many_shares_work_and_full_uses_all_reals(tmp_path):
    images = shape_images(30, res=8, seed=5)
    data = write_dataset_zip(tmp_path / "d.zip", images)
    det = ProjectionDetector()
    out = compute_many(["fid20", "kid20", "kid10_full"], ReplayGenerator(images), data, "cpu", batch=8,
                       cache_dir=tmp_path / "c", detector=det)
    assert [r["metric"] for r in out] == ["fid20", "kid20", "kid10_full"]
    assert [r["num_real"] for r in out] == [20, 20, 30]
    assert det.seen == 20 + 30 + 20  # reals for 20 and 30 items, generated once
    # The pipeline's value is KID of the detector's features of the same 20 images on both sides.
    f20 = ProjectionDetector().features(torch.from_numpy(images[:20]))
    assert out[1]["results"]["kid20"] == pytest.approx(kid_from_features(f20, f20), rel=1e-5)
    assert out[2]["results"]["kid10_full"] != out[1]["results"]["kid20"]
    # Repeatable: the same network and seed give the same value.
    again = compute("kid20", ReplayGenerator(images), data, "cpu", cache_dir=tmp_path / "c", detector=det)
    assert again["results"]["kid20"] == out[1]["results"]["kid20"]


def test_conditional_labels_come_from_the_dataset(tmp_path):
    images = shape_images(12, res=8, seed=6)[:, :1]  # grayscale dataset
    labels = [0] * 9 + [2] * 3  # class 1 never occurs
    data = write_dataset_zip(tmp_path / "c.zip", images, labels)
    G = ReplayGenerator(images, c_dim=3)
    compute("kid200", G, data, "cpu", batch=50, cache_dir=tmp_path / "cache", detector=ProjectionDetector())
    c = np.concatenate(G.labels_seen)
    assert c.shape == (200, 3) and (c.sum(1) == 1).all() and c[:, 1].sum() == 0
    assert 0.55 < c[:, 0].mean() < 0.95  # ~3/4 of the labels are class 0
    with pytest.raises(UserError, match="labels"):
        compute("kid10", ReplayGenerator(images, c_dim=5), data, "cpu", cache_dir=tmp_path / "cache2",
                detector=ProjectionDetector())
    assert not (tmp_path / "cache2").exists()  # refused before any real image went through the detector


def test_missing_dataset_is_a_user_error(tmp_path):
    with pytest.raises(UserError):
        compute("fid10", ReplayGenerator(shape_images(2, res=8)), tmp_path / "nope.zip", "cpu", cache_dir=tmp_path,
                detector=ProjectionDetector())


# -- command line ------------------------------------------------------------------------------------------------------


def test_cli_metrics_on_a_snapshot_in_a_run_folder(tmp_path, capsys):
    from engine.__main__ import main
    from engine.checkpoint import pack_network, save_snapshot
    from engine.nets import Generator

    torch.manual_seed(0)
    G = Generator(z_dim=8, c_dim=0, w_dim=8, img_resolution=8, img_channels=3, channel_base=64, channel_max=16,
                  mapping_kwargs={"num_layers": 2})
    data = write_dataset_zip(tmp_path / "shapes.zip", shape_images(6, res=8, seed=9))
    run_dir = tmp_path / "00000-shapes-tiny"
    run_dir.mkdir()
    (run_dir / "training_options.json").write_text("{}")
    snap = run_dir / "network-snapshot-000000.pt"
    save_snapshot(snap, {"format": "stylegan-studio", "version": 1, "G_ema": pack_network(G),
                         "dataset": {"path": str(data), "resolution": 8, "channels": 3, "label_dim": 0}})

    argv = ["metrics", "--network", str(snap), "--metrics", "fid4,kid4", "--device", "cpu", "--detector", "offline",
            "--cache-dir", str(tmp_path / "cache")]
    assert main(argv) == 0  # --data comes from the snapshot
    lines = [json.loads(l) for l in capsys.readouterr().out.splitlines()]
    assert [l["metric"] for l in lines] == ["fid4", "kid4"]
    assert lines[0]["results"]["fid4"] > 0 and lines[0]["detector"] == detmod.OFFLINE_NAME
    record = json.loads((run_dir / "metric-kid4.jsonl").read_text())
    assert record["snapshot_pkl"] == snap.name and record["results"] == lines[1]["results"]

    assert main(["metrics", "--network", str(snap), "--metrics", "fid4x"]) == 2
    assert "unknown metric 'fid4x'" in capsys.readouterr().err
    assert main(["metrics", "--network", str(snap), "--data", str(tmp_path / "none.zip"), "--metrics", "fid4"]) == 2
    assert "none.zip" in capsys.readouterr().err
