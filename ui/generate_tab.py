"""Generate tab: pick a network, make a seed grid, an interpolation GIF/MP4 or a style-mixing grid.

Saved latents (the Explore tab's library) take part in all three: as grid images beside the seeds, as the
keyframes of a walk, and as style-mixing rows and columns. Each is checked against the picked network.
"""

from __future__ import annotations

import math
import random
import zipfile
from pathlib import Path
from types import SimpleNamespace

import gradio as gr

from engine.errors import UserError
from engine.runs import NETWORK_SUFFIXES, is_network_file
from ui import model_tools, published
from ui.common import Studio, friendly, safe_name
from ui.networks import UPLOAD_FOLDER, load, network_choices, pick_network

MAX_SEEDS = 256
MAX_FRAMES = 3000
MAX_SAVED = 64
def describe(net: dict, label: str) -> str:
    G = net["G_ema"]
    ch = {1: "grayscale", 3: "RGB", 4: "RGBA"}.get(G.img_channels, f"{G.img_channels} channels")
    cond = f", conditional on {G.c_dim} classes" if G.c_dim else ""
    prog = net.get("progress") or {}
    kimg = prog.get("cur_nimg")
    trained = ""
    if isinstance(kimg, (int, float)) and kimg:
        trained = f", trained {kimg / 1000:,.0f} kimg" if kimg >= 10000 else f", trained {kimg / 1000:.2f} kimg"
    src = {"nvidia-pytorch": " (NVIDIA PyTorch pickle)", "nvidia-tf": " (NVIDIA TensorFlow pickle)"}.get(
        net.get("source"), "")
    return f"**{label}**: {G.img_resolution} px {ch}{cond}{trained}{src}."


def _seeds(text: str, what: str = "seeds", limit: int = MAX_SEEDS) -> list[int]:
    from engine.commands.common import parse_seeds

    if not str(text or "").strip():
        raise UserError(f"no {what} given: type numbers such as 0-7 or 1,5,9")
    return parse_seeds(str(text).strip(), what=what, max_count=max(1, limit))  # one limit, said once


def saved_names(studio: Studio, label) -> list[str]:
    """Names of the saved latents made for the picked network, newest first; none when it cannot be loaded (the
    picker's own event says why)."""
    from engine import latents

    if not label:
        return []
    try:
        G = load(studio, label)["G_ema"]
    except Exception:
        return []
    return [e["name"] for e in latents.list_latents(latents.library_folder(studio.workdir), G) if e["compatible"]]


def _saved(studio: Studio, G, names, what: str = "saved latents"):
    """(names, ws [N, num_ws, w_dim] or None) of the chosen saved latents, each checked against G."""
    from engine import latents

    names = [n for n in (str(x).strip() for x in (names or [])) if n]
    if not names:
        return [], None
    if len(names) > MAX_SAVED:
        raise UserError(f"{len(names)} {what} is too many at once; at most {MAX_SAVED}")
    return names, latents.load_many(latents.library_folder(studio.workdir), names, G)


def _class(G, class_idx):
    if not G.c_dim:
        return None
    if class_idx is None or class_idx == "":
        raise UserError(f"this network is conditional: choose a class from 0 to {G.c_dim - 1}")
    c = int(class_idx)
    if not 0 <= c < G.c_dim:
        raise UserError(f"class {c} is out of range: this network has classes 0 to {G.c_dim - 1}")
    return c


def _grid_shape(n: int) -> tuple[int, int]:
    """(cols, rows) for n images: as few empty cells as possible, then as square as possible, at most 8 wide
    and never more than about twice as wide as tall (8 images: 4x2, not 3x3 with a hole)."""
    n = max(1, int(n))
    first = min(8, math.isqrt(n - 1) + 1)  # ceil(sqrt(n)), capped
    best = None
    for cols in range(first, min(8, n) + 1):
        rows = -(-n // cols)
        if cols > 2 * rows + 1:
            break
        key = (cols * rows - n, cols - rows)
        if best is None or key < best[0]:
            best = (key, cols, rows)
    if best is None:
        return first, -(-n // first)
    return best[1], best[2]


def _ranges(values) -> str:
    """[0, 1, 2, 3, 6] -> '0-3, 6'."""
    vals = sorted(set(int(v) for v in values))
    parts, i = [], 0
    while i < len(vals):
        j = i
        while j + 1 < len(vals) and vals[j + 1] == vals[j] + 1:
            j += 1
        parts.append(str(vals[i]) if i == j else f"{vals[i]}-{vals[j]}")
        i = j + 1
    return ", ".join(parts)


def build(studio: Studio):
    """The Generate tab: the network picker, then images, an interpolation video and style mixing from the picked
    network. The layout of every section comes first, then each section's events."""
    with gr.Column():
        c = SimpleNamespace(**vars(_picker_layout(studio)), **vars(_images_layout()), **vars(_video_layout()),
                            **vars(_mixing_layout()))
    on_network, do_refresh = _picker_events(studio, c)
    _images_events(studio, c)
    _video_events(studio, c)
    _mixing_events(studio, c)
    on_saved, saved_lists = _saved_events(studio, c)

    def on_load():
        return do_refresh(None)

    return {"network": c.network, "info": c.info_md, "class_idx": c.class_idx, "on_load": on_load,
            "on_tab": do_refresh, "tab_inputs": [c.network, c.offered_first],
            "load_outputs": refresh_outputs(c), "on_network": on_network, "tools": c.tools,
            "on_saved": on_saved, "saved_inputs": [c.network, *saved_lists], "saved_outputs": saved_lists}


def refresh_outputs(c: SimpleNamespace) -> list:
    """What a refresh of the network list updates: the picker, the empty-state line, the label offered first and
    the export panel's own lists."""
    return [c.network, c.empty_md, c.offered_first, c.tools["other"], c.tools["several"]]


# ---------------------------------------------------------------------------------------------- the layout


def _picker_layout(studio: Studio) -> SimpleNamespace:
    """Which network: the picker, Refresh, an upload, and what the picked network is."""
    choices = network_choices(studio)
    first = next(iter(choices), None)
    empty_md = gr.Markdown(_empty_text(studio, choices), elem_id="generate-empty",
                           visible=bool(_empty_text(studio, choices)))
    offered_first = gr.State(first)  # the label the picker offered first last time it was filled
    with gr.Row():
        network = gr.Dropdown(list(choices), value=first, label="Network", elem_id="generate-network",
                              allow_custom_value=True, scale=5)
        refresh_btn = gr.Button("Refresh list", size="sm", scale=1, elem_id="generate-refresh")
    with gr.Accordion("Upload a network (.pt or NVIDIA .pkl)", open=False):
        upload = gr.File(label=f"Network file (at most {studio.max_upload_mb} MB)", file_types=list(NETWORK_SUFFIXES),
                         elem_id="generate-upload")
    tools = model_tools.build(studio, network)
    published.panel(studio, network)  # the owner's Publish on the demo page
    info_md = gr.Markdown(elem_id="generate-info")
    return SimpleNamespace(empty_md=empty_md, offered_first=offered_first, network=network, refresh_btn=refresh_btn,
                           upload=upload, tools=tools, info_md=info_md)


def _images_layout() -> SimpleNamespace:
    """Seeds, truncation, class and noise (shared by every section), Generate and the images."""
    with gr.Row():
        seeds = gr.Textbox(value="0-7", label="Seeds", info="numbers and ranges: 0-7, 42, 100-103",
                           elem_id="generate-seeds", scale=3)
        rand_btn = gr.Button("Random seeds", size="sm", scale=1, elem_id="generate-random")
        # Names typed through the API are allowed here so that a latent of another network gets its own message.
        saved = gr.Dropdown([], value=[], multiselect=True, allow_custom_value=True, label="Saved latents",
                            info="shown after the seeds; clear Seeds to show only these", elem_id="generate-saved",
                            scale=3)
        psi = gr.Slider(0, 1.5, value=0.7, step=0.05, label="Truncation psi",
                        info="lower: typical, cleaner images; 1: full variety", scale=3)
    with gr.Row():
        class_idx = gr.Number(value=None, precision=0, minimum=0, label="Class", visible=False,
                              elem_id="generate-class")
        noise = gr.Radio(["const", "random", "none"], value="const", label="Noise")
    generate_btn = gr.Button("Generate images", variant="primary", elem_id="generate-btn")
    # One image area: the images with their seeds; a click shows one large. The grid PNG is a download.
    gallery = gr.Gallery(label="Images", columns=8, height="auto", elem_id="generate-gallery",
                         object_fit="contain", allow_preview=True)
    files = gr.File(label="Download: all images in one grid PNG, and each image in a zip", file_count="multiple",
                    interactive=False, elem_id="generate-files")
    return SimpleNamespace(seeds=seeds, rand_btn=rand_btn, saved=saved, psi=psi, class_idx=class_idx, noise=noise,
                           generate_btn=generate_btn, gallery=gallery, files=files)


def _video_layout() -> SimpleNamespace:
    """The interpolation video's settings, button and outputs."""
    gr.Markdown("### Interpolation video")
    with gr.Row():
        v_seeds = gr.Textbox(value="0-3", label="Seeds to pass through", elem_id="video-seeds")
        v_frames = gr.Number(value=12, precision=0, minimum=1, maximum=240, label="Frames per seed",
                             elem_id="video-frames")
        v_fps = gr.Number(value=12, precision=0, minimum=1, maximum=60, label="fps")
    v_saved = gr.Dropdown([], value=[], multiselect=True, allow_custom_value=True,
                          label="Or saved latents to pass through, in order",
                          info="chosen latents replace the seeds; they are walked in w (kind linear or cubic)",
                          elem_id="video-saved")
    with gr.Row():
        v_space = gr.Radio(["z", "w"], value="z", label="Space")
        v_kind = gr.Radio(["slerp", "linear", "cubic"], value="slerp", label="Kind",
                          info="slerp goes with z; linear and cubic with w")
        v_loop = gr.Checkbox(value=True, label="Loop back to the first seed")
        v_format = gr.Radio(["GIF", "MP4"], value="GIF", label="Format", elem_id="video-format")
    video_btn = gr.Button("Make video", variant="primary", elem_id="video-btn")
    with gr.Column(elem_id="video-out"):
        video_gif = gr.Image(label="Animation", type="filepath", interactive=False, visible=False,
                             elem_id="video-gif", height=320)
        video_mp4 = gr.Video(label="Video", interactive=False, visible=False, elem_id="video-mp4")
        video_file = gr.File(label="Download", interactive=False, visible=False, elem_id="video-file")
    return SimpleNamespace(v_seeds=v_seeds, v_saved=v_saved, v_frames=v_frames, v_fps=v_fps, v_space=v_space,
                           v_kind=v_kind, v_loop=v_loop, v_format=v_format, video_btn=video_btn, video_gif=video_gif,
                           video_mp4=video_mp4, video_file=video_file)


def _mixing_layout() -> SimpleNamespace:
    """The style-mixing grid's seeds, layers, button and image."""
    gr.Markdown("### Style mixing")
    with gr.Row():
        m_rows = gr.Textbox(value="85,100,75", label="Row seeds (take the styles)")
        m_cols = gr.Textbox(value="55,821,1789", label="Column seeds (give the styles)")
        m_styles = gr.Textbox(value="0-3", label="Style layers from the columns",
                              info="low layers: pose and shape; high: colours and details")
    with gr.Row():
        m_rows_saved = gr.Dropdown([], value=[], multiselect=True, allow_custom_value=True,
                                   label="Saved latents as rows", info="after the row seeds; clear those to use "
                                   "only these", elem_id="mix-rows-saved")
        m_cols_saved = gr.Dropdown([], value=[], multiselect=True, allow_custom_value=True,
                                   label="Saved latents as columns", info="after the column seeds",
                                   elem_id="mix-cols-saved")
    mix_btn = gr.Button("Make style-mixing grid", elem_id="mix-btn")
    # Hidden until there is a grid to show: an empty 480 px box says nothing.
    mix_img = gr.Image(label="Style mixing", type="filepath", interactive=False, elem_id="mix-img", height=480,
                       visible=False)
    return SimpleNamespace(m_rows=m_rows, m_cols=m_cols, m_rows_saved=m_rows_saved, m_cols_saved=m_cols_saved,
                           m_styles=m_styles, mix_btn=mix_btn, mix_img=mix_img)


# ---------------------------------------------------------------------------------------------- the events


def _picker_events(studio: Studio, c: SimpleNamespace):
    """Picking, refreshing and uploading a network -> (on_network, do_refresh) for app.py's page-load events."""
    network, info_md, class_idx, refresh_btn = c.network, c.info_md, c.class_idx, c.refresh_btn
    offered_first, empty_md, upload = c.offered_first, c.empty_md, c.upload

    @friendly
    def on_network(label):
        if not label:
            return "", gr.update(visible=False)
        net = load(studio, label)
        G = net["G_ema"]
        # The range is checked when generating: a maximum set here would hold for every visitor's picker.
        return describe(net, label), gr.update(visible=bool(G.c_dim), value=0 if G.c_dim else None,
                                               label=f"Class (0-{G.c_dim - 1})" if G.c_dim else "Class")

    network.change(on_network, network, [info_md, class_idx], api_name="network_info")

    def do_refresh(current, offered=None):
        """The list again, the newest snapshot first; a network the visitor picked themselves stays picked."""
        ch = network_choices(studio)
        # The panel's own lists (network B, networks to average) follow; their picks stay where still listed.
        return (gr.update(choices=list(ch), value=pick_network(ch, current, offered)), empty_update(studio, ch),
                next(iter(ch), None), gr.update(choices=list(ch)), gr.update(choices=list(ch)))

    c.refresh_event = refresh_btn.click(do_refresh, [network, offered_first], refresh_outputs(c), api_name="networks")

    @friendly
    def on_upload(f):
        if not f:
            return gr.skip(), gr.skip()
        if not is_network_file(f):
            raise UserError("a network file ends in .pt or .pkl")
        kept = studio.keep_upload(f, UPLOAD_FOLDER, "network file")
        label = f"uploaded / {kept.name}"
        try:
            load(studio, label)  # refuse a bad file now, not at the first click on Generate
        except Exception:
            kept.unlink(missing_ok=True)
            raise
        gr.Info(f"Network {kept.name} loaded")
        return gr.update(choices=list(network_choices(studio)), value=label), gr.update(value="", visible=False)

    upload.upload(on_upload, upload, [network, empty_md], api_name="upload_network")

    return on_network, do_refresh


def _images_events(studio: Studio, c: SimpleNamespace) -> None:
    """Random seeds; Generate images -> the gallery, a grid PNG and a zip."""
    rand_btn, seeds, generate_btn, network, psi = c.rand_btn, c.seeds, c.generate_btn, c.network, c.psi
    class_idx, noise, gallery, files, saved = c.class_idx, c.noise, c.gallery, c.files, c.saved

    rand_btn.click(lambda: ",".join(str(random.randrange(0, 100000)) for _ in range(8)), None, seeds,
                   api_name="random_seeds")

    @friendly
    def do_generate(label, seeds_text, psi_v, cls, noise_v, saved_v=None, progress=gr.Progress()):
        from engine.generate import generate_images, synthesize
        from engine.media import make_grid, save_image

        net = load(studio, label)
        G = net["G_ema"]
        names, saved_ws = _saved(studio, G, saved_v)
        if not str(seeds_text or "").strip() and not names:
            raise UserError("no seeds given: type numbers such as 0-7, or choose saved latents")
        seed_list = _seeds(seeds_text, limit=MAX_SEEDS - len(names)) if str(seeds_text or "").strip() else []
        c = _class(G, cls) if seed_list else None
        progress(0, desc=f"Generating {len(seed_list) + len(names)} images")
        images = generate_images(G, seed_list, psi=float(psi_v), class_idx=c, noise_mode=noise_v)
        out = studio.new_output_dir("images")
        items = []
        for seed, img in zip(seed_list, images):
            p = out / f"seed{seed:04d}.png"
            save_image(img, p)
            items.append((str(p), f"seed {seed}"))
        if names:  # a saved latent is its own picture: truncation and class were applied when it was made
            saved_images = synthesize(G, saved_ws, noise_mode=noise_v)
            images = list(images) + saved_images
            for i, (name, img) in enumerate(zip(names, saved_images)):
                p = out / f"latent{i:02d}-{safe_name(name, 'latent')}.png"
                save_image(img, p)
                items.append((str(p), f"latent {name}"))
        cols, rows = _grid_shape(len(images))
        grid_path = out / "grid.png"
        save_image(make_grid(images, cols, rows), grid_path)
        zip_path = out / "images.zip"
        with zipfile.ZipFile(zip_path, "w", zipfile.ZIP_DEFLATED) as z:
            for p, _ in items:
                z.write(p, Path(p).name)
        return items, [str(grid_path), str(zip_path)]

    generate_btn.click(do_generate, [network, seeds, psi, class_idx, noise, saved], [gallery, files],
                       api_name="generate", concurrency_id="gpu", concurrency_limit=1)


def _video_events(studio: Studio, c: SimpleNamespace) -> None:
    """Make video -> a GIF or MP4 through the seeds."""
    video_btn, network, v_seeds, v_frames, v_fps = c.video_btn, c.network, c.v_seeds, c.v_frames, c.v_fps
    v_space, v_kind, v_loop, v_format, psi = c.v_space, c.v_kind, c.v_loop, c.v_format, c.psi
    class_idx, noise, video_gif, video_mp4, video_file = c.class_idx, c.noise, c.video_gif, c.video_mp4, c.video_file
    v_saved = c.v_saved

    @friendly
    def do_video(label, seeds_text, frames, fps, space, kind, loop, fmt, psi_v, cls, noise_v, saved_v=None,
                 progress=gr.Progress()):
        from engine.generate import check_interpolation, count_frames, interpolation_frames
        from engine.media import write_video
        from engine.latents import walk_frames

        net = load(studio, label)
        G = net["G_ema"]
        names, keys = _saved(studio, G, saved_v, "saved latents to pass through")
        if names:
            if len(names) < 2:
                raise UserError("a walk through saved latents needs at least two of them")
            if kind not in ("linear", "cubic"):
                raise UserError(f"saved latents are walked in w: choose kind linear or cubic, not {kind}")
            seed_list = []
        else:
            seed_list = _seeds(seeds_text, "seeds to pass through", limit=64)
            if len(seed_list) < 2:
                raise UserError("an interpolation needs at least two seeds, e.g. 0-3")
        frames = int(frames or 0)
        if frames < 1:
            raise UserError("frames per seed must be at least 1")
        total = count_frames(len(names or seed_list), frames, bool(loop))
        if total > MAX_FRAMES:
            raise UserError(f"{total} frames is too many at once; at most {MAX_FRAMES} (fewer seeds or frames)")
        out = studio.new_output_dir("video")
        ext = "mp4" if fmt == "MP4" else "gif"
        if names:
            progress(0, desc=f"Rendering {total} frames")
            path = out / f"walk-{safe_name('-'.join(names[:8]), 'latents')}.{ext}"
            frames_iter = walk_frames(G, keys, frames, kind, bool(loop), noise_mode=noise_v)
        else:
            kind = check_interpolation(space, kind)
            c = _class(G, cls)
            progress(0, desc=f"Rendering {total} frames")
            path = out / f"interpolation-{safe_name('-'.join(map(str, seed_list[:8])), 'seeds')}.{ext}"
            frames_iter = interpolation_frames(G, seed_list, frames_per_seed=frames, space=space, kind=kind,
                                               loop=bool(loop), psi=float(psi_v), class_idx=c, noise_mode=noise_v)
        write_video(progress.tqdm(frames_iter, total=total, desc="Rendering frames"), path, fps=int(fps or 12))
        if ext == "gif":
            return (gr.update(value=str(path), visible=True), gr.update(value=None, visible=False),
                    gr.update(value=str(path), visible=True))
        return (gr.update(value=None, visible=False), gr.update(value=str(path), visible=True),
                gr.update(value=str(path), visible=True))

    video_btn.click(do_video, [network, v_seeds, v_frames, v_fps, v_space, v_kind, v_loop, v_format, psi, class_idx,
                               noise, v_saved], [video_gif, video_mp4, video_file], api_name="video",
                    concurrency_id="gpu", concurrency_limit=1)


def _mixing_events(studio: Studio, c: SimpleNamespace) -> None:
    """Make style-mixing grid -> the labelled grid."""
    mix_btn, network, m_rows, m_cols, m_styles = c.mix_btn, c.network, c.m_rows, c.m_cols, c.m_styles
    psi, noise, mix_img, m_rows_saved, m_cols_saved = c.psi, c.noise, c.mix_img, c.m_rows_saved, c.m_cols_saved

    def side(G, text, saved_v, what, psi_v):
        """(labels, ws) of one side of the grid: its seeds, then its saved latents (labelled by name)."""
        import torch

        from engine.generate import seeds_to_ws

        names, saved_ws = _saved(studio, G, saved_v, f"saved latents as {what}s")
        if not str(text or "").strip() and not names:
            raise UserError(f"no {what} seeds given: type numbers such as 1,5,9, or choose saved latents as {what}s")
        seeds = _seeds(text, f"{what} seeds", limit=16) if str(text or "").strip() else []
        if len(seeds) + len(names) > 16:
            raise UserError(f"{len(seeds) + len(names)} {what}s is too many for one figure; at most 16")
        if seeds and G.c_dim:
            raise UserError("style mixing of seeds is for unconditional networks; this one is conditional: "
                            "clear the seeds and mix saved latents")
        parts = [seeds_to_ws(G, seeds, psi=float(psi_v))] if seeds else []
        parts += [saved_ws] if names else []
        return seeds + names, torch.cat(parts)

    @friendly
    def do_mix(label, rows_text, cols_text, styles_text, psi_v, noise_v, rows_saved=None, cols_saved=None,
               progress=gr.Progress()):
        from engine.generate import style_mix_ws_grid
        from engine.media import label_mix_grid, save_image
        from engine.commands.common import parse_seeds

        net = load(studio, label)
        G = net["G_ema"]
        styles = parse_seeds(str(styles_text or "").strip())
        if not styles or max(styles) >= G.num_ws:
            raise UserError(f"style layers must lie within 0-{G.num_ws - 1} for this network")
        rows, row_ws = side(G, rows_text, rows_saved, "row", psi_v)
        cols, col_ws = side(G, cols_text, cols_saved, "column", psi_v)
        progress(0, desc="Mixing styles")
        grid, _ = style_mix_ws_grid(G, row_ws, col_ws, styles, noise_mode=noise_v)
        out = studio.new_output_dir("mix")
        save_image(grid, out / "style-mix.png")  # the plain grid, as the command line writes it
        path = out / "style-mix-labelled.png"
        save_image(label_mix_grid(grid, rows, cols), path)
        what = ("row's seed", "column's seed") if not (rows_saved or cols_saved) else ("row", "column")
        return gr.update(value=str(path), visible=True, label=f"Style mixing: each {what[0]} with layers "
                                                             f"{_ranges(styles)} taken from each {what[1]}")

    mix_btn.click(do_mix, [network, m_rows, m_cols, m_styles, psi, noise, m_rows_saved, m_cols_saved], mix_img,
                  api_name="mix",
                  concurrency_id="gpu", concurrency_limit=1)


def _saved_events(studio: Studio, c: SimpleNamespace):
    """The saved-latent lists follow the picked network (and Refresh, and opening the tab: a latent saved on the
    Explore tab shows up). Picks that still belong to the network stay picked. -> (handler, the lists)."""
    lists = [c.saved, c.v_saved, c.m_rows_saved, c.m_cols_saved]

    def on_saved(label, *picked):
        names = saved_names(studio, label)
        return tuple(gr.update(choices=names, value=[n for n in (p or []) if n in names]) for p in picked)

    c.network.change(on_saved, [c.network, *lists], lists, api_name="saved_latents")
    c.refresh_event.then(on_saved, [c.network, *lists], lists, api_name=False)
    return on_saved, lists


def empty_update(studio: Studio, choices):
    text = _empty_text(studio, choices)
    return gr.update(value=text, visible=bool(text))


def _empty_text(studio: Studio, choices) -> str:
    if choices:
        return ""
    if not studio.demo_network.is_file():
        return ("**No network yet.** The built-in demo network (assets/demo-network.pt) is not installed here, "
                "and no training has written a snapshot. Make your own in three steps: **Data** → prepare the "
                "emoji set at 32 px; **Train** → start the *tiny* preset; back here, press *Refresh list* and pick "
                "its snapshot. Or upload a .pt / NVIDIA .pkl network below.")
    return "**No network yet.** Upload a .pt or NVIDIA .pkl network, or train one on the Train tab."
