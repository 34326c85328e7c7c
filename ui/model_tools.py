"""The Generate tab's "Export and blend" panel: the export and blend commands for the network in the picker.

build(studio, network) adds the panel below whatever is being built; `network` is the tab's picker (a Dropdown
of labels). Networks are found by label only (choices(studio) -> {label: path}), so a visitor never names a
server path. Exports go to a new folder under outputs/ for download; blends and averages go to
uploads/networks/, where the picker lists them, and the picker is switched to the new network.
"""

from __future__ import annotations

from pathlib import Path

import gradio as gr

from engine.errors import UserError
from engine.runs import SNAPSHOT_PREFIX, run_number
from ui.common import Studio, friendly, safe_name

NETWORK_FOLDER = "networks"      # the Generate tab lists .pt files of uploads/<this> in its picker
EXPORT_FORMATS = ("safetensors", "torchscript", "onnx", "nvidia-pkl")
_SUFFIX = {"safetensors": ".safetensors", "torchscript": ".torchscript.pt", "onnx": ".onnx", "nvidia-pkl": ".pkl"}
SPLITS = [4, 8, 16, 32, 64, 128, 256, 512]


def blend_points(resolution: int) -> list[int]:
    """The splits a network of `resolution` px can be blended at: 4 px up to half its resolution (the highest
    resolution taken from the network above; at least one block comes from the other)."""
    return [s for s in SPLITS if s <= int(resolution) // 2]


def _blend_points_of(studio: Studio, label) -> list[int]:
    """blend_points of the network behind a picker label ([] when there is none or it cannot be read)."""
    from ui.networks import load

    try:
        return blend_points(int(load(studio, label)["G_ema"].img_resolution)) if label else []
    except (UserError, OSError):
        return []


def default_split(points: list[int]):
    """The middle blend point (pose and shape from one network, texture and colour from the other)."""
    return points[(len(points) - 1) // 2] if points else None


def _default_choices(studio: Studio):
    from ui.networks import network_choices

    return network_choices(studio)


def _path(studio: Studio, choices, label, what="network") -> Path:
    if not label:
        raise UserError(f"no {what} chosen: pick one in the list")
    path = choices(studio).get(label)
    if path is None:
        raise UserError(f"{what} not found: {label}; press Refresh list to update the choices")
    return studio.inside(path, what)


def _stem(label: str, path=None) -> str:
    """A short file-name part for a picked network, from its file where known: a run's snapshot
    runs/00003-cats/network-snapshot-000840.pt -> '00003-kimg000840', any other file -> its name without suffix;
    else from the label ('00003-cats / network-snapshot-000840.pt' -> '00003-kimg000840')."""
    if path is not None:
        path = Path(path)
        run = run_number(path.parent.name)
        if run and path.name.startswith(SNAPSHOT_PREFIX):
            return safe_name(f"{run}-{path.stem.replace(SNAPSHOT_PREFIX, 'kimg')}", "network")
        return safe_name(path.stem, "network")
    parts = str(label).split(" / ")
    name = Path(parts[-1]).stem.replace(SNAPSHOT_PREFIX, "kimg")
    run = run_number(parts[0]) if len(parts) > 1 else None
    return safe_name(f"{run}-{name}" if run else name, "network")


def _new_network_path(studio: Studio, name: str) -> Path:
    folder = studio.uploads_dir / NETWORK_FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    path, i = folder / f"{name}.pt", 1
    while path.exists():
        path = folder / f"{name}-{i}.pt"
        i += 1
    return path


def export_network(studio: Studio, label: str, fmt: str, choices=_default_choices, untrained_d: bool = False):
    """Export the picked network -> (list of written files, one-line report with the check's difference).

    untrained_d: for nvidia-pkl, a network without D (the demo, exports) gets a newly initialised one; the other
    formats hold no D and ignore it.
    """
    from engine.export import export

    if fmt not in EXPORT_FORMATS:
        raise UserError(f"choose an export format: {', '.join(EXPORT_FORMATS)}")
    src = _path(studio, choices, label)
    out = studio.new_output_dir(f"export-{fmt}") / f"{_stem(label, src)}{_SUFFIX[fmt]}"
    result = export(str(src), fmt, out, log=lambda *_: None, untrained_d=bool(untrained_d) and fmt == "nvidia-pkl")
    names = ", ".join(p.name for p in result["paths"])
    if fmt == "nvidia-pkl":
        notes = "".join(f" Note: {n}." for n in result.get("notes", []))
        report = (f"Exported as NVIDIA's TF-era pickle (G, D and G_ema; NVIDIA's legacy.load_network_pkl opens it): "
                  f"{names}. Checked against the network: max abs difference {result['max_abs_diff']:.3g} in images, "
                  f"{result['d_max_abs_diff']:.3g} in D scores.{notes}")
    else:
        report = (f"Exported as {fmt}: {names}. Checked against the network: "
                  f"max abs difference {result['max_abs_diff']:.3g}.")
    return [str(p) for p in result["paths"]], report


def blend_networks(studio: Studio, label_a: str, label_b: str, split, mapping: str = "a", choices=_default_choices):
    """Blend A (low resolutions) with B (high) -> (new picker label, path, report)."""
    from engine.blend import blend_files, span_text

    a = _path(studio, choices, label_a, "network A")
    b = _path(studio, choices, label_b, "network B")
    if split in (None, ""):
        raise UserError("choose the split: the highest resolution taken from the network above")
    from ui.networks import load

    resolution = int(load(studio, label_a)["G_ema"].img_resolution)
    points = blend_points(resolution)
    if int(split) not in points:
        raise UserError(f"a split of {int(split)} px does not fit {resolution} px networks: choose one of "
                        f"{', '.join(f'{p} px' for p in points)}")
    out = _new_network_path(studio, f"blend-{_stem(label_a, a)}-{_stem(label_b, b)}-split{int(split)}")
    done = blend_files(str(a), str(b), int(split), out, mapping=mapping, log=lambda *_: None)
    report = (f"Blended: {span_text(done['from_a'])} from {label_a}, {span_text(done['from_b'])} from {label_b}, "
              f"the mapping network from {label_a if mapping == 'a' else label_b}. {_listed(out)}")
    return _label_of(studio, out, choices), str(out), report


def average_networks(studio: Studio, labels, choices=_default_choices):
    """Average the picked networks -> (new picker label, path, report)."""
    from engine.blend import average_files

    labels = [x for x in (labels or []) if x]
    if len(labels) < 2:
        raise UserError("pick at least two networks to average")
    paths = [str(_path(studio, choices, x)) for x in labels]
    out = _new_network_path(studio, f"average-{len(paths)}-{_stem(labels[0], paths[0])}")
    average_files(paths, out, log=lambda *_: None)
    return _label_of(studio, out, choices), str(out), f"Averaged {len(paths)} networks. {_listed(out)}"


def _label_of(studio: Studio, path: Path, choices) -> str | None:
    for label, p in choices(studio).items():
        if Path(p).resolve() == Path(path).resolve():
            return label
    return None


def _listed(out: Path) -> str:
    return f"The result is in the network list as uploaded / {out.name}."


def build(studio: Studio, network: gr.Dropdown, choices=_default_choices):
    """The panel (a closed Accordion) for the picker `network`. Returns its components by name."""
    labels = list(choices(studio))
    with gr.Accordion("Export and blend", open=False, elem_id="model-tools"):
        gr.Markdown("**Export** the network above for other programs (safetensors + JSON, TorchScript, ONNX: the "
                    "generator; nvidia-pkl: G, D and G_ema as a pickle NVIDIA's StyleGAN2-ADA and StyleGAN3 scripts "
                    "open); each file is run beside the network before it is offered.")
        with gr.Row():
            fmt = gr.Radio(list(EXPORT_FORMATS), value="safetensors", label="Format", elem_id="export-format")
            untrained = gr.Checkbox(False, label="nvidia-pkl of a network without D (the demo, exports): write an "
                                    "untrained D", elem_id="export-untrained-d")
            export_btn = gr.Button("Export", elem_id="export-btn")
        export_files = gr.File(label="Download", file_count="multiple", interactive=False, elem_id="export-files")
        export_md = gr.Markdown(elem_id="export-report")

        gr.Markdown("**Blend** the network above (low resolutions: pose, shape) with another of the same "
                    "architecture (high resolutions: texture, colour), e.g. a base network and a fine-tuned copy.")
        with gr.Row():
            other = gr.Dropdown(labels, value=None, label="Network B (high resolutions)", elem_id="blend-b", scale=4)
            points = _blend_points_of(studio, network.value)
            split = gr.Dropdown(points, value=default_split(points),
                                label="Split: highest resolution from the network above", elem_id="blend-split",
                                scale=2)
            mapping = gr.Radio(["a", "b"], value="a", label="Mapping network from", elem_id="blend-mapping",
                               scale=1)
        blend_btn = gr.Button("Blend", elem_id="blend-btn")

        gr.Markdown("**Average** several snapshots of one run (often steadier than any one of them).")
        with gr.Row():
            several = gr.Dropdown(labels, value=[], multiselect=True, label="Networks to average",
                                  elem_id="average-networks", scale=5)
            average_btn = gr.Button("Average", elem_id="average-btn", scale=1)
        derived_md = gr.Markdown(elem_id="blend-report")

    @friendly
    def do_export(label, fmt_v, untrained_v=False):
        files, report = export_network(studio, label, fmt_v, choices=choices, untrained_d=untrained_v)
        return files, report

    export_btn.click(do_export, [network, fmt, untrained], [export_files, export_md], api_name="export_network",
                     concurrency_id="gpu", concurrency_limit=1)

    def on_network(label):
        """The split offers only the blend points of the network above, its middle one chosen."""
        points = _blend_points_of(studio, label)
        return gr.update(choices=points, value=default_split(points))

    network.change(on_network, network, split, api_name=False)

    def _picker_update(new_label):
        ch = list(choices(studio))
        return (gr.update(choices=ch, value=new_label), gr.update(choices=ch), gr.update(choices=ch))

    @friendly
    def do_blend(label_a, label_b, split_v, mapping_v):
        new_label, _, report = blend_networks(studio, label_a, label_b, split_v, mapping_v, choices=choices)
        return (*_picker_update(new_label), report)

    blend_btn.click(do_blend, [network, other, split, mapping], [network, other, several, derived_md],
                    api_name="blend_networks", concurrency_id="gpu", concurrency_limit=1)

    @friendly
    def do_average(picked):
        new_label, _, report = average_networks(studio, picked, choices=choices)
        return (*_picker_update(new_label), report)

    average_btn.click(do_average, [several], [network, other, several, derived_md], api_name="average_networks",
                      concurrency_id="gpu", concurrency_limit=1)

    return {"format": fmt, "untrained_d": untrained, "export_button": export_btn, "export_files": export_files,
            "export_report": export_md, "other": other, "split": split, "mapping": mapping, "blend_button": blend_btn,
            "several": several, "average_button": average_btn, "derived_report": derived_md}
