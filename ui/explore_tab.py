"""Explore tab: a live view (fractional seeds, truncation, noise, class), projection of an uploaded picture,
sliders along unsupervised directions, a GIF along one direction, and the latent library.

All model math is in engine.explore, engine.project, engine.directions and engine.latents; this module only wires
controls to them. The current latent lives in the page's state as a plain list (ws [1, num_ws, w_dim]).
"""

from __future__ import annotations

import functools
import time
from pathlib import Path

import gradio as gr
import numpy as np

from engine.errors import UserError
from ui.common import Studio, friendly
from ui.networks import load, network_choices

NUM_SLIDERS = 5
MAX_PROJECT_STEPS = 1000


_DONE = object()


def _friendly_steps(fn):
    """friendly() for a generator handler: each step runs under it, so an error mid-way is a message too
    (wrapping the generator function itself would hide from Gradio that it streams)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        steps = fn(*args, **kwargs)
        advance = friendly(lambda: next(steps, _DONE))
        while True:
            item = advance()
            if item is _DONE:
                return
            yield item

    return wrapper


def _G(studio, label):
    return load(studio, label)["G_ema"]


def _ws_tensor(G, state):
    import torch

    from engine.latents import check_ws

    return check_ws(torch.tensor(state, dtype=torch.float32), G, "the current latent")


def _class(G, class_idx):
    if int(G.c_dim) == 0:
        return None
    if class_idx is None:
        raise UserError(f"this network is conditional: choose a class 0..{G.c_dim - 1}")
    return int(class_idx)


def build(studio: Studio):
    choices = network_choices(studio)
    first = next(iter(choices), None)
    with gr.Column():
        with gr.Row():
            network = gr.Dropdown(list(choices), value=first, label="Network", elem_id="explore-network", scale=5)
            refresh_btn = gr.Button("Refresh list", size="sm", scale=1)
        with gr.Row():
            with gr.Column(scale=2):
                seed = gr.Slider(0, 1000, value=0, step=0.01, label="Seed",
                                 info="fractional seeds blend the two neighbouring seeds", elem_id="explore-seed")
                psi = gr.Slider(-1, 2, value=0.7, step=0.05, label="Truncation psi", elem_id="explore-psi")
                with gr.Row():
                    noise = gr.Radio(["const", "random", "none"], value="const", label="Noise",
                                     elem_id="explore-noise")
                    class_idx = gr.Number(value=None, precision=0, minimum=0, label="Class (conditional networks)",
                                          elem_id="explore-class")
                source_md = gr.Markdown("Source: seed", elem_id="explore-source")
            with gr.Column(scale=2):
                image = gr.Image(label="Live view", type="numpy", interactive=False, height=320, format="png",
                                 elem_id="explore-image")
                latency_md = gr.Markdown(elem_id="explore-latency")

        with gr.Accordion("Directions", open=True):
            with gr.Row():
                method = gr.Radio(["sefa", "pca"], value="sefa", label="Method",
                                  info="sefa: closed form from the style weights (instant); pca: GANSpace")
                layers = gr.Textbox(value="all", label="Layers to edit", info="e.g. 0-3 (pose, shape), 4-7 (detail)",
                                    elem_id="explore-layers")
                find_btn = gr.Button("Find directions", elem_id="explore-find")
            sliders = [gr.Slider(-10, 10, value=0, step=0.1, label=f"Direction {i}", elem_id=f"explore-dir-{i}")
                       for i in range(NUM_SLIDERS)]
            with gr.Row():
                gif_index = gr.Number(value=0, precision=0, minimum=0, maximum=NUM_SLIDERS - 1,
                                      label="GIF along direction", elem_id="explore-gif-index")
                gif_range = gr.Textbox(value="-5,5", label="Strength range")
                gif_frames = gr.Number(value=24, precision=0, minimum=2, maximum=200, label="Frames")
                gif_btn = gr.Button("Make GIF", elem_id="explore-gif-btn")
            gif_out = gr.Image(label="Direction GIF", type="filepath", interactive=False, height=240,
                               elem_id="explore-gif")

        with gr.Accordion("Project a picture", open=False):
            with gr.Row():
                # A file, not an image component: a bad picture then reaches load_target, whose message says why.
                upload = gr.File(label="Picture", file_types=["image"], type="filepath", elem_id="explore-upload")
                progress_img = gr.Image(label="Target | projection", type="numpy", interactive=False, height=240,
                                        elem_id="explore-progress")
            with gr.Row():
                steps = gr.Slider(10, MAX_PROJECT_STEPS, value=200, step=10, label="Steps", elem_id="explore-steps")
                space = gr.Radio(["w", "w+"], value="w", label="Space",
                                 info="w: editable; w+: closer to the picture, edits less reliable")
                loss = gr.Dropdown(["auto", "lpips", "d", "inception", "pixel"], value="auto", label="Loss")
            with gr.Row():
                project_btn = gr.Button("Project", variant="primary", elem_id="explore-project")
                stop_btn = gr.Button("Stop and keep", elem_id="explore-stop")
            project_md = gr.Markdown(elem_id="explore-project-status")

        with gr.Accordion("Saved latents", open=False):
            with gr.Row():
                name = gr.Textbox(label="Name", placeholder="e.g. smiling-cat", elem_id="explore-name")
                save_btn = gr.Button("Save current latent", elem_id="explore-save")
            saved = gr.Dropdown([], label="Saved latents of this network", elem_id="explore-saved")
            load_btn = gr.Button("Load", elem_id="explore-load")
            gallery = gr.Gallery(label="Library", columns=8, height="auto", object_fit="contain",
                                 elem_id="explore-gallery")
            save_md = gr.Markdown(elem_id="explore-save-status")
            with gr.Row():
                walk_names = gr.Textbox(label="GIF through saved latents", placeholder="names in order, e.g. a,b,c",
                                        elem_id="explore-walk-names")
                walk_loop = gr.Checkbox(value=True, label="Loop")
                walk_btn = gr.Button("Make GIF", elem_id="explore-walk-btn")
            walk_out = gr.Image(label="Walk", type="filepath", interactive=False, height=240,
                                elem_id="explore-walk")

    base = gr.State(None)        # ws of a projection / saved latent, or None: the seed controls rule
    current = gr.State(None)     # ws shown now (base or seed, with the direction offsets)
    found = gr.State(None)       # {'directions', 'scales'} as lists
    source = gr.State({"kind": "seed"})

    # ------------------------------------------------------------------ helpers
    def _base_ws(G, base_v, seed_v, psi_v, class_v):
        from engine import explore

        if base_v is not None:
            return _ws_tensor(G, base_v)
        return explore.seed_ws(G, seed_v, psi=psi_v, class_idx=_class(G, class_v))

    def _apply(G, ws, found_v, layers_v, strengths):
        import torch

        from engine import directions as dirs
        from engine import explore

        if not found_v or not any(strengths):
            return ws
        idx = dirs.parse_layers(None if str(layers_v).strip() in ("", "all") else layers_v, int(G.num_ws))
        d = torch.tensor(found_v["directions"], dtype=torch.float32)
        return explore.combine(ws, d, list(strengths)[:len(d)], idx, found_v["scales"])

    def _render(label, base_v, seed_v, psi_v, noise_v, class_v, found_v, layers_v, *strengths):
        from engine import explore

        t0 = time.perf_counter()
        G = _G(studio, label)
        ws = _apply(G, _base_ws(G, base_v, seed_v, psi_v, class_v), found_v, layers_v, strengths)
        img = explore.render(G, ws, noise_mode=noise_v)
        ms = (time.perf_counter() - t0) * 1000
        return img, f"updated in {ms:.0f} ms", ws.cpu().tolist()

    live_inputs = [network, base, seed, psi, noise, class_idx, found, layers, *sliders]
    live_outputs = [image, latency_md, current]

    @friendly
    def on_live(*args):
        return _render(*args)

    @friendly
    def on_seed(*args):
        # Moving a seed control returns the view to seeds (leaving a projection or a saved latent).
        out = _render(args[0], None, *args[2:])
        return (*out, None, "Source: seed", {"kind": "seed"})

    for i, ctl in enumerate((psi, noise, class_idx, layers, *sliders)):
        ctl.change(on_live, live_inputs, live_outputs, api_name="explore_live" if i == 0 else False,
                   show_progress="hidden", trigger_mode="always_last")
    seed.change(on_seed, live_inputs, live_outputs + [base, source_md, source], api_name=False,
                show_progress="hidden", trigger_mode="always_last")

    @friendly
    def on_network(label):
        G = _G(studio, label)
        from engine import latents

        entries = [e for e in latents.list_latents(latents.library_folder(studio.workdir), G) if e["compatible"]]
        names = [e["name"] for e in entries]
        img, lat, cur = _render(label, None, 0, 0.7, "const", 0 if G.c_dim else None, None, "all",
                                *([0] * NUM_SLIDERS))
        # The sliders work at once: SeFa's directions (all layers) take a fraction of a second, so they are found
        # with the network; Find directions chooses another method or layers.
        from engine import directions as dirs

        res = dirs.compute(G, "sefa", min(NUM_SLIDERS, int(G.w_dim)))
        found_v = {"directions": res["directions"].tolist(), "scales": res["scales"].tolist()}
        return (img, lat, cur, None, found_v, "Source: seed", {"kind": "seed"},
                gr.update(choices=names, value=None), _gallery(entries),
                *[gr.update(value=0) for _ in sliders])

    network.change(on_network, network, [image, latency_md, current, base, found, source_md, source, saved,
                                          gallery, *sliders], api_name=False)

    @friendly
    def on_refresh(cur):
        ch = network_choices(studio)
        return gr.update(choices=list(ch), value=cur if cur in ch else next(iter(ch), None))

    refresh_btn.click(on_refresh, network, network, api_name=False)

    # ------------------------------------------------------------------ directions
    @friendly
    def on_find(label, method_v, layers_v, class_v):
        from engine import directions as dirs

        G = _G(studio, label)
        layer_arg = None if str(layers_v).strip() in ("", "all") else layers_v
        t0 = time.perf_counter()
        res = dirs.compute(G, method_v, min(NUM_SLIDERS, int(G.w_dim)),
                           layers=layer_arg if method_v == "sefa" else None,
                           class_idx=_class(G, class_v) if G.c_dim else None,
                           samples=5000)
        ms = (time.perf_counter() - t0) * 1000
        value = {"directions": res["directions"].tolist(), "scales": res["scales"].tolist()}
        gr.Info(f"{len(res['directions'])} {method_v} directions in {ms:.0f} ms")
        return value, *[gr.update(value=0) for _ in sliders]

    find_btn.click(on_find, [network, method, layers, class_idx], [found, *sliders], api_name="explore_find").then(
        on_live, live_inputs, live_outputs, api_name=False)

    @friendly
    def on_gif(label, cur, found_v, index, rng, frames, layers_v, noise_v):
        import torch

        from engine import directions as dirs
        from engine import generate as gen, media

        if not found_v:
            raise UserError("find directions first (the Find directions button)")
        if cur is None:
            raise UserError("nothing to edit yet: choose a seed or project a picture")
        G = _G(studio, label)
        k = int(index or 0)
        if not 0 <= k < len(found_v["directions"]):
            raise UserError(f"direction {k} is out of range 0..{len(found_v['directions']) - 1}")
        lo, hi = dirs.parse_range(rng)
        n = int(frames or 24)
        if not 2 <= n <= 200:
            raise UserError(f"frames {n} is out of range 2..200")
        ws = _ws_tensor(G, cur)
        d = torch.tensor(found_v["directions"][k], dtype=torch.float32)
        idx = dirs.parse_layers(None if str(layers_v).strip() in ("", "all") else layers_v, int(G.num_ws))
        sweep = torch.cat([dirs.edit(ws, d, a, idx, found_v["scales"][k]) for a in np.linspace(lo, hi, n)])
        images = gen.synthesize(G, sweep, noise_mode=noise_v)
        out = studio.new_output_dir("direction") / f"direction{k}.gif"
        return str(media.write_video(images, out, fps=12))

    gif_btn.click(on_gif, [network, current, found, gif_index, gif_range, gif_frames, layers, noise], gif_out,
                  api_name="explore_gif")

    # ------------------------------------------------------------------ projection
    @_friendly_steps
    def on_project(label, path, steps_v, space_v, loss_v, class_v, noise_v):
        from engine import explore
        from engine import project as proj

        if not path:
            raise UserError("upload a picture first")
        path = studio.check_upload(path, "picture")
        net = load(studio, label)
        G = net["G_ema"]
        try:
            target = proj.load_target(path, G)
        except UserError as e:  # named by the file the visitor chose, not by the server's copy of it
            raise UserError(str(e).replace(f"target {path}", path.name).replace(str(path), path.name)) from None
        loss_fn = proj.make_loss(loss_v, G, D=net.get("D"))
        n = int(steps_v)
        if not 1 <= n <= MAX_PROJECT_STEPS:
            raise UserError(f"steps {n} is out of range 1..{MAX_PROJECT_STEPS}")
        run = proj.project(G, target, steps=n, space=space_v, loss=loss_fn,
                           class_idx=_class(G, class_v) if G.c_dim else None)
        every = max(1, n // 40)
        t0 = time.time()
        for s in run:
            if s.step % every == 0 or s.step == n:
                img = explore.render(run.G, s.ws, noise_mode="const")
                both = np.concatenate([target, img], axis=1)
                text = (f"step {s.step}/{n}, distance {s.distance:.4f}, {time.time() - t0:.0f} s "
                        f"(loss: {loss_fn.description})")
                ws = s.ws.cpu().tolist()
                yield (both, text, ws, ws, f"Source: projection of {path.name} ({s.step} steps)",
                       {"kind": "projection", "picture": path.name, "steps": s.step, "loss": loss_fn.name},
                       explore.render(G, s.ws, noise_mode=noise_v))

    def on_upload(path):
        """A picture is checked when it arrives: anything else is refused at once, by its name, and the drop area
        comes back (a later Project would fail on it)."""
        if not path:
            return gr.skip()
        try:
            studio.check_upload(path, "picture")
            picture_problem = _picture_problem(path)
        except UserError as e:
            picture_problem = str(e)
        if picture_problem:
            gr.Warning(picture_problem)
            return None
        return gr.skip()

    def _picture_problem(path):
        from PIL import Image

        name = Path(str(path)).name
        try:
            with Image.open(path) as im:
                im.verify()
        except Image.DecompressionBombError:
            return f"{name} is too large to open; shrink it first"
        except Exception:
            return f"{name} is not a picture this program can read: upload a PNG, JPEG or WebP file"
        return ""

    upload.upload(on_upload, upload, upload, api_name=False)

    proj_event = project_btn.click(
        on_project, [network, upload, steps, space, loss, class_idx, noise],
        [progress_img, project_md, base, current, source_md, source, image], api_name="explore_project")
    stop_btn.click(None, None, None, cancels=[proj_event], api_name=False)

    # ------------------------------------------------------------------ library
    def _gallery(entries):
        return [(e["thumbnail"], e["name"]) for e in entries if e.get("thumbnail")]

    @friendly
    def on_save(label, cur, name_v, source_v, seed_v, psi_v, class_v, noise_v, layers_v, *strengths):
        from engine import latents

        if cur is None:
            raise UserError("nothing to save yet: choose a seed or project a picture")
        G = _G(studio, label)
        kind = source_v.get("kind", "seed") if isinstance(source_v, dict) else "seed"
        details = {k: v for k, v in (source_v or {}).items() if k != "kind"}
        if kind == "seed":
            details.update(seed=float(seed_v), psi=float(psi_v), class_idx=_class(G, class_v))
        if any(strengths):
            kind = "edit"
            details.update(edit_of=source_v.get("kind", "seed"), strengths=[float(a) for a in strengths],
                           layers=str(layers_v))
        folder = latents.library_folder(studio.workdir)
        latents.save_latent(folder, name_v, _ws_tensor(G, cur), G, kind, noise_mode=noise_v, network_label=label,
                            **details)
        entries = [e for e in latents.list_latents(folder, G) if e["compatible"]]
        return (f"saved {name_v.strip()!r} ({kind})", gr.update(choices=[e["name"] for e in entries]),
                _gallery(entries))

    save_btn.click(on_save, [network, current, name, source, seed, psi, class_idx, noise, layers, *sliders],
                   [save_md, saved, gallery], api_name="explore_save")

    @friendly
    def on_load(label, name_v, noise_v):
        from engine import explore, latents

        if not name_v:
            raise UserError("choose a saved latent first")
        G = _G(studio, label)
        ws = latents.load_latent(latents.library_folder(studio.workdir), name_v, G)
        return (ws.cpu().tolist(), ws.cpu().tolist(), explore.render(G, ws, noise_mode=noise_v),
                f"Source: saved latent {name_v}", {"kind": "saved", "name": name_v},
                *[gr.update(value=0) for _ in sliders])

    load_btn.click(on_load, [network, saved, noise], [base, current, image, source_md, source, *sliders],
                   api_name="explore_load")

    @friendly
    def on_walk(label, names_v, loop_v, noise_v):
        from engine import media
        from engine import latents

        G = _G(studio, label)
        keys = latents.load_many(latents.library_folder(studio.workdir), str(names_v or "").split(","), G)
        frames = latents.walk_frames(G, keys, 16, "cubic", bool(loop_v), noise_mode=noise_v)
        return str(media.write_video(frames, studio.new_output_dir("latent-walk") / "walk.gif", fps=16))

    walk_btn.click(on_walk, [network, walk_names, walk_loop, noise], walk_out, api_name="explore_walk")

    return {"network": network, "on_network": on_network,
            "load_outputs": [image, latency_md, current, base, found, source_md, source, saved, gallery, *sliders]}
