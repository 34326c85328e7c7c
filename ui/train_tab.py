"""Train tab: settings, Start / Stop / Resume, and a page that follows the run every few seconds."""

from __future__ import annotations

import html
import json
import re
from pathlib import Path

import gradio as gr

from engine.errors import UserError
from engine.train import health
from engine.train.presets import PRESETS
from engine.train.runs import read_metrics, read_stats
from ui import charts, estimate
from ui.common import Studio, fmt_duration, friendly
from ui.data_tab import dataset_choices, dataset_summary
from ui.supervisor import RunView, Supervisor

AUGPIPES = ["bgc", "blit", "geom", "color", "filter", "noise", "cutout", "bg", "bgcf", "bgcfn", "bgcfnc"]
METRICS = ["auto", "none", "fid1k", "kid1k", "fid10k", "fid50k_full", "kid50k_full"]
AUG_FLAG = {"ADA (adaptive)": "ada", "Fixed p": "fixed", "None": "noaug"}
START_SCRATCH, START_SNAPSHOT, START_UPLOAD = "Scratch", "A run's snapshot", "An uploaded network (.pt / .pkl)"
NEWEST = "(newest run)"
FAKES_RE = re.compile(r"^fakes(\d{6})\.png$")
REFRESH_SEC = 3.0


def preset_names() -> list[str]:
    """The trainer's presets, the CPU-sized one first (the dashboard's default)."""
    names = list(PRESETS)
    return (["tiny"] if "tiny" in names else []) + [n for n in names if n != "tiny"]


def fakes_files(run_dir: Path | None) -> list[Path]:
    """fakes_init.png then fakesNNNNNN.png in kimg order."""
    if run_dir is None or not run_dir.is_dir():
        return []
    grids = sorted((int(m.group(1)), p) for p in run_dir.iterdir() if (m := FAKES_RE.match(p.name)))
    init = run_dir / "fakes_init.png"
    return ([init] if init.is_file() else []) + [p for _, p in grids]


def run_options(run_dir: Path) -> dict:
    try:
        return json.loads((run_dir / "training_options.json").read_text())
    except (OSError, ValueError):
        return {}


def best_fid(run_dir: Path) -> float | None:
    best = None
    for name, recs in read_metrics(run_dir).items():
        if not name.startswith("fid"):
            continue
        for _, (xs, ys) in charts.metric_points(recs).items():
            for y in ys:
                best = y if best is None else min(best, y)
    return best


def runs_table(views: list[RunView]) -> list[list]:
    rows = []
    for v in views:
        opts = run_options(v.run_dir) if v.run_dir else {}
        launch = v.launch or {}
        dataset = Path(str(launch.get("data") or _opt(opts, "data", "path") or "")).name or "—"
        preset = launch.get("cfg") or _opt(opts, "cfg") or (v.name.split("-")[2] if v.name.count("-") >= 2 else "—")
        fid = best_fid(v.run_dir) if v.run_dir else None
        rows.append([v.name, dataset, preset, f"{v.kimg:.2f} / {v.total_kimg:g}" if v.total_kimg else f"{v.kimg:.2f}",
                     "—" if fid is None else f"{fid:.2f}", v.state])
    return rows


def _opt(opts: dict, *keys):
    for k in keys:
        for holder in (opts, opts.get("cli") or {}, opts.get("training_set_kwargs") or {}):
            if isinstance(holder, dict) and holder.get(k):
                return holder.get(k)
    return None


STATE_COLOURS = {"running": "#1a7f37", "starting": "#9a6700", "stopping": "#9a6700", "stopped": "#57606a",
                 "finished": "#0969da", "failed": "#cf222e"}


def _stat(rec: dict, key: str) -> float | None:
    x = rec.get(key)
    x = x.get("mean") if isinstance(x, dict) else x
    return float(x) if isinstance(x, (int, float)) else None


def current_speed(v: RunView, stats: list[dict]) -> tuple[float | None, float]:
    """(sec/kimg, kimg) of the newest tick timed by the training process now behind the run.

    status.json carries the figure only once the tick's snapshot (and any metrics, minutes with FID) is written;
    stats.jsonl gets it at the end of the tick, so it is read as well. Ticks of an earlier process (before a
    resume, perhaps on other hardware) do not count: until this process has timed one, the speed is unknown.
    """
    kimg = float(v.kimg)
    for rec in reversed(stats):
        ts = rec.get("timestamp")
        if v.started and (not isinstance(ts, (int, float)) or ts < float(v.started)):
            break
        spk = _stat(rec, "Timing/sec_per_kimg")
        if spk and spk > 0:
            return spk, max(kimg, _stat(rec, "Progress/kimg") or 0.0)
    return (float(v.sec_per_kimg) if v.sec_per_kimg else None), kimg


def status_html(v: RunView | None, stats: list[dict]) -> str:
    if v is None:
        return ("<div class='empty-state'><b>No runs yet.</b> Choose a dataset and the <i>tiny</i> preset on the "
                "left and press <b>Start training</b>. This page then follows the run by itself: progress, curves, "
                "the newest generated images and the log.</div>")
    colour = STATE_COLOURS.get(v.state, "#57606a")
    spk, kimg = current_speed(v, stats)
    frac = min(1.0, kimg / v.total_kimg) if v.total_kimg else 0.0
    gpu = None
    if stats:
        g = stats[-1].get("Resources/peak_gpu_mem_gb")
        gpu = g.get("mean") if isinstance(g, dict) else g
    parts = [f"<b>{kimg:.2f}</b> of {v.total_kimg:g} kimg" if v.total_kimg else f"<b>{kimg:.2f}</b> kimg",
             f"tick {v.tick}"]
    if spk:
        parts.append(f"{spk:.1f} s/kimg")
    if v.state in ("running", "starting") and v.total_kimg:
        parts.append(f"ETA {fmt_duration(max(0.0, (v.total_kimg - kimg) * spk))}" if spk else "ETA measuring…")
    if gpu:
        parts.append(f"GPU memory {float(gpu):.2f} GB")
    if v.snapshot:
        parts.append(f"snapshot {html.escape(str(v.snapshot))}")
    msg = (f"<div class='run-message run-message-{v.state}'>{html.escape(v.message)}</div>"
           if v.message and v.message != v.state and v.message != "training" else "")
    return (f"<div class='run-status'><span class='run-state' data-state='{v.state}' style='background:{colour}'>"
            f"{v.state}</span> <b>{html.escape(v.name)}</b>"
            f"<div class='run-progress'><div style='width:{frac * 100:.1f}%'></div></div>"
            f"<div class='run-facts'>{' · '.join(parts)}</div>{msg}</div>")


def build(studio: Studio, sup: Supervisor, datasets_refresh=None):
    """The Train tab. Returns {'refresh': fn, 'outputs': [...] } for refreshing its choices from elsewhere."""
    presets = preset_names()
    no_data = ("**No datasets yet.** Training needs a prepared dataset: open the *Data* tab, keep the built-in "
               "emoji set and press *Prepare dataset*, then come back here.")
    empty_md = gr.Markdown(no_data, visible=not dataset_choices(studio), elem_id="train-empty")
    with gr.Row():
        with gr.Column(scale=2, min_width=320):
            dataset = gr.Dropdown(dataset_choices(studio), value=(dataset_choices(studio) or [None])[0],
                                  label="Dataset", elem_id="train-dataset", allow_custom_value=True)
            with gr.Row():
                preset = gr.Dropdown(presets, value=presets[0], label="Preset", elem_id="train-preset")
                kimg = gr.Number(value=10, minimum=0.001, label="Length (kimg)", elem_id="train-kimg",
                                 info="thousands of images shown to D")
            with gr.Accordion("More settings", open=False):
                with gr.Row():
                    batch = gr.Number(value=0, precision=0, minimum=0, label="Batch (0 = preset's)",
                                      elem_id="train-batch")
                    gamma = gr.Number(value=0, minimum=0, label="R1 gamma (0 = preset's)")
                with gr.Row():
                    snap = gr.Number(value=0, precision=0, minimum=0, label="Snapshot every N ticks (0 = preset's)",
                                     elem_id="train-snap")
                    tick = gr.Number(value=0, minimum=0, label="kimg per tick (0 = preset's)", elem_id="train-tick")
                with gr.Row():
                    aug = gr.Radio(list(AUG_FLAG), value="ADA (adaptive)", label="Augmentation")
                    augpipe = gr.Dropdown(AUGPIPES, value="bgc", label="Pipe")
                with gr.Row():
                    p = gr.Number(value=0.2, minimum=0, maximum=1, label="p (for fixed augmentation)")
                    target = gr.Number(value=0, minimum=0, maximum=1, label="ADA target (0 = preset's, 0.6)")
                with gr.Row():
                    mirror = gr.Checkbox(value=False, label="Mirror (x-flip) images")
                    cond = gr.Checkbox(value=False, label="Class-conditional")
                metrics = gr.Dropdown(METRICS, value="auto", label="Metrics at each snapshot (auto: kid1k on a GPU)")
                seed = gr.Number(value=0, precision=0, label="Seed")
                start_from = gr.Radio([START_SCRATCH, START_SNAPSHOT, START_UPLOAD], value=START_SCRATCH,
                                      label="Start from")
                snapshot = gr.Dropdown([], label="Snapshot", visible=False, elem_id="train-from-snapshot",
                                       allow_custom_value=True)
                upload = gr.File(label="Network file (.pt or .pkl)", file_types=[".pt", ".pkl"], visible=False)
                freezed = gr.Number(value=0, precision=0, minimum=0, label="Freeze D's first N layers",
                                    visible=False)
                force = gr.Checkbox(value=False, label="Run alongside a training already on this GPU")
            with gr.Row():
                start_btn = gr.Button("Start training", variant="primary", elem_id="train-start-btn")
                stop_btn = gr.Button("Stop", variant="stop", elem_id="train-stop-btn")
                resume_btn = gr.Button("Resume", elem_id="train-resume-btn")
            with gr.Group():
                estimate_btn = gr.Button("Estimate time on this machine", size="sm", elem_id="train-estimate-btn")
                estimate_md = gr.Markdown(elem_id="train-estimate")
        with gr.Column(scale=5):
            with gr.Row():
                run_pick = gr.Dropdown([NEWEST], value=NEWEST, label="Watching", elem_id="train-run", scale=4,
                                       allow_custom_value=True)
                refresh_btn = gr.Button("Refresh", size="sm", scale=1)
            status = gr.HTML(status_html(None, []), elem_id="train-status")
            health_md = gr.Markdown(elem_id="train-health")  # engine.train.health's warnings, on each refresh
            plot = gr.Plot(label="Curves", elem_id="train-plot")
            with gr.Row():
                with gr.Column(scale=3):
                    fakes = gr.Image(label="Generated images", interactive=False, elem_id="fakes-img",
                                     type="filepath", height=320)
                    fakes_slider = gr.Slider(0, 1, value=0, step=1, label="Grid (drag for earlier ones)",
                                             elem_id="fakes-slider")
                with gr.Column(scale=2):
                    log_box = gr.Textbox(label="log.txt (last lines)", lines=14, max_lines=14, interactive=False,
                                         elem_id="train-log", autoscroll=True)
            runs = gr.Dataframe(headers=["Run", "Dataset", "Preset", "kimg", "Best FID", "State"],
                                interactive=False, label="Runs", elem_id="train-runs")
    timer = gr.Timer(REFRESH_SEC)
    seen = gr.State({})

    # ------------------------------------------------------------------ reading the run
    def chosen_view(name) -> RunView | None:
        views = sup.runs()
        if name and name != NEWEST:
            for v in views:
                if v.name == name:
                    return v
            return None
        live = [v for v in views if v.live]
        return (live or views or [None])[0]

    def run_choices():
        return [NEWEST] + [v.name for v in sup.runs() if v.run_dir is not None]

    def snapshot_choices():
        out = []
        for v in sup.runs():
            if v.run_dir is None:
                continue
            for s in sorted(v.run_dir.glob("network-snapshot-*.pt"), reverse=True):
                out.append(f"{v.name}/{s.name}")
        return out

    def watch(name, slider_value, memo):
        """Everything the right-hand side shows; the plot and image only when they changed."""
        v = chosen_view(name)
        memo = dict(memo or {})
        if v is None or v.run_dir is None:
            return (status_html(v, []), charts.empty_figure("the curves appear after the first tick"),
                    None, gr.update(maximum=1, value=0), v.log_tail if v else "", runs_table(sup.runs()), memo)
        stats = read_stats(v.run_dir)
        metrics = read_metrics(v.run_dir)
        grids = fakes_files(v.run_dir)
        sig = (v.name, len(stats), sum(len(r) for r in metrics.values()))
        if memo.get("plot") != sig:
            fig = (charts.training_figure(stats, metrics) if stats
                   else charts.empty_figure("the curves appear after the first tick"))
            memo["plot"] = sig
        else:
            fig = gr.skip()
        n = len(grids)
        prev_n = memo.get("grids", 0) if memo.get("run") == v.name else 0
        follow = slider_value is None or memo.get("run") != v.name or int(slider_value) >= prev_n - 1
        idx = n - 1 if follow else min(int(slider_value), n - 1)
        if n and (memo.get("shown") != str(grids[idx]) or memo.get("run") != v.name):
            img = str(grids[idx])
            memo["shown"] = img
        elif not n:
            img, memo["shown"] = None, None
        else:
            img = gr.skip()
        memo["grids"], memo["run"] = n, v.name
        slider = gr.update(maximum=max(1, n - 1), value=max(0, idx), label=_grid_label(grids, idx))
        return status_html(v, stats), fig, img, slider, v.log_tail, runs_table(sup.runs()), memo

    watch_outputs = [status, plot, fakes, fakes_slider, log_box, runs, seen]

    @friendly
    def on_slider(name, value):
        v = chosen_view(name)
        grids = fakes_files(v.run_dir if v else None)
        if not grids:
            return None
        i = max(0, min(int(value or 0), len(grids) - 1))
        return str(grids[i])

    def on_start_from(choice):
        return (gr.update(visible=choice == START_SNAPSHOT, choices=snapshot_choices()),
                gr.update(visible=choice == START_UPLOAD), gr.update(visible=choice != START_SCRATCH))

    @friendly
    def do_start(ds, cfg, kimg_v, batch_v, gamma_v, snap_v, tick_v, aug_v, pipe_v, p_v, target_v, mirror_v,
                 cond_v, metrics_v, seed_v, from_v, snap_pick, upload_v, freezed_v, force_v, memo,
                 progress=gr.Progress()):
        if not ds:
            raise UserError("no dataset chosen: prepare one on the Data tab first")
        data = studio.inside(studio.datasets_dir / Path(str(ds)).name, "dataset")
        if not data.exists():
            raise UserError(f"dataset not found: {ds}")
        if not kimg_v or float(kimg_v) <= 0:
            raise UserError("length must be above 0 kimg")
        resume = None
        if from_v == START_SNAPSHOT:
            if not snap_pick:
                raise UserError("choose the snapshot to start from")
            run_name, snap_name = str(snap_pick).split("/", 1)
            resume = studio.inside(studio.runs_dir / Path(run_name).name / Path(snap_name).name, "snapshot")
            if not resume.is_file():
                raise UserError(f"snapshot not found: {snap_pick}")
        elif from_v == START_UPLOAD:
            if not upload_v:
                raise UserError("upload the network file to start from (.pt or .pkl)")
            if Path(str(upload_v)).suffix.lower() not in (".pt", ".pkl"):
                raise UserError("a network file ends in .pt or .pkl")
            resume = studio.keep_upload(upload_v, "networks", "network file")
        options = {
            "batch": int(batch_v) if batch_v else None,
            "gamma": gamma_v if gamma_v else None,
            "snap": int(snap_v) if snap_v else None,
            "tick": tick_v if tick_v else None,
            "aug": AUG_FLAG.get(aug_v, "ada"),
            "augpipe": pipe_v if AUG_FLAG.get(aug_v) != "noaug" else None,
            "p": p_v if AUG_FLAG.get(aug_v) == "fixed" and p_v is not None else None,
            "target": target_v if AUG_FLAG.get(aug_v) == "ada" and target_v else None,
            "mirror": bool(mirror_v),
            "cond": True if cond_v else None,
            "metrics": metrics_v or "none",
            "seed": int(seed_v or 0),
            "freezed": int(freezed_v) if resume and freezed_v else None,
        }
        if cond_v and not int(dataset_summary(data).get("label_dim") or dataset_summary(data).get("num_classes") or 0):
            raise UserError(f"dataset {data.name} has no labels; untick class-conditional or prepare it with labels")
        progress(0, desc="Starting the training process")
        rec = sup.start(data, cfg, float(kimg_v), options, force=bool(force_v),
                        resume=str(resume) if resume else None)
        return _after_launch(rec, memo)

    def _after_launch(rec, memo):
        run_dir = sup.wait_for_run_dir(rec, timeout=90)
        if run_dir is None:
            view = [v for v in sup.runs() if (v.launch or {}).get("pid") == rec["pid"]]
            why = view[0].message if view else "see the console log"
            if view and view[0].live:
                gr.Warning("the training is still starting; it appears below when it has made its run folder")
                return gr.update(choices=run_choices(), value=NEWEST), memo
            raise UserError(f"the training stopped before it began: {why}")
        gr.Info(f"Training started: {run_dir.name}")
        return gr.update(choices=run_choices(), value=run_dir.name), {}

    train_inputs = [dataset, preset, kimg, batch, gamma, snap, tick, aug, augpipe, p, target, mirror, cond, metrics,
                    seed, start_from, snapshot, upload, freezed, force, seen]
    start_btn.click(do_start, train_inputs, [run_pick, seen], api_name="train_start", concurrency_id="train",
                    concurrency_limit=1).then(watch, [run_pick, fakes_slider, seen], watch_outputs, api_name=False)

    def _target(name) -> RunView:
        v = chosen_view(name)
        if v is None or v.run_dir is None:
            raise UserError("no run to act on yet")
        return v

    @friendly
    def do_stop(name):
        v = _target(name)
        if not v.live:
            live = [x for x in sup.runs() if x.live and x.run_dir is not None]
            if name in (None, "", NEWEST) and live:
                v = live[0]
            else:
                raise UserError(f"run {v.name} is not running (state: {v.state})")
        sup.stop(v.run_dir)
        gr.Info(f"Stopping {v.name}: it finishes the current step and writes a snapshot first")
        return v.name

    stop_btn.click(do_stop, run_pick, run_pick, api_name="train_stop", concurrency_id="train").then(
        watch, [run_pick, fakes_slider, seen], watch_outputs, api_name=False)

    @friendly
    def do_resume(name, kimg_v, force_v, memo):
        v = _target(name)
        more = float(kimg_v) if kimg_v and float(kimg_v) > (v.total_kimg or 0) else None
        rec = sup.resume(v.run_dir, kimg=more, force=bool(force_v))
        return _after_launch(rec, memo)

    resume_btn.click(do_resume, [run_pick, kimg, force, seen], [run_pick, seen], api_name="train_resume",
                     concurrency_id="train").then(watch, [run_pick, fakes_slider, seen], watch_outputs,
                                                  api_name=False)

    @friendly
    def do_estimate(ds, cfg, kimg_v, batch_v, progress=gr.Progress()):
        if not ds:
            raise UserError("choose a dataset first: the estimate depends on its resolution")
        data = studio.inside(studio.datasets_dir / Path(str(ds)).name, "dataset")
        info = dataset_summary(data)
        progress(0, desc="Timing a few training steps")
        est = estimate.estimate(sup, data, int(info.get("resolution") or 32), int(info.get("channels") or 3), cfg,
                                int(batch_v) if batch_v else None)
        return estimate.describe(est, float(kimg_v or 0))

    estimate_btn.click(do_estimate, [dataset, preset, kimg, batch], estimate_md, api_name="estimate",
                       concurrency_id="estimate", concurrency_limit=1)

    run_pick.change(lambda: {}, None, seen, api_name=False).then(
        watch, [run_pick, fakes_slider, seen], watch_outputs, api_name=False)
    fakes_slider.release(on_slider, [run_pick, fakes_slider], fakes, api_name=False)
    start_from.change(on_start_from, start_from, [snapshot, upload, freezed], api_name=False)
    refresh_btn.click(lambda: gr.update(choices=run_choices()), None, run_pick, api_name=False).then(
        watch, [run_pick, fakes_slider, seen], watch_outputs, api_name=False)
    timer.tick(watch, [run_pick, fakes_slider, seen], watch_outputs, api_name="train_watch",
               show_progress="hidden", concurrency_limit=None)
    timer.tick(lambda name: health.as_markdown(health.check_run(v.run_dir)) if (v := chosen_view(name)) and v.run_dir
               else "", run_pick, health_md, api_name="train_health", show_progress="hidden")

    def refresh_choices():
        names = dataset_choices(studio)
        return (gr.update(choices=names, value=names[0] if names else None), gr.update(choices=run_choices()),
                gr.update(visible=not names))

    return {"refresh": refresh_choices, "outputs": [dataset, run_pick, empty_md], "watch": watch,
            "watch_inputs": [run_pick, fakes_slider, seen], "watch_outputs": watch_outputs}


def _grid_label(grids: list[Path], idx: int) -> str:
    if not grids:
        return "Grid (none yet)"
    name = grids[idx].name
    m = FAKES_RE.match(name)
    what = "before training" if name == "fakes_init.png" else f"at {int(m.group(1))} kimg" if m else name
    return f"Grid {idx + 1} of {len(grids)}: {what}"
