"""The demo page visitors of a shared link see: the published networks (their name, the owner's description and a
sample grid), Generate (a seed grid, an interpolation GIF) and Explore (a live view with direction sliders, and the
projection of an uploaded picture).

Nothing else is on it: no run, dataset, file or server path; the owner's dashboard is a separate app. Every event is
marked for viewers (ui.roles), device work waits its turn in the fair line, and each visitor keeps within the
owner's limits (ui.fairness.Limits); the owner, logged in here too, has the dashboard's limits.
"""

from __future__ import annotations

import functools
import html
import math
import tempfile
import time
from pathlib import Path

import gradio as gr
import numpy as np

from engine.errors import UserError
from ui import published
from ui.common import ROOT, Studio, friendly
from ui.roles import OWNER, Access, for_viewers, request_role

NUM_SLIDERS = 5
# The owner's own limits here: those of the dashboard's tabs.
OWNER_SEEDS, OWNER_FRAMES, OWNER_STEPS = 256, 3000, 1000
NOTHING = ("**Nothing is published yet.** The owner publishes networks from the Generate tab of the dashboard "
           "(*Publish on the demo page*).")


def _masker(studio: Studio):
    folders = [(str(studio.workdir), "<studio>"), (str(ROOT), "<app>"), (tempfile.gettempdir(), "<tmp>")]

    def mask(text: str) -> str:
        for path, shown in folders:
            text = text.replace(path, shown)
        return text

    return mask


def _visitor_safe(mask, fn):
    """friendly(), and whatever message results names no server folder (this page is for strangers)."""
    inner = friendly(fn)

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return inner(*args, **kwargs)
        except gr.Error as e:
            raise gr.Error(mask(str(e.message)), print_exception=False) from None

    return wrapper


def _visitor_safe_steps(mask, fn):
    """_visitor_safe for a generator handler: each step runs under it."""
    done = object()

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        steps = fn(*args, **kwargs)
        advance = _visitor_safe(mask, lambda: next(steps, done))
        while True:
            item = advance()
            if item is done:
                return
            yield item

    return wrapper


def _grid_shape(n: int) -> tuple[int, int]:
    cols = min(8, max(1, math.isqrt(max(1, n) - 1) + 1))
    return cols, -(-max(1, n) // cols)


def _about(studio: Studio, entry: dict, G) -> str:
    ch = {1: "grayscale", 3: "colour", 4: "colour with transparency"}.get(int(G.img_channels), "")
    cond = f", {G.c_dim} classes" if G.c_dim else ""
    text = f"## {html.escape(entry['name'])}\n"
    if entry.get("description"):
        text += html.escape(entry["description"]) + "\n\n"
    return text + f"*{G.img_resolution} × {G.img_resolution} px {ch}{cond}*"


def build(studio: Studio, access: Access, css: "str | None" = None):
    """The demo page's Blocks (guard not yet installed: app.py does that when it serves it)."""
    limits = access.limits
    mask = _masker(studio)
    safe = functools.partial(_visitor_safe, mask)
    scratch = Path(tempfile.mkdtemp(prefix="studio-visitors-"))

    def caps(request):
        if request_role(access, request) == OWNER:
            return OWNER_SEEDS, OWNER_FRAMES, OWNER_STEPS
        return limits.seeds, limits.frames, limits.steps

    def network(name):
        if not name:
            raise UserError("no network is published yet" if not published.names(studio)
                            else "choose a network first")
        from ui.networks import load_file

        entry = published.find(studio, name)
        return entry, load_file(studio, published.network_file(studio, entry))

    def new_file(suffix):
        now = time.time()
        for old in scratch.glob("*"):  # gradio has its own copy of what was shown; ours go after ten minutes
            try:
                if now - old.stat().st_mtime > 600:
                    old.unlink()
            except OSError:
                pass
        return Path(tempfile.mkstemp(suffix=suffix, dir=scratch)[1])

    names = published.names(studio)
    first = names[0] if names else None
    with gr.Blocks(title="StyleGAN Studio demo", analytics_enabled=False, delete_cache=(3600, 86400)) as page:
        with gr.Row(elem_id="studio-header"):
            gr.HTML("<div class='studio-title'><span>StyleGAN Studio</span></div>"
                    "<span class='studio-badge'>demo</span>")
        with gr.Row():
            # Names are checked by the handlers against what is published now (the owner may publish meanwhile).
            picker = gr.Dropdown(names, value=first, label="Network", elem_id="demo-network", scale=3,
                                 allow_custom_value=True)
        with gr.Row():
            with gr.Column(scale=2):
                about = gr.Markdown(NOTHING if not names else "", elem_id="demo-about")
                gr.Markdown(f"Visitors may make {limits.describe()}.", elem_id="demo-limits")
            samples = gr.Image(label="Samples", type="numpy", interactive=False, height=260, format="png",
                               elem_id="demo-samples")
        with gr.Tabs(elem_id="demo-tabs"):
            with gr.Tab("Generate", elem_id="demo-tab-generate"):
                with gr.Row():
                    seeds = gr.Textbox(value="0-7", label=f"Seeds (at most {limits.seeds})",
                                       info="numbers and ranges: 0-7, 42, 100-103", elem_id="demo-seeds", scale=3)
                    psi = gr.Slider(0, 1.5, value=0.7, step=0.05, label="Truncation psi",
                                    info="lower: typical, cleaner images; 1: full variety", scale=3)
                    class_idx = gr.Number(value=None, precision=0, minimum=0, label="Class", visible=False,
                                          elem_id="demo-class", scale=1)
                generate_btn = gr.Button("Generate images", variant="primary", elem_id="demo-generate")
                gallery = gr.Gallery(label="Images", columns=8, height="auto", object_fit="contain", format="png",
                                     elem_id="demo-gallery")
                gr.Markdown("### Interpolation GIF")
                with gr.Row():
                    v_seeds = gr.Textbox(value="0-3", label="Seeds to pass through", elem_id="demo-video-seeds")
                    v_frames = gr.Number(value=12, precision=0, minimum=1, label="Frames per seed",
                                         elem_id="demo-video-frames")
                    video_btn = gr.Button("Make GIF", elem_id="demo-video")
                gif = gr.Image(label="Animation", type="filepath", interactive=False, height=320,
                               elem_id="demo-gif")
            with gr.Tab("Explore", elem_id="demo-tab-explore"):
                with gr.Row():
                    with gr.Column(scale=2):
                        seed = gr.Slider(0, 1000, value=0, step=0.01, label="Seed",
                                         info="fractional seeds blend the two neighbouring seeds",
                                         elem_id="demo-seed")
                        e_psi = gr.Slider(-1, 2, value=0.7, step=0.05, label="Truncation psi", elem_id="demo-psi")
                        sliders = [gr.Slider(-10, 10, value=0, step=0.1, label=f"Direction {i}",
                                             elem_id=f"demo-dir-{i}") for i in range(NUM_SLIDERS)]
                    with gr.Column(scale=2):
                        image = gr.Image(label="Live view", type="numpy", interactive=False, height=320,
                                         format="png", elem_id="demo-image")
                with gr.Accordion("Project a picture", open=False):
                    with gr.Row():
                        upload = gr.File(label="Picture", file_types=["image"], type="filepath",
                                         elem_id="demo-upload")
                        progress_img = gr.Image(label="Picture | projection", type="numpy", interactive=False,
                                                height=240, elem_id="demo-progress")
                    steps = gr.Slider(10, limits.steps, value=min(100, limits.steps), step=10,
                                      label=f"Steps (at most {limits.steps})", elem_id="demo-steps")
                    project_btn = gr.Button("Project", variant="primary", elem_id="demo-project")
                    project_md = gr.Markdown(elem_id="demo-project-status")
        found = gr.State(None)     # {'directions', 'scales'} of the picked network (SeFa)
        base = gr.State(None)      # ws of a projection, or None: the seed slider rules

        # -------------------------------------------------------------- the network
        def on_network(name):
            if not name:
                return (NOTHING, None, gr.update(visible=False, value=None), None, None, None,
                        *[gr.update(value=0) for _ in sliders])
            from engine import directions as dirs
            from engine import explore

            entry, net = network(name)
            G = net["G_ema"]
            res = dirs.compute(G, "sefa", min(NUM_SLIDERS, int(G.w_dim)))
            found_v = {"directions": res["directions"].tolist(), "scales": res["scales"].tolist()}
            img = explore.render(G, explore.seed_ws(G, 0, psi=0.7, class_idx=0 if G.c_dim else None))
            sample = published.samples_file(studio, entry)
            return (_about(studio, entry, G), _picture(sample) if sample else None,
                    gr.update(visible=bool(G.c_dim), value=0 if G.c_dim else None,
                              label=f"Class (0-{G.c_dim - 1})" if G.c_dim else "Class"),
                    img, found_v, None, *[gr.update(value=0) for _ in sliders])

        network_outputs = [about, samples, class_idx, image, found, base, *sliders]
        for_viewers(picker.change(safe(on_network), picker, network_outputs, api_name="demo_network"),
                    device=True, cost=0)

        def on_load():
            ch = published.names(studio)
            return gr.update(choices=ch, value=ch[0] if ch else None)

        # The list as it is now (the owner may have published since the page was built); its change loads it.
        for_viewers(page.load(safe(on_load), None, picker, api_name="demo_networks"))
        for_viewers(page.load(safe(on_network), picker, network_outputs, api_name=False), device=True, cost=0)

        # -------------------------------------------------------------- generate
        def do_generate(name, seeds_text, psi_v, cls, request: gr.Request):
            from engine.commands.common import parse_seeds
            from engine.generate import generate_images

            most = caps(request)[0]
            if not str(seeds_text or "").strip():
                raise UserError("no seeds given: type numbers such as 0-7 or 1,5,9")
            seed_list = parse_seeds(str(seeds_text).strip(), max_count=most)
            _, net = network(name)
            G = net["G_ema"]
            c = _class(G, cls)
            images = generate_images(G, seed_list, psi=float(psi_v), class_idx=c)
            return [(img, f"seed {s}") for s, img in zip(seed_list, images)]

        for_viewers(generate_btn.click(safe(do_generate), [picker, seeds, psi, class_idx], gallery,
                                       api_name="demo_generate", concurrency_limit=64), device=True)

        def do_video(name, seeds_text, frames, psi_v, cls, request: gr.Request):
            from engine.commands.common import parse_seeds
            from engine.generate import count_frames, interpolation_frames
            from engine.media import write_video

            most = caps(request)[1]
            seed_list = parse_seeds(str(seeds_text or "").strip(), what="seeds to pass through", max_count=64)
            if len(seed_list) < 2:
                raise UserError("an interpolation needs at least two seeds, e.g. 0-3")
            try:
                frames = int(frames)
            except (TypeError, ValueError):
                raise UserError(f"frames per seed {frames!r} is not a number") from None
            if frames < 1:
                raise UserError("frames per seed must be at least 1")
            total = count_frames(len(seed_list), frames, True)
            if total > most:
                raise UserError(f"{total} frames is more than the {most} a GIF may have here: use fewer seeds or "
                                "frames per seed")
            _, net = network(name)
            G = net["G_ema"]
            path = new_file(".gif")
            write_video(interpolation_frames(G, seed_list, frames_per_seed=frames, space="z", kind="slerp",
                                             loop=True, psi=float(psi_v), class_idx=_class(G, cls)), path, fps=12)
            return str(path)

        for_viewers(video_btn.click(safe(do_video), [picker, v_seeds, v_frames, psi, class_idx], gif,
                                    api_name="demo_gif", concurrency_limit=64), device=True)

        # -------------------------------------------------------------- explore
        def on_live(name, base_v, seed_v, psi_v, cls, found_v, *strengths):
            import torch

            from engine import explore
            from engine.latents import check_ws

            _, net = network(name)
            G = net["G_ema"]
            if base_v is not None:
                ws = check_ws(torch.tensor(base_v, dtype=torch.float32), G, "the projection")
            else:
                ws = explore.seed_ws(G, seed_v, psi=psi_v, class_idx=_class(G, cls))
            if found_v and any(strengths):
                d = torch.tensor(found_v["directions"], dtype=torch.float32)
                ws = explore.combine(ws, d, list(strengths)[:len(d)], None, found_v["scales"])
            return explore.render(G, ws)

        live_inputs = [picker, base, seed, e_psi, class_idx, found, *sliders]
        for i, ctl in enumerate((e_psi, *sliders)):
            for_viewers(ctl.change(safe(on_live), live_inputs, image, api_name="demo_live" if i == 0 else False,
                                   show_progress="hidden", trigger_mode="always_last", concurrency_limit=64),
                        device=True, cost=0.1)

        def on_seed(*args):  # moving the seed leaves a projection
            return safe(on_live)(args[0], None, *args[2:]), None

        for_viewers(seed.change(on_seed, live_inputs, [image, base], api_name=False, show_progress="hidden",
                                trigger_mode="always_last", concurrency_limit=64), device=True, cost=0.1)

        def on_project(name, path, steps_v, cls, request: gr.Request):
            from engine import explore
            from engine import project as proj

            most = caps(request)[2]
            if not path:
                raise UserError("upload a picture first")
            path = studio.check_upload(path, "picture")
            try:
                n = int(steps_v)
            except (TypeError, ValueError):
                raise UserError(f"steps {steps_v!r} is not a number") from None
            if not 1 <= n <= most:
                raise UserError(f"steps {n} is out of range: use 1 to {most}")
            _, net = network(name)
            G = net["G_ema"]
            try:
                target = proj.load_target(path, G)
            except UserError as e:  # named by the visitor's file, not by the server's copy of it
                raise UserError(str(e).replace(f"target {path}", path.name).replace(str(path), path.name)) from None
            loss_fn = proj.make_loss("auto", G, D=None)
            run = proj.project(G, target, steps=n, space="w", loss=loss_fn,
                               class_idx=_class(G, cls) if G.c_dim else None)
            every = max(1, n // 20)
            for s in run:
                if s.step % every == 0 or s.step == n:
                    img = explore.render(run.G, s.ws)
                    ws = s.ws.cpu().tolist()
                    yield (np.concatenate([target, img], axis=1), f"step {s.step} of {n}", ws,
                           explore.render(G, s.ws))

        for_viewers(project_btn.click(_visitor_safe_steps(mask, on_project), [picker, upload, steps, class_idx],
                                      [progress_img, project_md, base, image], api_name="demo_project",
                                      concurrency_limit=64), device=True)

        def on_upload(path):
            """A picture is checked when it arrives: anything else is refused by its name at once."""
            if not path:
                return gr.skip()
            from PIL import Image

            name = Path(str(path)).name
            try:
                studio.check_upload(path, "picture")
                with Image.open(path) as im:
                    im.verify()
            except UserError as e:
                gr.Warning(mask(str(e)))
                return None
            except Exception:
                gr.Warning(f"{name} is not a picture this page can read: upload a PNG, JPEG or WebP file")
                return None
            return gr.skip()

        for_viewers(upload.upload(on_upload, upload, upload, api_name=False))
    page.studio_scratch = scratch
    return page


def _picture(path):
    """A PNG as an array: the page gets its own copy, and no file of the workdir is ever served by it."""
    from PIL import Image

    with Image.open(path) as im:
        im = im.convert("RGB")
        k = max(1, 512 // max(1, im.width))  # a 32 px network's grid is drawn large enough to see, pixels kept
        return np.asarray(im.resize((im.width * k, im.height * k), Image.NEAREST) if k > 1 else im)


def _class(G, class_idx):
    if not G.c_dim:
        return None
    try:
        c = int(class_idx)
    except (TypeError, ValueError):
        raise UserError(f"this network is conditional: choose a class from 0 to {G.c_dim - 1}") from None
    if not 0 <= c < G.c_dim:
        raise UserError(f"class {c} is out of range: this network has classes 0 to {G.c_dim - 1}")
    return c
