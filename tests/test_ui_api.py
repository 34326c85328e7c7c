"""Every dashboard action through gradio_client, against a real server on 127.0.0.1 with a temporary workdir."""

import json
import statistics
import re
import shutil
import socket
import tempfile
import time
import zipfile
from concurrent.futures import wait as wait_futures
from pathlib import Path

import pytest
from polling import wait_for
import torch
from gradio_client import Client, handle_file

import app as studio_app
from ui.common import Studio
from ui.data_tab import SRC_EMOJI, SRC_FOLDER, SRC_UPLOAD

LABELS_AUTO = "Automatic (the source's own, if any)"
TINY_TRAIN = dict(batch=8, snap=1, tick=0.032)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tiny_generator(c_dim=0, res=16):
    from engine.nets import Generator

    torch.manual_seed(0)
    return Generator(z_dim=16, c_dim=c_dim, w_dim=16, img_resolution=res, img_channels=3,
                     mapping_kwargs={"num_layers": 2}, channel_base=256, channel_max=16).eval()


def save_network(G, path):
    from engine.checkpoint import pack_network, save_snapshot

    save_snapshot(path, {"format": "stylegan-studio", "version": 1, "G_ema": pack_network(G)})


def start(work, shared=False, max_upload_mb=5):
    studio = Studio(work, shared=shared, max_upload_mb=max_upload_mb)
    demo = studio_app.serve(studio, "127.0.0.1", free_port())
    client = Client(demo.local_url, verbose=False, download_files=str(work / "_client"))
    return studio, demo, client


@pytest.fixture(scope="module")
def scratch():
    # Our own temporary folder: pytest prunes old basetemp folders of other runs on this machine, which may
    # happen while a training of this file still writes into one.
    d = Path(tempfile.mkdtemp(prefix="studio-ui-test-"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
def served(scratch):
    work = scratch / "studio"
    net_dir = work / "uploads" / "networks"
    net_dir.mkdir(parents=True)
    save_network(tiny_generator(), net_dir / "tiny16.pt")
    save_network(tiny_generator(c_dim=3), net_dir / "cond16.pt")
    studio, demo, client = start(work)
    yield studio, client
    demo.close()
    from ui.supervisor import Supervisor

    Supervisor(work).kill(None)  # never leave a training behind, started or starting
    for v in Supervisor(work).live():
        Supervisor(work).kill(v.run_dir)


def predict(client, api, *args):
    """The outputs of one call, with gr.update(...) dicts reduced to their value."""
    out = client.predict(*args, api_name=api)
    if isinstance(out, tuple):
        return tuple(_value(o) for o in out)
    return _value(out)


def item_path(item):
    """The file of a gallery item as gradio_client returns it."""
    img = item["image"]
    return img if isinstance(img, str) else img["path"]


def _value(o):
    return o.get("value") if isinstance(o, dict) and o.get("__type__") == "update" else o


def prepare_args(name, res=16, max_images=48, src=SRC_EMOJI, folder=""):
    return (src, None, folder, name, res, max_images, "center-crop", "RGB", LABELS_AUTO, False)


def test_prepare_show_and_delete(served):
    studio, client = served
    preview, summary, skipped, table, pick, empty = predict(client, "/prepare", *prepare_args("emoji 16!"))
    assert (studio.datasets_dir / "emoji-16.zip").is_file()  # the name became a safe file name
    assert Path(preview).is_file()
    assert "48 images" in summary and "16 px" in summary
    assert pick == "emoji-16.zip" and empty == ""
    rows = table["data"]
    assert ["emoji-16.zip", 48, 16, 3] == rows[0][:4]

    preview2, summary2 = predict(client, "/show_dataset", "emoji-16.zip")
    assert Path(preview2).is_file() and "48 images" in summary2

    # A dataset is never overwritten.
    with pytest.raises(Exception, match="already exists"):
        predict(client, "/prepare", *prepare_args("emoji-16"))

    predict(client, "/prepare", *prepare_args("gone", max_images=8))
    assert (studio.datasets_dir / "gone.zip").is_file()
    table, pick, _ = predict(client, "/delete_dataset", "gone.zip")  # the confirm row is not an output here
    assert not (studio.datasets_dir / "gone.zip").exists()
    assert [r[0] for r in table["data"]] == ["emoji-16.zip"]
    with pytest.raises(Exception, match="not found"):
        predict(client, "/delete_dataset", "../uploads")


def test_prepare_bad_input_is_a_message(served, tmp_path):
    studio, client = served
    with pytest.raises(Exception, match="folder not found"):
        predict(client, "/prepare", *prepare_args("x", src=SRC_FOLDER, folder=str(tmp_path / "nope")))
    with pytest.raises(Exception, match="not in the list"):  # the dropdown offers powers of two only
        predict(client, "/prepare", *prepare_args("y", res=24))
    with pytest.raises(Exception, match="no files uploaded"):
        predict(client, "/prepare", *prepare_args("z", src=SRC_UPLOAD))
    (tmp_path / "notes.txt").write_text("no pictures here")
    with pytest.raises(Exception, match="notes.txt|no image|nothing"):  # the engine's own one-line message
        predict(client, "/prepare", *prepare_args("w", src=SRC_FOLDER, folder=str(tmp_path)))
    assert list(studio.datasets_dir.glob("[xyzw].zip")) == []


def test_generate_video_mix(served):
    studio, client = served
    assert predict(client, "/networks", "uploaded / tiny16.pt")[0] == "uploaded / tiny16.pt"
    with pytest.raises(Exception, match="not found"):  # a typed path is never taken up
        predict(client, "/network_info", "/etc/passwd")
    info, _cls = predict(client, "/network_info", "uploaded / tiny16.pt")
    assert "16 px RGB" in info

    gallery, files = predict(client, "/generate", "uploaded / tiny16.pt", "0-5", 0.7, None, "const")
    assert len(gallery) == 6 and [g["caption"] for g in gallery] == [f"seed {i}" for i in range(6)]
    from PIL import Image

    g = Image.open(next(f for f in files if f.endswith("grid.png")))
    assert g.size == (3 * 16, 2 * 16)  # 6 images in a 3x2 grid
    names = sorted(Path(f).name for f in files)
    assert names == ["grid.png", "images.zip"]
    with zipfile.ZipFile([f for f in files if f.endswith(".zip")][0]) as z:
        assert sorted(z.namelist()) == [f"seed{i:04d}.png" for i in range(6)]
    # Same seed, same image: seed 3 alone equals the fourth image of the batch.
    g2, _ = predict(client, "/generate", "uploaded / tiny16.pt", "3", 0.7, None, "const")
    assert Image.open(item_path(g2[0])).tobytes() == Image.open(item_path(gallery[3])).tobytes()

    gif, mp4, vfile = predict(client, "/video", "uploaded / tiny16.pt", "0-2", 4, 10, "z", "slerp", True, "GIF",
                              0.7, None, "const")
    im = Image.open(gif)
    assert im.format == "GIF" and im.n_frames == 12 and Path(vfile).suffix == ".gif"
    gif, mp4, vfile = predict(client, "/video", "uploaded / tiny16.pt", "0-1", 4, 10, "w", "linear", False, "MP4",
                              0.7, None, "const")
    assert Path(mp4["video"]["path"] if isinstance(mp4, dict) else mp4).suffix == ".mp4"
    assert Path(vfile).stat().st_size > 0

    mix = predict(client, "/mix", "uploaded / tiny16.pt", "1,2", "3,4,5", "0-1", 1.0, "const")
    w, h = Image.open(mix).size  # 16 px cells shown 6x as large, with a band of seed labels above and left
    assert w > 4 * 96 and h > 3 * 96 and (w - 4 * 96) > (h - 3 * 96)
    plain_path = max(studio.outputs_dir.glob("*-mix*/style-mix.png"), key=lambda p: p.stat().st_mtime)
    with Image.open(plain_path) as plain:  # the plain grid, as the command line writes it, is kept beside it
        assert plain.size == (4 * 16, 3 * 16)  # a header row and column around 2x3 cells

    seeds = predict(client, "/random_seeds")
    assert len(seeds.split(",")) == 8 and all(s.isdigit() for s in seeds.split(","))


def test_generate_errors_are_messages(served):
    _, client = served
    with pytest.raises(Exception, match="cannot read seeds"):
        predict(client, "/generate", "uploaded / tiny16.pt", "1,x", 0.7, None, "const")
    with pytest.raises(Exception, match="not found"):
        predict(client, "/generate", "/etc/passwd", "1", 0.7, None, "const")
    with pytest.raises(Exception, match="conditional"):
        predict(client, "/generate", "uploaded / cond16.pt", "1", 0.7, None, "const")
    with pytest.raises(Exception, match="out of range|greater than maximum"):
        predict(client, "/generate", "uploaded / cond16.pt", "1", 0.7, 7, "const")
    gallery, _ = predict(client, "/generate", "uploaded / cond16.pt", "1-2", 0.7, 2, "const")
    assert len(gallery) == 2
    with pytest.raises(Exception, match="at least two seeds"):
        predict(client, "/video", "uploaded / tiny16.pt", "4", 4, 10, "z", "slerp", False, "GIF", 0.7, None,
                "const")
    with pytest.raises(Exception, match="cubic"):
        predict(client, "/video", "uploaded / tiny16.pt", "1-3", 4, 10, "z", "cubic", False, "GIF", 0.7, None,
                "const")


def test_generate_tab_export_and_blend_panel(served):
    studio, client = served
    files, report = predict(client, "/export_network", "uploaded / tiny16.pt", "safetensors")
    assert sorted(Path(f).suffix for f in files) == [".json", ".safetensors"]
    assert "max abs difference 0" in report
    with pytest.raises(Exception, match="not found"):  # a typed path is never taken up here either
        predict(client, "/export_network", "/etc/passwd", "onnx")
    net, other, several, blend_report = predict(client, "/blend_networks", "uploaded / tiny16.pt",
                                                "uploaded / tiny16.pt", 8, "a")
    assert net == "uploaded / blend-tiny16-tiny16-split8.pt"
    assert blend_report.startswith("Blended: blocks 4-8 from uploaded / tiny16.pt, block 16 from uploaded / tiny16.pt")
    blended = studio.uploads_dir / "networks" / "blend-tiny16-tiny16-split8.pt"
    try:
        assert predict(client, "/network_info", net)[0].startswith(f"**{net}**: 16 px RGB")
    finally:
        blended.unlink()  # the other tests see the upload folder as they left it
    with pytest.raises(Exception, match="not the same architecture"):
        predict(client, "/blend_networks", "uploaded / tiny16.pt", "uploaded / cond16.pt", 8, "a")


def test_train_tab_shows_health_warnings(served):
    studio, client = served
    run = studio.runs_dir / "00042-health-check"
    run.mkdir(parents=True)
    try:
        with open(run / "stats.jsonl", "w") as f:
            for i, d in enumerate([1.2] * 8 + [float("inf")]):
                f.write(json.dumps({"Progress/kimg": {"num": 1, "mean": 4.0 * (i + 1), "std": 0},
                                    "Loss/D/loss": {"num": 64, "mean": d, "std": 1}}) + "\n")
        text = client.predict(run.name, api_name="/train_health")
        assert text.startswith("- ⚠ ") and "D loss is inf" in text
        (run / "stats.jsonl").write_text("")
        assert client.predict(run.name, api_name="/train_health") == ""
    finally:
        shutil.rmtree(run)


def test_concurrent_generation_requests_are_all_served(served):
    _, client = served
    jobs = [client.submit("uploaded / tiny16.pt", f"{i * 4}-{i * 4 + 3}", 0.7, None, "const", api_name="/generate")
            for i in range(4)]
    wait_futures(jobs, timeout=120)
    results = [j.result() for j in jobs]
    assert all(len(r[0]) == 4 for r in results)


def test_upload_network(served, tmp_path):
    studio, client = served
    f = tmp_path / "my net.pt"
    save_network(tiny_generator(res=8), f)
    choice, _ = predict(client, "/upload_network", handle_file(str(f)))
    assert choice == "uploaded / my-net.pt"
    assert (studio.uploads_dir / "networks" / "my-net.pt").is_file()
    info, _ = predict(client, "/network_info", choice)
    assert "8 px" in info
    bad = tmp_path / "evil.pkl"
    bad.write_bytes(b"cos\nsystem\n(S'echo pwned'\ntR.")
    with pytest.raises(Exception):
        predict(client, "/upload_network", handle_file(str(bad)))
    assert not (studio.uploads_dir / "networks" / "evil.pkl").exists()


def test_upload_cap(served, tmp_path):
    studio, client = served
    big = tmp_path / "big.pt"
    big.write_bytes(b"\0" * (studio.max_upload_mb * 2**20 + 1024))
    with pytest.raises(Exception):
        predict(client, "/upload_network", handle_file(str(big)))
    assert not (studio.uploads_dir / "networks" / "big.pt").exists()


def test_system(served):
    studio, client = served
    text = predict(client, "/system")
    assert f"torch {torch.__version__}" in text
    assert "bias_act" in text and "upfirdn2d" in text
    assert "Compiled kernels, per device and dtype" in text and "`upfirdn2d` cpu float32: " in text
    assert str(studio.workdir) in text and "free of" in text


def test_polls_and_refreshes_keep_a_page_session_bounded(scratch):
    """A page polled for hours stores one of each component, not one more per poll (gr.update of an input)."""
    from PIL import Image

    from engine.runs import write_status

    studio, demo, client = start(scratch / "polled")
    try:
        run = studio.runs_dir / "00000-polled-tiny"
        run.mkdir(parents=True)
        write_status(run, "stopped", kimg=0.1, total_kimg=1.0, tick=1)
        Image.new("RGB", (16, 16)).save(run / "fakes_init.png")
        slider = client.view_api(print_info=False, return_format="dict")["named_endpoints"]["/train_watch"][
            "parameters"][1]["parameter_default"]

        def poll(times):
            nonlocal slider
            for _ in range(times):
                out = client.predict(run.name, slider, api_name="/train_watch")
                slider = _value(out[3]) if _value(out[3]) is not None else slider
                client.predict("Demo: emoji (built in)", api_name="/networks")
            return [len(s.blocks_config.blocks) for s in demo.state_holder.session_data.values()]

        first = poll(2)
        assert poll(8) == first
    finally:
        demo.close()


def test_shared_mode_reads_no_server_folder(scratch):
    studio, demo, client = start(scratch / "shared", shared=True)
    try:
        with pytest.raises(Exception):
            predict(client, "/prepare", *prepare_args("x", src=SRC_FOLDER, folder=str(Path.home())))
        assert list(studio.datasets_dir.iterdir()) == []
        text = predict(client, "/system")
        assert str(studio.workdir) not in text
        from ui.common import mask_paths

        assert mask_paths(f"cannot read {studio.workdir}/datasets/x.zip") == "cannot read <studio>/datasets/x.zip"
    finally:
        demo.close()




def train_args(ds, kimg=1000, **over):
    o = dict(TINY_TRAIN, **over)
    return (ds, "tiny", kimg, o["batch"], None, o["snap"], o["tick"], "ADA (adaptive)", "bgc", None, None, False,
            False, "none", 0, "", "the preset's", "", "Scratch", None, None, 0, False)


@pytest.mark.slow
def test_train_watch_stop_resume_generate(served):
    studio, client = served
    if not (studio.datasets_dir / "emoji-16.zip").exists():
        predict(client, "/prepare", *prepare_args("emoji-16"))
    run = predict(client, "/train_start", *train_args("emoji-16.zip"))
    assert run.startswith("00000-")
    run_dir = studio.runs_dir / run

    # The page sends back what it shows; unchanged plots and grids come back as "skip" updates.
    shown = {"slider": 1}  # the grid slider counts from 1, as its label does

    def watch():
        out = client.predict(run, shown["slider"], api_name="/train_watch")
        for key, value in zip(("status", "plot", "fakes", "slider", "log", "runs"), out):
            if isinstance(value, dict) and value.get("__type__") == "update":
                if "value" in value:
                    shown[key] = value["value"]
            else:
                shown[key] = value
        return shown

    def timed(status):
        # A speed and the time left that follows from it, not the "measuring" shown before the first tick.
        return re.search(r"\d+\.\d s/kimg", status) and re.search(r"ETA \d+ (s|min|h|d)\b", status)

    def ticked():
        w = watch()
        return "data-state='running'" in w["status"] and timed(w["status"]) and w.get("fakes") and \
            w.get("plot") and "fakes000000" in str(w["fakes"])

    # The first tick of a busy 2-core machine can take minutes: the generous limit only matters on failure.
    wait_for(ticked, 300, "a timed tick with a grid")
    status, plot, fakes, log, runs = (shown[k] for k in ("status", "plot", "fakes", "log", "runs"))
    assert "of 1000 kimg" in status and timed(status)
    fig = json.loads(plot["plot"]) if isinstance(plot, dict) else plot
    assert any(t.get("name") == "G loss" for t in fig["data"])
    assert Path(fakes).is_file()
    assert runs["data"][0][0] == run and runs["data"][0][-1] == "running"
    with pytest.raises(Exception, match="already running"):
        predict(client, "/train_start", *train_args("emoji-16.zip"))

    predict(client, "/train_stop", run)
    wait_for(lambda: "data-state='stopped'" in watch()["status"], 240, "the stop")
    snaps = sorted(run_dir.glob("network-snapshot-*.pt"))
    assert snaps
    with pytest.raises(Exception, match="not running"):
        predict(client, "/train_stop", run)

    run2 = predict(client, "/train_resume", run, 1000, False)
    assert run2 == run
    wait_for(lambda: "data-state='running'" in watch()["status"], 240, "the resume")
    assert "ETA" in shown["status"]  # a time left, or "measuring" until the resumed process has timed a tick
    predict(client, "/train_stop", run)
    wait_for(lambda: "data-state='stopped'" in watch()["status"], 240, "the second stop")

    est = predict(client, "/estimate", "emoji-16.zip", "tiny", 100, 8)
    assert "s per kimg" in est and f"run {run}" in est

    snap_label = f"{run} / {sorted(run_dir.glob('network-snapshot-*.pt'))[-1].name}"
    gallery, _ = predict(client, "/generate", snap_label, "0-3", 1.0, None, "const")
    assert len(gallery) == 4


def _tick(t, kimg, spk, tick=1, sec_per_tick=10.0, maint=1.0):
    def m(x):
        return {"num": 1, "mean": x, "std": 0.0}

    return {"timestamp": t, "Progress/kimg": m(kimg), "Progress/tick": m(tick), "Timing/sec_per_kimg": m(spk),
            "Timing/sec_per_tick": m(sec_per_tick), "Timing/maintenance_sec": m(maint)}


def test_status_line_eta():
    from ui.supervisor import RunView
    from ui.train_tab import status_html

    tick = _tick
    v = RunView(name="00000-x", run_dir=None, state="running", kimg=0.0, total_kimg=10.0, started=1000.0, live=True)
    assert "ETA measuring" in status_html(v, [])
    # A tick of an earlier process (before a resume) says nothing about this one's speed.
    assert "ETA measuring" in status_html(v, [tick(900.0, 1.0, 5.0)])
    # Nor does the first tick of this process: it holds start-up.
    first = [tick(900.0, 1.0, 5.0, 1), tick(1100.0, 8.0, 300.0, 2)]
    assert "ETA measuring" in status_html(v, first) and "8.00</b> of 10 kimg" in status_html(v, first)
    # stats.jsonl has the tick before status.json does (it is written before the snapshot): 2 kimg left at 30 s.
    line = status_html(v, first + [tick(1130.0, 8.0, 30.0, 3)])
    assert "30.0 s/kimg" in line and "ETA 1 min 00 s" in line and "8.00</b> of 10 kimg" in line
    # The tick shown is the newest line of log.txt, not status.json's next tick.
    v.tick = 4
    assert "tick 3" in line
    # No time left is promised once the run no longer trains.
    for state in ("stopping", "stopped", "finished", "failed"):
        v.state = state
        assert "ETA" not in status_html(v, first + [tick(1130.0, 8.0, 30.0, 3)])


def test_status_says_how_to_go_on_and_buttons_follow_the_state(tmp_path):
    from ui.supervisor import RunView
    from ui.train_tab import button_updates, runs_table, status_html

    run_dir = tmp_path / "00003-emoji-tiny"
    run_dir.mkdir()
    (run_dir / "network-snapshot-000000.pt").write_bytes(b"")
    (run_dir / "network-snapshot-000000_100.pt").write_bytes(b"")
    v = RunView(name=run_dir.name, run_dir=run_dir, state="running", kimg=0.1, total_kimg=2.0, tick=3, live=True,
                snapshot="network-snapshot-000000_100.pt")
    start, stop, resume = button_updates(v)
    assert start["value"] == "Start a new run"
    assert stop["visible"] and stop["value"] == "Stop run 00003" and not resume["visible"]
    assert "network-snapshot-000000_100.pt (0.1 kimg)" in status_html(v, [])
    v.state, v.live, v.message = "stopped", False, "stop requested"
    _, stop, resume = button_updates(v)
    assert not stop["visible"] and resume["visible"] and resume["value"] == "Resume run 00003"
    text = status_html(v, [])
    assert "Resume run 00003" in text and "network-snapshot-000000_100.pt to 2 kimg" in text
    v.state = "finished"
    assert not button_updates(v)[2]["visible"]
    v.state = "failed"
    assert button_updates(v)[2]["visible"]
    (run_dir / "network-snapshot-000000.pt").unlink()
    (run_dir / "network-snapshot-000000_100.pt").unlink()
    assert not button_updates(v)[2]["visible"]  # nothing to resume from
    # The runs table gives the kimg the status shows, and a stopped run's length.
    v.state = "stopped"
    assert runs_table([v], {v.name: 0.25})[0][3] == "0.25 / 2"
    v.launch = {"length_from": 2.0, "data": "x.zip", "cfg": "tiny"}
    v.total_kimg, v.state, v.live = 10.0, "running", True
    assert "length 2 → 10 kimg" in status_html(v, [])


def test_form_follows_the_run():
    from ui.supervisor import RunView
    from ui.train_tab import FORM_KEYS, form_values

    v = RunView(name="00001-emoji-tiny", run_dir=None, state="stopped", total_kimg=2.0,
                launch={"data": "/w/datasets/emoji16.zip", "cfg": "tiny", "kimg": 2.0,
                        "options": {"batch": 8, "tick": 0.032, "snap": 2, "aug": "fixed", "p": 0.3, "mirror": True,
                                    "metrics": "none", "seed": 5}})
    vals = form_values(v)
    assert set(vals) == set(FORM_KEYS)
    assert (vals["dataset"], vals["preset"], vals["kimg"], vals["batch"], vals["tick"], vals["snap"]) == \
        ("emoji16.zip", "tiny", 2.0, "8", "0.032", "2")
    assert vals["gamma"] == "" and vals["target"] == ""  # not given: empty, the preset's
    assert (vals["aug"], vals["p"], vals["mirror"], vals["seed"]) == ("Fixed p", 0.3, True, 5)


def test_resume_keeps_the_length_unless_the_user_changed_it():
    from ui.supervisor import RunView
    from ui.train_tab import resume_length

    v = RunView(name="00001-x", run_dir=None, state="stopped", total_kimg=2.0)
    assert resume_length(v, 2, {"run": v.name, "kimg": 2.0}) is None  # the form shows the run's own length
    assert resume_length(v, 10, {"run": v.name, "kimg": 2.0}) == 10.0  # typed over it: meant
    assert resume_length(v, 10, {"run": "00000-other", "kimg": 10.0}) is None  # the form shows another run
    assert resume_length(v, None, {}) is None
    assert resume_length(v, 2, {}) is None and resume_length(v, 5, {}) == 5.0  # an API call says what it means


def test_estimate_from_comparable_runs_is_a_robust_median(tmp_path):
    from ui import estimate
    from ui.supervisor import Supervisor

    sup = Supervisor(tmp_path)

    def run(n, spks, size=300, state="stopped", cfg="tiny"):
        d = sup.runs_dir / f"{n:05d}-emoji-{cfg}"
        d.mkdir(parents=True)
        (d / "training_options.json").write_text(json.dumps(
            {"cfg": cfg, "batch_size": 8, "dataset": {"resolution": 16, "size": size}}))
        (d / "status.json").write_text(json.dumps({"state": state, "kimg": 1.0, "total_kimg": 2.0, "tick": 3,
                                                   "started": 1000.0 + n}))
        with open(d / "stats.jsonl", "w") as f:
            for i, spk in enumerate(spks):
                f.write(json.dumps(_tick(1000.0 + n * 1000 + 11.0 * i, 0.1 * i, spk, tick=i)) + "\n")

    # Start-up is left out: tick 0 (one step) and the first full tick (the first calls' costs).
    run(0, [900.0, 80.0, 10.0, 11.0, 12.0])
    run(1, [900.0, 80.0, 10.5, 10.5])
    run(2, [900.0, 80.0, 300.0, 297.0])  # ran under another load: far off the others
    run(3, [900.0, 80.0, 1.0, 1.0], state="failed")  # interrupted
    run(4, [900.0, 80.0, 2.0, 2.0], size=4000)  # another dataset size
    run(5, [900.0, 80.0, 2.0, 2.0], cfg="small")
    est = estimate.from_previous_runs(sup, "tiny", 16, 8, size=300)
    assert est.runs == 2 and est.ticks == 5 and est.sec_per_kimg == pytest.approx(10.75)
    # Start-up (set-up and tick 0: 1 s + 10 s) and the snapshots' share (1 s a tick of 10 s) are told apart.
    assert est.startup_s == pytest.approx(11.0)
    assert est.overhead_per_kimg == pytest.approx(statistics.median([3 / (10 / 10 + 10 / 11 + 10 / 12),
                                                                      2 / (20 / 10.5)]))
    text = estimate.describe(est, 2)
    assert "2 runs" in text and "start-up not counted" in text and "How sure" in text
    assert "start-up 11 s" in text and "training 22 s" in text and "about **35 s**" in text
    assert estimate.from_previous_runs(sup, "tiny", 32, 8) is None
    # Known without training: the same figure after a reload; a saved warm-up where no run compares.
    assert estimate.known(sup, 16, 300, "tiny", 8).sec_per_kimg == pytest.approx(10.75)
    assert estimate.known(sup, 16, 50, "tiny", 8) is None
    estimate._save_warm_up(sup, estimate.Estimate(7.0, "warm-up", "tiny", 16, 8, measured_s=40, ticks=2, low=6.5,
                                                  high=7.5, size=50))
    assert estimate.known(sup, 16, 50, "tiny", 8).sec_per_kimg == 7.0


@pytest.mark.slow
def test_estimate_by_warm_up(served):
    # No earlier run at batch 4: the estimate times a short warm-up of exactly these settings.
    studio, client = served
    est = predict(client, "/estimate", "emoji-16.zip", "tiny", 50, 4)
    assert "measured by a" in est and "s per kimg" in est and "50 kimg will take about" in est
    assert not (studio.workdir / ".estimate").exists()  # the scratch run is gone


def test_command_line_flags():
    args = studio_app.parse_args([])
    assert (args.host, args.port, args.workdir, args.share) == ("127.0.0.1", 7860, "./studio", False)
    for bad in (["--share"], ["--share", "--auth", "nopassword"], ["--port", "0"], ["--max-upload-mb", "0"]):
        with pytest.raises(SystemExit):
            studio_app.parse_args(bad)
    assert studio_app.parse_args(["--share", "--auth", "me:secret"]).auth == "me:secret"
    assert studio_app.parse_args(["--share", "--share-no-auth"]).share


@pytest.mark.slow
def test_share_without_internet_keeps_serving_locally(scratch):
    import subprocess
    import sys
    import urllib.request

    port = free_port()
    proc = subprocess.Popen([sys.executable, "app.py", "--share", "--auth", "me:secret", "--port", str(port),
                             "--workdir", str(scratch / "share")], cwd=Path(studio_app.__file__).parent,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        lines = []
        deadline = time.time() + 90
        while time.time() < deadline:
            line = proc.stdout.readline()
            lines.append(line)
            if "public link" in line.lower():
                break
        said = [ln for ln in lines if "public link" in ln.lower()]
        assert len(said) == 1, lines  # one clear line, whichever way it went
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as r:
            assert r.status == 200
        assert proc.poll() is None
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_demo_network_is_the_default(scratch):
    from ui.networks import DEMO_LABEL, network_choices

    def default_network(studio):
        return next(iter(network_choices(studio)), None)

    demo_file = scratch / "demo-network.pt"
    save_network(tiny_generator(), demo_file)
    studio = Studio(scratch / "with-demo", demo_network=demo_file)
    assert default_network(studio) == DEMO_LABEL
    missing = Studio(scratch / "no-demo", demo_network=scratch / "absent.pt")
    assert default_network(missing) is None
    from ui.generate_tab import _empty_text

    assert "demo network" in _empty_text(missing, {})  # says what is missing and how to make a network


def test_metric_records_become_points():
    from ui import charts

    recs = [{"results": {"fid50k_full": 40.5}, "metric": "fid50k_full", "snapshot_pkl": "network-snapshot-000200.pkl"},
            {"results": {"fid50k_full": 30.25}, "metric": "fid50k_full", "snapshot_pkl": "network-snapshot-000400.pt"}]
    assert charts.metric_points(recs) == {"fid50k_full": ([200.0, 400.0], [40.5, 30.25])}
    fig = charts.training_figure([{"Progress/kimg": {"mean": 200}, "Loss/D/loss": {"mean": 0.5}}],
                                 {"fid50k_full": recs})
    names = {t.name for t in fig.data}
    assert {"D loss", "fid50k_full"} <= names


def test_grid_layout_leaves_no_avoidable_holes():
    from ui.generate_tab import _grid_shape

    assert _grid_shape(8) == (4, 2)  # not 3x3 with an empty cell
    assert _grid_shape(6) == (3, 2) and _grid_shape(9) == (3, 3) and _grid_shape(1) == (1, 1)
    for n in range(1, 300):
        cols, rows = _grid_shape(n)
        assert cols * rows >= n and cols <= 8 and cols * (rows - 1) < n, n  # fits, no empty last row


def test_dataset_name_follows_the_resolution_and_the_seed_limit_is_said_once():
    from engine.errors import UserError
    from ui.data_tab import name_for_resolution
    from ui.generate_tab import MAX_SEEDS, _seeds

    assert name_for_resolution("emoji32", 64) == "emoji64" and name_for_resolution("cats", 128) == "cats128"
    assert name_for_resolution("emoji16", 16) == "emoji16" and name_for_resolution("", 8) == "dataset8"
    for text in ("0-1000000", "0-5000"):  # the same limit whatever the size of the request
        with pytest.raises(UserError) as e:
            _seeds(text)
        assert str(e.value) == f"seeds '{text}' make more than {MAX_SEEDS} values; at most {MAX_SEEDS} at once"
    assert _seeds("0-7") == list(range(8))
