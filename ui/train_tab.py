"""Train tab: settings, Start / Stop / Resume, and a page that follows the run every few seconds."""

from __future__ import annotations

import html
import statistics
from pathlib import Path
from types import SimpleNamespace

import gradio as gr

from engine.errors import UserError
from engine.timefmt import format_time
from engine.train import health
from engine.train import options as settings
from engine.train.expected import quality_text
from engine.train.options import DEFAULT_AUGPIPE
from engine.train.presets import PRESETS
from engine import runs as run_files
from engine.runs import read_metrics, read_stats
from ui import charts, estimate
from ui.common import Studio, friendly
from ui.datasets import dataset_choices, dataset_summary
from ui.supervisor import RunView, Supervisor, settings_from_run

# The trainer's default pipe first: the menu opens on what a run gets without a choice.
AUGPIPES = [DEFAULT_AUGPIPE] + [name for name in settings.AUGPIPES if name != DEFAULT_AUGPIPE]
METRICS = list(settings.METRIC_CHOICES)
AUG_FLAG = {"ADA (adaptive)": "ada", "Fixed p": "fixed", "None": "noaug"}
# The training options on the form, row by row; each field's kind, range, label and read-back come from
# engine.train.options.OPTIONS.
# (New rows go last: /train_start takes the fields in this order.)
FORM_ROWS = (("batch", "gamma"), ("snap", "tick"), ("aug", "augpipe"), ("p", "target"), ("mirror", "cond"),
             ("metrics",), ("seed",), ("lecam", "apa"), ("apa_target",))
FORM_OPTIONS = tuple(name for row in FORM_ROWS for name in row)
FORM_KEYS = ["dataset", "preset", "kimg", *FORM_OPTIONS]
FORM_DEFAULTS = {"p": 0.2, "metrics": "auto", "augpipe": DEFAULT_AUGPIPE}  # where the form starts other than empty
FORM_ONLY_WITH_AUG = {"p": ("fixed",), "target": ("ada",), "augpipe": ("ada", "fixed")}
START_SCRATCH, START_SNAPSHOT, START_UPLOAD = "Scratch", "A run's snapshot", "An uploaded network (.pt / .pkl)"
AUG_LABEL = {flag: label for label, flag in AUG_FLAG.items()}
# A switch the preset decides unless it is given (a bool option whose default is None) is a three-way menu.
PRESETS_CHOICE = "the preset's"
SWITCH = {PRESETS_CHOICE: None, "on": True, "off": False}
NEWEST = "(newest run)"
START_LABEL = "Start a new run"
REFRESH_SEC = 3.0
# The log box follows its newest line, as a terminal does (gradio's own autoscroll misses updates from the server).
SCROLL_LOG_JS = ("() => { const t = document.querySelector('#train-log textarea'); "
                 "if (t) { t.scrollTop = t.scrollHeight; } }")


def preset_names() -> list[str]:
    """The trainer's presets, the CPU-sized one first (the dashboard's default)."""
    names = list(PRESETS)
    return (["tiny"] if "tiny" in names else []) + [n for n in names if n != "tiny"]


def fakes_files(run_dir: Path | None) -> list[Path]:
    """fakes_init.png then the fakes grids in kimg order."""
    return [p for _, p in run_files.list_fakes(run_dir)]


def run_short(name: str) -> str:
    """'00003' of '00003-emoji16-tiny': how the buttons name a run."""
    return run_files.run_number(name) or name


def run_options(run_dir: Path) -> dict:
    return run_files.read_options(run_dir) or {}


def best_fid(run_dir: Path) -> float | None:
    best = None
    for name, recs in read_metrics(run_dir).items():
        if not name.startswith("fid"):
            continue
        for _, (xs, ys) in charts.metric_points(recs).items():
            for y in ys:
                best = y if best is None else min(best, y)
    return best


RUNS_HEADERS = ["Run", "Dataset", "Preset", "kimg done / length", "Best FID", "State"]


def runs_table(views: list[RunView], kimg_of: dict | None = None) -> list[list]:
    """One row a run. `kimg_of` {run name: kimg} gives the figure the status shows for the watched run, so the two
    agree while status.json lags behind stats.jsonl (it is written after the tick's snapshot)."""
    rows = []
    for v in views:
        opts = run_options(v.run_dir) if v.run_dir else {}
        launch = v.launch or {}
        dataset = Path(str(launch.get("data") or _opt(opts, "data", "path") or "")).name or "—"
        preset = launch.get("cfg") or _opt(opts, "cfg") or (v.name.split("-")[2] if v.name.count("-") >= 2 else "—")
        fid = best_fid(v.run_dir) if v.run_dir else None
        kimg = float((kimg_of or {}).get(v.name, v.kimg))
        total = v.total_kimg or float(_opt(opts, "total_kimg") or 0)
        rows.append([v.name, dataset, preset, f"{kimg:.2f} / {total:g}" if total else f"{kimg:.2f}",
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


def _process_ticks(v: RunView, stats: list[dict]) -> list[dict]:
    """The ticks timed by the training process now behind the run (all ticks for a run that no longer runs)."""
    if not v.live or not v.started:
        return stats
    mine = []
    for rec in reversed(stats):
        ts = rec.get("timestamp")
        if not isinstance(ts, (int, float)) or ts < float(v.started):
            break
        mine.append(rec)
    return mine[::-1]


def current_speed(v: RunView, stats: list[dict]) -> tuple[float | None, float]:
    """(sec/kimg, kimg): the median of the newest ticks timed by the process now behind the run, and its kimg.

    Start-up is left out: tick 0 of a run (one step) and the first full tick of each process (a new run's tick 1,
    a resumed process's first tick: they carry the first calls' costs) are not counted, so until the process has
    timed a second full tick the speed is unknown ("measuring").
    Ticks of an earlier process (before a resume, perhaps on other hardware) do not count while one runs.
    status.json carries the kimg only once the tick's snapshot is written; stats.jsonl gets it at the end of the
    tick, so the larger of the two is the run's position.
    """
    kimg = float(v.kimg)
    if stats:
        kimg = max(kimg, _stat(stats[-1], "Progress/kimg") or 0.0)
    ticks = _process_ticks(v, stats)
    full = [r for r in ticks if (_stat(r, "Progress/tick") or 0) > 0]
    timed = full[1:]  # the process's first full tick carries its start-up
    vals = [x for r in timed[-5:] if (x := _stat(r, "Timing/sec_per_kimg")) and x > 0]
    return (statistics.median(vals) if vals else None), kimg


def logged_tick(v: RunView, stats: list[dict]) -> int | None:
    """The number of the newest tick line in log.txt (status.json holds the next tick's number)."""
    if stats:
        t = _stat(stats[-1], "Progress/tick")
        if t is not None:
            return int(t)
    return v.tick - 1 if v.tick > 0 else None


def status_html(v: RunView | None, stats: list[dict]) -> str:
    if v is None:
        return ("<div class='empty-state'><b>No runs yet.</b> Choose a dataset and the <i>tiny</i> preset on the "
                "left and press <b>Start a new run</b>. This page then follows the run by itself: progress, "
                "curves, the newest generated images and the log.</div>")
    colour = STATE_COLOURS.get(v.state, "#57606a")
    spk, kimg = current_speed(v, stats)
    frac = min(1.0, kimg / v.total_kimg) if v.total_kimg else 0.0
    gpu = None
    if stats:
        g = stats[-1].get("Resources/peak_gpu_mem_gb")
        gpu = g.get("mean") if isinstance(g, dict) else g
    length_from = (v.launch or {}).get("length_from")
    parts = [f"<b>{kimg:.2f}</b> of {v.total_kimg:g} kimg" if v.total_kimg else f"<b>{kimg:.2f}</b> kimg"]
    if length_from and v.total_kimg:
        parts.append(f"length {float(length_from):g} → {v.total_kimg:g} kimg")
    tick = logged_tick(v, stats)
    parts.append(f"tick {tick}" if tick is not None else "no tick yet")
    if spk:
        parts.append(f"{spk:.1f} s/kimg")
    if v.state in ("running", "starting") and v.total_kimg:
        parts.append(f"ETA {format_time(max(0.0, (v.total_kimg - kimg) * spk), 'page')}" if spk
                     else "ETA measuring… (start-up not counted)")
    if gpu:
        parts.append(f"GPU memory {float(gpu):.2f} GB")
    if v.snapshot:
        at = run_files.snapshot_kimg(v.snapshot)
        parts.append(f"last snapshot {html.escape(str(v.snapshot))}" + (f" ({at:g} kimg)" if "_" in str(v.snapshot)
                                                                        and at is not None else ""))
    text = v.message if v.message and v.message not in (v.state, "training") else ""
    if v.state in ("stopped", "failed") and not v.live and v.run_dir is not None:
        snap = run_files.latest_snapshot(v.run_dir)
        if snap is not None:
            how = (f"Press “Resume run {run_short(v.name)}” to continue from {snap.name} to "
                   f"{v.total_kimg:g} kimg (change Length first for another length), or Start a new run.")
            text = f"{text}. {how}" if text else how
    msg = f"<div class='run-message run-message-{v.state}'>{html.escape(text)}</div>" if text else ""
    msg += "".join(f"<div class='run-message run-slow-path'>{html.escape(line)}</div>"
                   for line in slow_path_lines(v))
    return (f"<div class='run-status'><span class='run-state' data-state='{v.state}' style='background:{colour}'>"
            f"{v.state}</span> <b>{html.escape(v.name)}</b>"
            f"<div class='run-progress'><div style='width:{frac * 100:.1f}%'></div></div>"
            f"<div class='run-facts'>{' · '.join(parts)}</div>{msg}</div>")


def slow_path_lines(v: RunView) -> list[str]:
    """The run's "slow path: ..." line (an op on the reference although a kernel should run, and the measured
    cost), as its newest training session wrote it to log.txt; [] when it has none."""
    if v.run_dir is None:
        return []
    from engine.ops import slowpath

    return slowpath.lines_in_log(run_files.log_path(v.run_dir))


def form_values(v: RunView | None) -> dict | None:
    """The settings run `v` was launched with, by form field (None when they are not known)."""
    if v is None:
        return None
    rec = v.launch or {}
    if rec.get("data") and rec.get("cfg"):
        data, cfg, opts = rec["data"], rec["cfg"], dict(rec.get("options") or {})
        total = float(v.total_kimg or rec.get("kimg") or 0)
    elif v.run_dir is not None:
        try:
            data, cfg, opts, total = settings_from_run(v.run_dir)
        except UserError:
            return None
        total = float(v.total_kimg or total)
    else:
        return None
    return {"dataset": Path(str(data)).name, "preset": cfg, "kimg": total,
            **{name: form_value(name, opts.get(name)) for name in FORM_OPTIONS}}


def optional_number(name: str) -> bool:
    """A number the preset fills in when the field is left empty (a text field: a number field cannot be empty)."""
    o = settings.OPTION[name]
    return o.kind in ("int", "float") and FORM_DEFAULTS.get(name, o.default) is None


def preset_switch(name: str) -> bool:
    """An on/off option that the preset decides when it is not given (a menu: the preset's / on / off)."""
    o = settings.OPTION[name]
    return o.kind == "bool" and o.default is None


def form_value(name: str, value):
    """The form field's value for option `name` as a run was launched with it ("" / None: not given, the
    preset's)."""
    o = settings.OPTION[name]
    if name == "aug":
        return AUG_LABEL.get(str(value or o.default), AUG_LABEL[o.default])
    if preset_switch(name):
        if value is None or value == "":
            return PRESETS_CHOICE
        return "on" if (bool(int(value)) if isinstance(value, (str, int, float)) else bool(value)) else "off"
    if value is None or value == "":
        return "" if optional_number(name) else FORM_DEFAULTS.get(name, o.default)
    if o.kind == "bool":
        return bool(int(value)) if isinstance(value, (str, int, float)) else bool(value)
    if o.kind in ("int", "float"):
        number = int(value) if o.kind == "int" else float(value)
        return f"{number:g}" if optional_number(name) else number
    return str(value)


def form_batch(value) -> int | None:
    """The form's Batch field -> a batch, or None for the preset's."""
    if value is None or str(value).strip() == "":
        return None
    o = settings.OPTION["batch"]
    return _number(o, value, o.label)


def _number(o, value, what):
    """A form number (typed text or a number) -> int or float; UserError naming the field."""
    try:
        number = float(str(value).strip()) if isinstance(value, str) else float(value)
    except (TypeError, ValueError):
        raise UserError(f"{what} {str(value).strip()!r} is not a number; leave it empty for the preset's") from None
    if o.kind == "int":
        if not number.is_integer():
            raise UserError(f"{what} {str(value).strip()!r} is not a whole number")
        return int(number)
    return number


def form_flags(values: dict) -> dict:
    """The form's settings -> {option: value} for the trainer's flags; an empty field is left out (the preset's
    value is used), 0 is a value. Settings of another augmentation mode are left out too."""
    aug = AUG_FLAG.get(values.get("aug"), "ada")
    out = {}
    for name in FORM_OPTIONS:
        o, value = settings.OPTION[name], values.get(name)
        if name == "aug":
            value = aug
        elif aug not in FORM_ONLY_WITH_AUG.get(name, (aug,)) or value is None or str(value).strip() == "":
            continue
        elif o.kind in ("int", "float"):
            value = _number(o, value, o.label or o.flag)
        elif preset_switch(name):
            if SWITCH.get(value) is None:
                continue
            value = SWITCH[value]
        elif o.kind == "bool":
            value = bool(value)
        out[name] = value
    settings.check_numbers(SimpleNamespace(**{n: out.get(n) for n in settings.OPTION}),
                           name_of=lambda o: o.label or o.flag)
    return out


def resume_length(v: RunView, kimg_v, filled: dict | None) -> float | None:
    """The new length for resuming run `v`, or None to keep the one it was launched with.

    `filled` ({"run", "kimg"}) is what the form was filled with from the watched run: only a length the user
    typed over it counts. A form that shows another run's settings changes nothing; without a record of the
    form (an API call) a length other than the run's is taken as meant.
    """
    length = float(kimg_v) if kimg_v else None
    filled = filled or {}
    if length is None:
        return None
    if filled.get("run") == v.name:
        if abs(length - float(filled.get("kimg") or 0)) < 1e-9:
            return None
    elif filled:
        return None
    return None if abs(length - float(v.total_kimg or 0)) < 1e-9 else length




def button_updates(v: RunView | None) -> tuple:
    """(start, stop, resume) buttons for the watched run: Stop while it trains, Resume for a stopped or failed run
    with a snapshot, named for it."""
    # A launch still without its run folder has nothing Stop could keep a snapshot of yet.
    going = v is not None and v.live and v.state in ("running", "starting", "stopping") and v.run_dir is not None
    can_resume = (v is not None and not v.live and v.state in ("stopped", "failed") and v.run_dir is not None
                  and run_files.latest_snapshot(v.run_dir) is not None)
    stop = gr.update(visible=going, interactive=going and v.state != "stopping",
                     value="Stopping…" if going and v.state == "stopping" else f"Stop run {run_short(v.name)}"
                     if going else "Stop")
    resume = gr.update(visible=can_resume, value=f"Resume run {run_short(v.name)}" if can_resume else "Resume")
    return gr.update(value=START_LABEL), stop, resume


def build(studio: Studio, sup: Supervisor, datasets_refresh=None):
    """The Train tab: the settings form (left), the watched run (right), then the events of each part.

    Returns {'refresh': fn, 'outputs': [...], 'watch': fn, 'fill': fn, ...} for refreshing it from elsewhere."""
    no_data = ("**No datasets yet.** Training needs a prepared dataset: open the *Data* tab, keep the built-in "
               "emoji set and press *Prepare dataset*, then come back here.")
    empty_md = gr.Markdown(no_data, visible=not dataset_choices(studio), elem_id="train-empty")
    with gr.Row():
        with gr.Column(scale=2, min_width=320):
            form = _settings_form(studio)
        with gr.Column(scale=5):
            panel = _run_panel()
    from ui import copycheck  # "Is it copying?": a network's fakes beside their nearest training images

    copycheck.build(studio)
    # Every component by name, and below what the sections share, so each section takes what it wires.
    c = SimpleNamespace(**vars(form), **vars(panel), empty_md=empty_md)
    c.timer = gr.Timer(REFRESH_SEC)
    c.seen = gr.State({})
    c.form_of = gr.State({})  # {"run": name, "kimg": length} the form was filled from: tells a changed length
    c.form_fields = [getattr(c, key) for key in FORM_KEYS]
    c.watch_inputs = [c.run_pick, c.fakes_slider, c.seen]
    c.watch_outputs = [c.status, c.plot, c.fakes, c.fakes_slider, c.log_box, c.runs, c.seen, c.start_btn, c.stop_btn,
                       c.resume_btn]

    _run_reading(sup, c)
    _form_filling(studio, sup, c)
    _start_stop_resume(studio, sup, c)
    _estimate_button(studio, sup, c)
    _following(c)
    return _refreshers(studio, c)


# ---------------------------------------------------------------------------------------------- the layout


def _settings_form(studio: Studio) -> SimpleNamespace:
    """The left column: dataset, preset, length, more settings, start source and the buttons."""
    presets = preset_names()
    dataset = gr.Dropdown(dataset_choices(studio), value=(dataset_choices(studio) or [None])[0],
                          label="Dataset", elem_id="train-dataset", allow_custom_value=True)
    with gr.Row():
        preset = gr.Dropdown(presets, value=presets[0], label="Preset", elem_id="train-preset")
        kimg = gr.Number(value=20, minimum=0.001, label="Length (kimg)", elem_id="train-kimg",
                         info="thousands of images shown to D")
    fields = {}
    with gr.Accordion("More settings", open=False) as more:
        for row in FORM_ROWS:
            with gr.Row():
                for name in row:
                    fields[name] = _form_field(name)
        start_from = gr.Radio([START_SCRATCH, START_SNAPSHOT, START_UPLOAD], value=START_SCRATCH,
                              label="Start from")
        snapshot = gr.Dropdown([], label="Snapshot", visible=False, elem_id="train-from-snapshot",
                               allow_custom_value=True)
        upload = gr.File(label="Network file (.pt or .pkl)", file_types=list(run_files.NETWORK_SUFFIXES),
                         visible=False)
        freezed = gr.Number(value=0, precision=0, minimum=0, label="Freeze D's first N layers",
                            visible=False)
        force = gr.Checkbox(value=False, label="Run alongside a training already on this GPU")
    with gr.Row():
        start_btn = gr.Button(START_LABEL, variant="primary", elem_id="train-start-btn")
        stop_btn = gr.Button("Stop", variant="stop", elem_id="train-stop-btn", visible=False)
        resume_btn = gr.Button("Resume", elem_id="train-resume-btn", visible=False)
    with gr.Group():
        estimate_btn = gr.Button("Estimate time on this machine", size="sm", elem_id="train-estimate-btn")
        estimate_md = gr.Markdown(elem_id="train-estimate")
    return SimpleNamespace(dataset=dataset, preset=preset, kimg=kimg, **fields, more=more, start_from=start_from,
                           snapshot=snapshot, upload=upload, freezed=freezed, force=force, start_btn=start_btn,
                           stop_btn=stop_btn, resume_btn=resume_btn, estimate_btn=estimate_btn,
                           estimate_md=estimate_md)


def _form_field(name: str):
    """The form's widget for a training option, made from its entry in engine.train.options.OPTIONS."""
    o = settings.OPTION[name]
    value = FORM_DEFAULTS.get(name, o.default)
    kw = dict(label=o.label or o.flag, elem_id="train-" + name.replace("_", "-"))
    if o.info:
        kw["info"] = o.info
    if name == "aug":
        return gr.Radio(list(AUG_FLAG), value=AUG_LABEL[o.default], **kw)
    if name == "augpipe":
        return gr.Dropdown(AUGPIPES, value=value, **kw)
    if name == "metrics":
        return gr.Dropdown(METRICS, value=value, **kw)
    if preset_switch(name):
        return gr.Dropdown(list(SWITCH), value=PRESETS_CHOICE, **kw)
    if o.kind == "bool":
        return gr.Checkbox(value=bool(value), **kw)
    if optional_number(name):
        return gr.Textbox(value="", placeholder="the preset's", max_lines=1, **kw)
    return gr.Number(value=value, precision=0 if o.kind == "int" else None, minimum=o.low, maximum=o.high, **kw)


def _run_panel() -> SimpleNamespace:
    """The right column: which run is watched, its status, curves, grids, log, and the table of runs."""
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
            # Numbered from 1, as its label counts ("Grid 4 of 4" sits at 4).
            fakes_slider = gr.Slider(1, 2, value=1, step=1, label="Grid (drag for earlier ones)",
                                     elem_id="fakes-slider")
        with gr.Column(scale=2):
            log_box = gr.Textbox(label="log.txt (last lines)", lines=14, max_lines=14, interactive=False,
                                 elem_id="train-log", autoscroll=True)
    # Long run names wrap inside their column, so every column fits the page's width.
    runs = gr.Dataframe(headers=RUNS_HEADERS, interactive=False, label="Runs", elem_id="train-runs",
                        wrap=True, column_widths=["34%", "16%", "9%", "17%", "10%", "14%"])
    return SimpleNamespace(run_pick=run_pick, refresh_btn=refresh_btn, status=status, health_md=health_md, plot=plot,
                           fakes=fakes,
                           fakes_slider=fakes_slider, log_box=log_box, runs=runs)


# ---------------------------------------------------------------------------------------------- the events


def _run_reading(sup: Supervisor, c: SimpleNamespace) -> None:
    """c.chosen_view, c.run_choices, c.snapshot_choices and c.watch: what the page reads of the runs."""
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
            for _, snap in reversed(run_files.list_snapshots(v.run_dir)):
                out.append(f"{v.name}/{snap.name}")
        return out

    def watch(name, _slider, memo):
        """Everything the right-hand side shows; the plot and image only when they changed."""
        v = chosen_view(name)
        memo = dict(memo or {})
        if v is None or v.run_dir is None:
            return (status_html(v, []), charts.empty_figure("the curves appear after the first tick"),
                    None, gr.update(minimum=1, maximum=2, value=1), v.log_tail if v else "", runs_table(sup.runs()), memo,
                    *button_updates(v))
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
        idx = grid_index(n, memo, v.name)
        if n and (memo.get("shown") != str(grids[idx]) or memo.get("run") != v.name):
            img = str(grids[idx])
            memo["shown"] = img
        elif not n:
            img, memo["shown"] = None, None
        else:
            img = gr.skip()
        memo["grids"], memo["run"] = n, v.name
        # (a one-grid run keeps a slider of 1..2: a slider of one position cannot be drawn; 2 shows grid 1)
        slider = gr.update(minimum=1, maximum=max(2, n), value=max(0, idx) + 1, label=_grid_label(grids, idx, stats))
        _, shown_kimg = current_speed(v, stats)
        return (status_html(v, stats), fig, img, slider, v.log_tail, runs_table(sup.runs(), {v.name: shown_kimg}),
                memo, *button_updates(v))

    c.chosen_view, c.run_choices, c.snapshot_choices, c.watch = chosen_view, run_choices, snapshot_choices, watch


def _form_filling(studio: Studio, sup: Supervisor, c: SimpleNamespace) -> None:
    """c.fill: the form takes the watched run's settings (and its cached estimate)."""
    chosen_view, form_fields = c.chosen_view, c.form_fields

    def fill_form(name):
        """The form shows the watched run's settings, so Resume and a new Start begin from what it used."""
        v = chosen_view(name)
        vals = form_values(v)
        if vals is None:
            return (*[gr.skip() for _ in form_fields], {}, cached_estimate(None, None, None, None))
        return (*[gr.update(value=vals[k]) for k in FORM_KEYS], {"run": v.name, "kimg": vals["kimg"]},
                cached_estimate(vals["dataset"], vals["preset"], vals["kimg"], vals["batch"]))

    def cached_estimate(ds, cfg, kimg_v, batch_v):
        """The estimate from earlier runs or a saved warm-up, without training anything (shown on load)."""
        if not ds or not cfg:
            return gr.skip()
        try:
            data = studio.inside(studio.datasets_dir / Path(str(ds)).name, "dataset")
            if not data.exists():
                return gr.skip()
            info = dataset_summary(data)
            est = estimate.known(sup, int(info.get("resolution") or 32), int(info.get("count") or 0), cfg,
                                 form_batch(batch_v))
        except (UserError, OSError, ValueError):
            return gr.skip()
        return estimate.describe(est, float(kimg_v or 0)) if est else gr.skip()

    c.fill = fill_form
    c.fill_outputs = [*form_fields, c.form_of, c.estimate_md]

    # A field of the closed "More settings" is drawn when the section is first opened, and may then show its
    # initial value instead of an update it received while closed: the first opening shows the filled settings
    # again (nobody can have typed into them before).
    settings_fields = [getattr(c, name) for name in FORM_OPTIONS]
    opened = gr.State(False)

    def on_first_open(filled, was_opened):
        v = chosen_view((filled or {}).get("run")) if (filled or {}).get("run") and not was_opened else None
        vals = form_values(v) if v is not None else None
        if vals is None:
            return (*[gr.skip() for _ in settings_fields], True)
        return (*[gr.update(value=vals[name]) for name in FORM_OPTIONS], True)

    c.more.expand(on_first_open, [c.form_of, opened], [*settings_fields, opened], api_name=False)


def _start_stop_resume(studio: Studio, sup: Supervisor, c: SimpleNamespace) -> None:
    """The Start, Stop and Resume buttons."""
    chosen_view, run_choices, watch, watch_outputs = c.chosen_view, c.run_choices, c.watch, c.watch_outputs
    start_from, snapshot, upload, freezed, force = c.start_from, c.snapshot, c.upload, c.freezed, c.force
    seen, run_pick, fakes_slider, start_btn = c.seen, c.run_pick, c.fakes_slider, c.start_btn
    stop_btn, resume_btn, kimg, form_of = c.stop_btn, c.resume_btn, c.kimg, c.form_of

    @friendly
    def do_start(*values, progress=gr.Progress()):
        form = dict(zip(FORM_KEYS, values))
        from_v, snap_pick, upload_v, freezed_v, force_v, memo = values[len(FORM_KEYS):]
        ds, cfg, kimg_v = form["dataset"], form["preset"], form["kimg"]
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
            if not run_files.is_network_file(upload_v):
                raise UserError("a network file ends in .pt or .pkl")
            resume = studio.keep_upload(upload_v, "networks", "network file")
        options = form_flags(form)
        if resume and freezed_v:
            options["freezed"] = int(freezed_v)
        if options.get("cond") and not int(dataset_summary(data).get("label_dim")
                                           or dataset_summary(data).get("num_classes") or 0):
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
        resumed = rec.get("resume") and run_dir in (Path(rec["resume"]), Path(rec["resume"]).parent)
        gr.Info(f"Resumed run {run_dir.name}" if resumed else f"Started a new run: {run_dir.name}")
        return gr.update(choices=run_choices(), value=run_dir.name), {}

    train_inputs = [*c.form_fields, start_from, snapshot, upload, freezed, force, seen]
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
    def do_resume(name, kimg_v, force_v, memo, filled):
        """Continue the run as launched; a length is changed only when the user changed the form's on purpose."""
        v = _target(name)  # a run that is still exiting after its stop is waited for by sup.resume
        length = resume_length(v, kimg_v, filled)
        if v.state == "finished" and length is None:
            raise UserError(f"run {v.name} finished its {v.total_kimg:g} kimg; set a larger length to train on, or "
                            f"start a new run")
        rec = sup.resume(v.run_dir, kimg=length, force=bool(force_v))
        total = float(rec.get("kimg") or 0)
        if rec.get("length_from"):
            gr.Info(f"Resuming run {run_short(v.name)}: length {float(rec['length_from']):g} → {total:g} kimg")
        else:
            gr.Info(f"Resuming run {run_short(v.name)} from its newest snapshot, to {total:g} kimg")
        pick, seen_v = _after_launch(rec, memo)
        return pick, seen_v, {"run": v.name, "kimg": total}

    resume_btn.click(do_resume, [run_pick, kimg, force, seen, form_of], [run_pick, seen, form_of],
                     api_name="train_resume", concurrency_id="train").then(
        watch, [run_pick, fakes_slider, seen], watch_outputs, api_name=False)


def _estimate_button(studio: Studio, sup: Supervisor, c: SimpleNamespace) -> None:
    """Estimate time on this machine: a few timed steps."""
    dataset, preset, kimg, batch, estimate_btn, estimate_md = (c.dataset, c.preset, c.kimg, c.batch, c.estimate_btn,
                                                                c.estimate_md)

    @friendly
    def do_estimate(ds, cfg, kimg_v, batch_v, progress=gr.Progress()):
        if not ds:
            raise UserError("choose a dataset first: the estimate depends on its resolution")
        data = studio.inside(studio.datasets_dir / Path(str(ds)).name, "dataset")
        info = dataset_summary(data)
        progress(0, desc="Timing a few training steps")
        est = estimate.estimate(sup, data, int(info.get("resolution") or 32), int(info.get("channels") or 3), cfg,
                                form_batch(batch_v), size=int(info.get("count") or 0))
        quality = quality_text(cfg, float(kimg_v or 0), int(info.get("resolution") or 0))
        return estimate.describe(est, float(kimg_v or 0)) + ("\n\n" + quality if quality else "")

    estimate_btn.click(do_estimate, [dataset, preset, kimg, batch], estimate_md, api_name="estimate",
                       concurrency_id="estimate", concurrency_limit=1)


def _following(c: SimpleNamespace) -> None:
    """The page follows the watched run: on a new choice, on the timer, on Refresh; the grid slider and the start
    source."""
    chosen_view, snapshot_choices, run_choices, watch, watch_outputs = (c.chosen_view, c.snapshot_choices,
                                                                        c.run_choices, c.watch, c.watch_outputs)
    fill_form, fill_outputs = c.fill, c.fill_outputs
    run_pick, fakes_slider, seen, log_box, fakes = c.run_pick, c.fakes_slider, c.seen, c.log_box, c.fakes
    start_from, snapshot, upload, freezed, refresh_btn = c.start_from, c.snapshot, c.upload, c.freezed, c.refresh_btn
    timer = c.timer

    @friendly
    def on_slider(name, value, memo):
        """The grid the visitor dragged to; dragging to the newest follows new grids again."""
        v = chosen_view(name)
        grids = fakes_files(v.run_dir if v else None)
        memo = dict(memo or {})
        if not grids:
            return None, memo
        i = max(0, min(int(value or 1) - 1, len(grids) - 1))
        memo["pinned"] = None if i == len(grids) - 1 else i
        memo["shown"], memo["run"], memo["grids"] = str(grids[i]), v.name, len(grids)
        return str(grids[i]), memo

    def on_start_from(choice):
        return (gr.update(visible=choice == START_SNAPSHOT, choices=snapshot_choices()),
                gr.update(visible=choice == START_UPLOAD), gr.update(visible=choice != START_SCRATCH))

    run_pick.change(lambda: {}, None, seen, api_name=False).then(
        watch, [run_pick, fakes_slider, seen], watch_outputs, api_name=False).then(
        fill_form, run_pick, fill_outputs, api_name=False)
    log_box.change(None, None, None, js=SCROLL_LOG_JS, api_name=False)
    fakes_slider.release(on_slider, [run_pick, fakes_slider, seen], [fakes, seen], api_name=False)
    start_from.change(on_start_from, start_from, [snapshot, upload, freezed], api_name=False)
    refresh_btn.click(lambda: gr.update(choices=run_choices()), None, run_pick, api_name=False).then(
        watch, [run_pick, fakes_slider, seen], watch_outputs, api_name=False)
    timer.tick(watch, [run_pick, fakes_slider, seen], watch_outputs, api_name="train_watch",
               show_progress="hidden", concurrency_limit=None)
    timer.tick(lambda name: health.as_markdown(health.check_run(v.run_dir)) if (v := chosen_view(name)) and v.run_dir
               else "", run_pick, c.health_md, api_name="train_health", show_progress="hidden")


def _refreshers(studio: Studio, c: SimpleNamespace) -> dict:
    """What app.py calls when the tab is opened or the page loads."""
    run_choices, dataset, run_pick, empty_md = c.run_choices, c.dataset, c.run_pick, c.empty_md

    def refresh_choices(current):
        # The chosen dataset stays (it may be the watched run's); only a missing one falls back to the first.
        names = dataset_choices(studio)
        value = current if current in names else (names[0] if names else None)
        return (gr.update(choices=names, value=value), gr.update(choices=run_choices()),
                gr.update(visible=not names))

    return {"refresh": refresh_choices, "refresh_inputs": [dataset], "outputs": [dataset, run_pick, empty_md],
            "watch": c.watch, "watch_inputs": c.watch_inputs, "watch_outputs": c.watch_outputs,
            "fill": c.fill, "fill_inputs": [run_pick], "fill_outputs": c.fill_outputs}


def grid_index(n: int, memo: dict, run: str) -> int:
    """Which of a run's n grids to show: the newest, unless the visitor dragged the slider to an earlier one of
    this run (on_slider pins it). The slider's own value is not used: timer and button refreshes overlap, and one
    that started before another's answer reached the page would read a stale position and stop following."""
    pinned = memo.get("pinned") if memo.get("run") == run else None
    return n - 1 if pinned is None else min(int(pinned), n - 1)


def _grid_label(grids: list[Path], idx: int, stats: list[dict] | None = None) -> str:
    if not grids:
        return "Grid (none yet)"
    name = grids[idx].name
    kimg = run_files.fakes_kimg(grids[idx], stats)
    what = "before training" if name == run_files.FAKES_INIT else f"at {kimg:.3f} kimg" if kimg is not None else name
    return f"Grid {idx + 1} of {len(grids)}: {what}"
