"""Data tab: turn the emoji set, an upload or a server folder into a prepared dataset, and manage datasets."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from types import SimpleNamespace

import gradio as gr

from engine.errors import UserError
from ui.common import Studio, friendly, safe_name
from ui.datasets import dataset_choices, dataset_summary, forget_summary, list_datasets

SRC_EMOJI = "Built-in emoji set"
SRC_UPLOAD = "Upload a zip or images"
SRC_FOLDER = "Folder on this computer"
RESOLUTIONS = [8, 16, 32, 64, 128, 256, 512, 1024]


def name_for_resolution(name, resolution) -> str:
    """The dataset name with the resolution as its ending ('emoji32' at 64 px -> 'emoji64', 'cats' -> 'cats64'), so
    the same pictures prepared at two sizes get two names instead of one refusing the other."""
    text = str(name or "").strip()
    ending = "|".join(str(r) for r in sorted(RESOLUTIONS, key=lambda r: -len(str(r))))
    base = re.sub(rf"(?:[-_ ]?(?:{ending}))$", "", text) or "dataset"
    return f"{base}{int(resolution)}"
TRANSFORMS = ["center-crop", "center-crop-wide", "pad", "stretch"]
LABELS = {"Automatic (the source's own, if any)": "auto", "No labels": "none",
          "Sub-folder names are classes": "folders", "From the source's dataset.json": "json"}

def _classes(info: dict) -> int:
    return int(info.get("num_classes") or info.get("label_dim") or 0)


def describe(info: dict) -> str:
    ch = {1: "grayscale", 3: "RGB", 4: "RGBA"}.get(int(info.get("channels") or 0), f"{info.get('channels')} channels")
    classes = _classes(info)
    names = info.get("class_names") or []
    cls = f"{classes} classes" + (f" ({', '.join(map(str, names[:8]))}{', ...' if len(names) > 8 else ''})"
                                  if names else "") if classes else "no labels"
    return f"**{info.get('count', '?')} images**, {info.get('resolution', '?')} px, {ch}, {cls}"


def datasets_table(studio: Studio) -> list[list]:
    rows = []
    for p in list_datasets(studio):
        try:
            info = dataset_summary(p)
            ch = info.get("channels")
            rows.append([p.name, info.get("count"), info.get("resolution"), ch, _classes(info),
                         round(_size_mb(p), 1)])
        except Exception as e:  # one unreadable dataset must not hide the others
            rows.append([p.name, None, None, None, None, f"unreadable: {str(e)[:60]}"])
    return rows


def _size_mb(p: Path) -> float:
    if p.is_file():
        return p.stat().st_size / 2**20
    return sum(f.stat().st_size for f in p.rglob("*") if f.is_file()) / 2**20


def empty_state(studio: Studio) -> str:
    if list_datasets(studio):
        return ""
    return ("**No datasets yet.** A dataset is your pictures, resized to one square size and packed into one zip. "
            "To try things out, keep *Built-in emoji set*, resolution 32 and max images 500, and press "
            "**Prepare dataset** (under a minute). Then go to the *Train* tab.")


def empty_update(studio: Studio):
    text = empty_state(studio)
    return gr.update(value=text, visible=bool(text))


def _skipped_rows(result, dest: Path) -> list[list]:
    """(file, reason) rows for what prepare left out, from its result or the report.json it wrote."""
    items = None
    for attr in ("skipped", "skipped_files"):
        items = getattr(result, attr, None) if not isinstance(result, dict) else result.get(attr)
        if items:
            break
    if not items:
        for cand in (dest.with_name(dest.stem + ".report.json"), dest.with_suffix(".report.json"),
                     dest.parent / f"{dest.name}.report.json", dest / "report.json",
                     dest.parent / "report.json"):
            if cand.is_file():
                try:
                    rep = json.loads(cand.read_text())
                except ValueError:
                    continue
                items = rep.get("skipped") if isinstance(rep, dict) else rep
                break
    rows = []
    for it in items or []:
        if isinstance(it, dict):
            reason = str(it.get("reason") or "")
            if it.get("detail"):
                reason += f" ({it['detail']})"
            rows.append([str(it.get("path") or it.get("file") or ""), reason])
        elif isinstance(it, (list, tuple)) and len(it) >= 2:
            rows.append([str(it[0]), str(it[1])])
        else:
            rows.append([str(it), ""])
    return rows


def build(studio: Studio):
    """The Data tab: the form that prepares a dataset, then the list of prepared ones (show, delete); the layout of
    both first, then their events. Returns the components other tabs refresh from."""
    with gr.Column():
        empty_md = gr.Markdown(empty_state(studio), elem_id="data-empty", visible=bool(empty_state(studio)))
        c = SimpleNamespace(**vars(_prepare_layout(studio)), **vars(_datasets_layout(studio)), empty_md=empty_md)
    _prepare_events(studio, c)
    _datasets_events(studio, c)

    def refresh():
        return datasets_table(studio), gr.update(choices=dataset_choices(studio)), empty_update(studio)

    return {"table": c.table, "pick": c.pick, "refresh": refresh, "refresh_outputs": [c.table, c.pick, empty_md]}


def _prepare_layout(studio: Studio) -> SimpleNamespace:
    """Where the images come from, how they are prepared, the button, the preview and the skipped files."""
    sources = [SRC_EMOJI, SRC_UPLOAD] + ([] if studio.shared else [SRC_FOLDER])
    with gr.Row():
        with gr.Column(scale=3):
            source = gr.Radio(sources, value=SRC_EMOJI, label="Images from")
            upload = gr.File(label=f"Zip or images (at most {studio.max_upload_mb} MB each)",
                             file_count="multiple", file_types=[".zip", "image"], visible=False,
                             elem_id="data-upload")
            folder = gr.Textbox(label="Folder path on this computer", visible=False,
                                placeholder="/home/me/pictures", elem_id="data-folder")
            with gr.Row():
                name = gr.Textbox(value=name_for_resolution("emoji", 32), label="Dataset name",
                                  elem_id="data-name", info="ends in the resolution, so sizes do not collide")
                resolution = gr.Dropdown(RESOLUTIONS, value=32, label="Resolution (px)",
                                         elem_id="data-resolution")
                max_images = gr.Number(value=500, precision=0, minimum=0, label="Max images (0 = all)",
                                       elem_id="data-max-images")
            with gr.Row():
                transform = gr.Dropdown(TRANSFORMS, value="center-crop", label="Fit to square")
                # Wide enough to show its longest choice whole.
                labels = gr.Dropdown(list(LABELS), value=list(LABELS)[0], label="Labels", scale=2,
                                     min_width=290, elem_id="data-labels")
            with gr.Row():
                channels = gr.Radio(["RGB", "Grayscale"], value="RGB", label="Channels")
                dedupe = gr.Checkbox(value=False, label="Drop exact duplicates")
            prepare_btn = gr.Button("Prepare dataset", variant="primary", elem_id="prepare-btn")
        with gr.Column(scale=2):
            preview = gr.Image(label="Preview", type="pil", interactive=False, elem_id="data-preview")
            summary_md = gr.Markdown(elem_id="data-summary")
    skipped = gr.Dataframe(headers=["Skipped file", "Reason"], label="Skipped files", visible=False,
                           interactive=False, wrap=True)
    return SimpleNamespace(source=source, upload=upload, folder=folder, name=name, resolution=resolution,
                           max_images=max_images, transform=transform, labels=labels, channels=channels,
                           dedupe=dedupe, prepare_btn=prepare_btn, preview=preview, summary_md=summary_md,
                           skipped=skipped)


def _datasets_layout(studio: Studio) -> SimpleNamespace:
    """The table of prepared datasets, the picker with Show and Delete, and the delete confirmation."""
    gr.Markdown("### Prepared datasets")
    table = gr.Dataframe(headers=["Dataset", "Images", "Resolution", "Channels", "Classes", "Size (MB)"],
                         value=datasets_table(studio), interactive=False, elem_id="datasets-table")
    with gr.Row():
        pick = gr.Dropdown(dataset_choices(studio), label="Dataset", value=None, elem_id="data-pick",
                           allow_custom_value=True)
        show_btn = gr.Button("Show")
        delete_btn = gr.Button("Delete...", variant="stop", elem_id="data-delete-btn")
    with gr.Row(visible=False) as confirm_row:
        confirm_md = gr.Markdown()
        confirm_btn = gr.Button("Yes, delete it", variant="stop", elem_id="data-delete-confirm")
        cancel_btn = gr.Button("Cancel")
    return SimpleNamespace(table=table, pick=pick, show_btn=show_btn, delete_btn=delete_btn, confirm_row=confirm_row,
                           confirm_md=confirm_md, confirm_btn=confirm_btn, cancel_btn=cancel_btn)


def _prepare_events(studio: Studio, c: SimpleNamespace) -> None:
    """The source choice shows its inputs; Prepare makes the dataset and shows it."""
    source, upload, folder, name, resolution = c.source, c.upload, c.folder, c.name, c.resolution
    max_images, transform, channels, labels, dedupe = c.max_images, c.transform, c.channels, c.labels, c.dedupe
    prepare_btn, preview, summary_md, skipped, table = c.prepare_btn, c.preview, c.summary_md, c.skipped, c.table
    pick, empty_md = c.pick, c.empty_md

    def on_source(src):
        return gr.update(visible=src == SRC_UPLOAD), gr.update(visible=src == SRC_FOLDER)

    source.change(on_source, source, [upload, folder], api_name=False)
    resolution.change(lambda res, current: name_for_resolution(current, res), [resolution, name], name,
                      api_name=False)

    @friendly
    def do_prepare(src, files, folder_path, ds_name, res, max_n, tfm, ch, lab, dd, progress=gr.Progress()):
        from engine.data.dataset import preview_grid
        from engine.data.prepare import PrepareOptions, prepare

        ds_name = safe_name(ds_name, "dataset")
        dest = studio.datasets_dir / f"{ds_name}.zip"
        if dest.exists() or (studio.datasets_dir / ds_name).exists():
            raise UserError(f"a dataset named {ds_name} already exists; choose another name or delete it first")
        if src == SRC_EMOJI:
            source_arg = "emoji"
        elif src == SRC_UPLOAD:
            _remove_upload_folders(studio, ds_name)  # a stale folder of an earlier attempt must not mix in
            try:
                source_arg = _source_from_upload(studio, files, ds_name)
            except BaseException:
                _remove_upload_folders(studio, ds_name)  # e.g. the second of two zips was refused
                raise
        elif src == SRC_FOLDER:
            if studio.shared:
                raise UserError("reading folders on the server is switched off for shared dashboards; upload a zip")
            if not folder_path or not Path(folder_path).expanduser().exists():
                raise UserError(f"folder not found: {folder_path or '(empty)'}; type the full path of a folder")
            source_arg = str(Path(folder_path).expanduser())
        else:
            raise UserError(f"unknown source {src!r}")
        progress(0, desc="Preparing")

        def report(done, total=None):
            if total:
                progress((int(done), int(total)), desc="Preparing images", unit="images")

        try:
            options = PrepareOptions(resolution=int(res), transform=tfm, channels=1 if ch == "Grayscale" else 3,
                                     labels=LABELS.get(lab, "none"), max_images=int(max_n) if max_n else None,
                                     shuffle_seed=0 if max_n else None, dedupe=bool(dd))
            result = prepare(source_arg, str(dest), options, progress=report)
        finally:
            # The prepared dataset holds what it needs; the uploaded originals (which a visitor chose and the
            # file routes could serve) are not kept, whether prepare succeeded or not.
            if src == SRC_UPLOAD:
                _remove_upload_folders(studio, ds_name)
        info = dataset_summary(dest)
        grid = _preview(preview_grid, dest, info)
        rows = _skipped_rows(result, dest)
        text = f"Prepared **{dest.name}**: " + describe(info)
        if rows:
            text += f". Skipped {len(rows)} file(s), listed below."
        gr.Info(f"Dataset {dest.name} is ready: {info.get('count')} images")
        return (grid, text, gr.update(value=rows, visible=bool(rows)), datasets_table(studio),
                gr.update(choices=dataset_choices(studio), value=dest.name), empty_update(studio))

    prepare_btn.click(
        do_prepare, [source, upload, folder, name, resolution, max_images, transform, channels, labels, dedupe],
        [preview, summary_md, skipped, table, pick, empty_md], api_name="prepare", concurrency_id="prepare",
        concurrency_limit=1)


def _datasets_events(studio: Studio, c: SimpleNamespace) -> None:
    """Show a prepared dataset; Delete it after a confirmation."""
    pick, show_btn, delete_btn, confirm_btn, cancel_btn = c.pick, c.show_btn, c.delete_btn, c.confirm_btn, c.cancel_btn
    preview, summary_md, confirm_row, confirm_md, table = c.preview, c.summary_md, c.confirm_row, c.confirm_md, c.table
    empty_md = c.empty_md

    @friendly
    def do_show(ds):
        from engine.data.dataset import preview_grid

        if not ds:
            raise UserError("choose a dataset first")
        path = _dataset_path(studio, ds)
        info = dataset_summary(path)
        return _preview(preview_grid, path, info), f"**{path.name}**: " + describe(info)

    show_btn.click(do_show, pick, [preview, summary_md], api_name="show_dataset")

    @friendly
    def ask_delete(ds):
        if not ds:
            raise UserError("choose a dataset to delete first")
        _dataset_path(studio, ds)
        return gr.update(visible=True), f"Delete **{ds}** for good? Runs trained on it keep their snapshots."

    delete_btn.click(ask_delete, pick, [confirm_row, confirm_md], api_name=False)

    @friendly
    def do_delete(ds):
        if not ds:
            raise UserError("choose a dataset to delete first")
        path = _dataset_path(studio, ds)
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()
        for extra in path.parent.glob(path.stem + ".*"):
            if extra.name != path.name and extra.is_file() and (extra.suffix == ".json" or ".report" in extra.name):
                extra.unlink()
        forget_summary(path)
        gr.Info(f"Deleted {ds}")
        return (gr.update(visible=False), datasets_table(studio),
                gr.update(choices=dataset_choices(studio), value=None), empty_update(studio))

    confirm_btn.click(do_delete, pick, [confirm_row, table, pick, empty_md], api_name="delete_dataset")
    cancel_btn.click(lambda: gr.update(visible=False), None, confirm_row, api_name=False)


def _preview(preview_grid, path: Path, info: dict):
    # Small images are drawn bigger so a 16 px dataset is still visible in the page.
    res = int(info.get("resolution") or 64)
    return preview_grid(str(path), cell=max(64, min(res, 128)))


def _dataset_path(studio: Studio, name: str) -> Path:
    """A dataset chosen by name, only from the workdir's datasets folder."""
    safe = Path(str(name)).name
    path = studio.inside(studio.datasets_dir / safe, "dataset")
    if not path.exists() or path.parent != studio.datasets_dir:
        raise UserError(f"dataset not found: {safe}")
    return path


def _upload_folders(studio: Studio, ds_name: str):
    return [studio.uploads_dir / f"{ds_name}-source", studio.uploads_dir / f"{ds_name}-images"]


def _remove_upload_folders(studio: Studio, ds_name: str) -> None:
    for folder in _upload_folders(studio, ds_name):
        shutil.rmtree(folder, ignore_errors=True)


def remove_stale_uploads(studio: Studio) -> list:
    """Remove dataset uploads left in uploads/ by a prepare that never finished (the app stopped mid-way).

    Only folders named <dataset>-source / <dataset>-images are touched; uploaded networks stay. Returns them.
    """
    removed = []
    for folder in sorted(studio.uploads_dir.glob("*")):
        if folder.is_dir() and not folder.is_symlink() and folder.name.endswith(("-source", "-images")):
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed


def _source_from_upload(studio: Studio, files, ds_name: str) -> str:
    """One uploaded zip is used as it is; loose images are gathered into one folder under uploads/."""
    if not files:
        raise UserError("no files uploaded yet: drop a zip or some images on the upload box")
    paths = [Path(f if isinstance(f, str) else getattr(f, "name", f)) for f in files]
    total_mb = sum(p.stat().st_size for p in paths if p.is_file()) / 2**20
    if total_mb > studio.max_upload_mb:
        raise UserError(f"the upload is {total_mb:.0f} MB in all; the limit is {studio.max_upload_mb} MB")
    zips = [p for p in paths if p.suffix.lower() == ".zip"]
    if len(zips) == 1 and len(paths) == 1:
        return str(studio.keep_upload(zips[0], f"{ds_name}-source", "zip"))
    if zips:
        raise UserError("upload either one zip or loose images, not several zips")
    dest = studio.uploads_dir / f"{ds_name}-images"
    for p in paths:
        studio.keep_upload(p, dest.name, "image")
    return str(dest)
