"""The "Is it copying?" panel of the Train tab: a network's fakes beside their nearest training images, and a verdict.

build(studio) adds an Accordion with a network picker, a dataset picker, how many images, a button, the grid and
the one-line verdict. The work is engine.metrics.copies.check_copies; files go to a new folder under outputs/.
Networks and datasets are picked by label and name only, so a visitor never names a server path.
"""

from __future__ import annotations

import html
from pathlib import Path

import gradio as gr

from engine.errors import UserError
from ui.common import Studio, friendly
from ui.datasets import dataset_choices

DEFAULT_IMAGES = 32
MAX_IMAGES = 256       # in the dashboard; the command line takes more
DEFAULT_REALS = 2000   # training images compared: their Inception features are computed once, then cached
SPACE_NAMES = {"inception": "Inception features (cosine)", "pixels": "Pixels (RMS, 0-1)"}


def _dataset_path(studio: Studio, name) -> Path:
    if not name:
        raise UserError("no dataset chosen: pick the dataset the network was trained on (prepare one in the Data tab)")
    if name not in dataset_choices(studio):
        raise UserError(f"dataset {name} not found: press Refresh lists, or prepare it in the Data tab")
    return studio.inside(studio.datasets_dir / name, "dataset")


def _count(value, what, low, high) -> int:
    try:
        n = float(value)
    except (TypeError, ValueError):
        raise UserError(f"{what} {value!r} is not a number: use {low}..{high}") from None
    if n != int(n) or not low <= n <= high:
        raise UserError(f"{what} {value!r} is out of range: use a whole number {low}..{high}")
    return int(n)


def figures_markdown(report) -> str:
    """The verdict in bold, then the figures of each space as a small table."""
    rows = ["| | fakes' nearest: median | 5th pct | training set's own: median | 5th pct | fakes below its "
            "5th pct | near-copies |", "|---|---|---|---|---|---|---|"]
    for space, m in report.summary.items():
        rows.append(f"| {SPACE_NAMES.get(space, space)} | {m['fakes']['median']:.4f} | {m['fakes']['p5']:.4f} | "
                    f"{m['reals']['median']:.4f} | {m['reals']['p5']:.4f} | {m['below_p5']:.0%} | "
                    f"{m['near_copies']} |")
    note = (f"{len(report.seeds)} fakes (seeds 0-{len(report.seeds) - 1}) against {report.num_reals} of "
            f"{report.dataset_size} training images, mirrored ones included; the grid shows the fakes nearest the "
            f"training set first. About 5% of fakes fall below the training set's 5th percentile when they are "
            f"new images.")
    return f"**{html.escape(report.verdict)}**\n\n" + "\n".join(rows) + f"\n\n{note}"


def copy_check(studio: Studio, network_label, dataset_name, num, reals=DEFAULT_REALS, progress=None):
    """Run the check for the picked network and dataset -> (grid png path, json path, markdown)."""
    from engine.metrics.copies import check_copies, write_report
    from ui.networks import device, load

    num = _count(num, "number of images", 2, MAX_IMAGES)
    reals = _count(reals, "training images", 0, 1_000_000)
    if reals in (1, 2):
        raise UserError(f"training images {reals}: use 0 (all) or at least 3")
    data = _dataset_path(studio, dataset_name)
    net = load(studio, network_label)

    def report_progress(done, total):
        if progress is not None:
            progress(done / max(total, 1), desc=f"{done}/{total} images through the detector")

    report = check_copies(net["G_ema"], data, num=num, device=device(), max_reals=reals or None,
                          progress=report_progress, network_name=str(network_label))
    report.dataset = data.name  # the JSON names no server folder
    out = studio.new_output_dir("copies")
    grid, path = write_report(report, out)
    return str(grid), str(path), figures_markdown(report)


def matching_dataset(studio: Studio, network_label, current=None):
    """The workdir's dataset with the name of the one the network records, else `current`."""
    from ui.networks import load

    names = dataset_choices(studio)
    try:
        recorded = Path(str((load(studio, network_label).get("dataset") or {}).get("path") or "")).name
    except (UserError, OSError):
        recorded = ""
    if recorded in names:
        return recorded
    return current if current in names else (names[0] if names else None)


def build(studio: Studio):
    """The accordion and its events -> {'network', 'dataset', 'refresh': fn -> (network update, dataset update)}."""
    from ui.networks import network_choices

    with gr.Accordion("Is it copying?", open=False, elem_id="copy-check"):
        gr.Markdown("With few training images a network can memorise them. This generates images and finds the "
                    "nearest training images of each, in Inception features and in pixels, against how near the "
                    "training images are to each other.")
        labels = list(network_choices(studio))
        datasets = dataset_choices(studio)
        with gr.Row():
            network = gr.Dropdown(labels, value=labels[0] if labels else None, label="Network", scale=3,
                                  allow_custom_value=True, elem_id="copy-network")
            dataset = gr.Dropdown(datasets, value=datasets[0] if datasets else None, label="Training dataset",
                                  scale=2, allow_custom_value=True, elem_id="copy-dataset")
        with gr.Row():
            num = gr.Number(value=DEFAULT_IMAGES, minimum=2, maximum=MAX_IMAGES, precision=0,
                            label=f"Generated images (2-{MAX_IMAGES})", elem_id="copy-images")
            reals = gr.Number(value=DEFAULT_REALS, minimum=0, precision=0, label="Training images compared (0 = all)",
                              info="the first ones; their Inception features are computed once, then cached",
                              elem_id="copy-reals")
        with gr.Row():
            button = gr.Button("Check for copies", variant="primary", elem_id="copy-run")
            refresh = gr.Button("Refresh lists", size="sm", elem_id="copy-refresh")
        verdict = gr.Markdown(elem_id="copy-verdict")
        grid = gr.Image(label="Fakes beside their nearest training images", type="filepath", interactive=False,
                        elem_id="copy-grid")
        report = gr.File(label="Report (JSON)", interactive=False, elem_id="copy-json")

    @friendly
    def do_check(label, name, n, m, progress=gr.Progress()):
        progress(0, desc="Generating and reading images")
        grid_path, json_path, text = copy_check(studio, label, name, n, m, progress=progress)
        return grid_path, json_path, text

    def do_refresh(label, name):
        choices = list(network_choices(studio))
        label = label if label in choices else (choices[0] if choices else None)
        names = dataset_choices(studio)
        return (gr.update(choices=choices, value=label),
                gr.update(choices=names, value=name if name in names else (names[0] if names else None)))

    def on_network(label, name):
        try:
            return gr.update(value=matching_dataset(studio, label, name))
        except Exception:  # choosing a network never fails; the check itself says what is wrong
            return gr.update()

    button.click(do_check, [network, dataset, num, reals], [grid, report, verdict], api_name="copy_check",
                 concurrency_id="gpu", concurrency_limit=1)
    refresh.click(do_refresh, [network, dataset], [network, dataset], api_name=False)
    network.input(on_network, [network, dataset], dataset, api_name=False)
    return {"network": network, "dataset": dataset, "refresh": do_refresh}
