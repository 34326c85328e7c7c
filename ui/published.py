"""The networks the owner published for the demo page: a name and a short description the owner wrote, a frozen
copy of the network (the generator alone: no training state, no run details) and a sample grid, all kept in
<workdir>/published/ with index.json listing them. Until the owner publishes or unpublishes anything, the built-in
demo network is the one published.

panel(studio, network) adds the owner's Publish controls below the Generate tab's picker.
"""

from __future__ import annotations

import html
import json
import threading
from pathlib import Path

import gradio as gr

from engine.errors import UserError
from ui.common import Studio, friendly, safe_name

FOLDER = "published"
INDEX = "index.json"
DEMO_FILE = "demo"          # the index's name for the bundled demo network (never copied)
MAX_NAME = 60
MAX_DESCRIPTION = 300
SAMPLE_SEEDS = list(range(8))
DEMO_ENTRY = {"name": "Emoji", "description": "A small network trained on emoji faces; it comes with StyleGAN Studio.",
              "file": DEMO_FILE, "samples": "demo-samples.png"}

_lock = threading.Lock()


def folder(studio: Studio) -> Path:
    return studio.workdir / FOLDER


def _read(studio: Studio) -> "list[dict] | None":
    p = folder(studio) / INDEX
    if not p.is_file():
        return None
    try:
        data = json.loads(p.read_text("utf-8"))
        items = data.get("networks") if isinstance(data, dict) else None
        return [e for e in items if isinstance(e, dict) and isinstance(e.get("name"), str)] if isinstance(
            items, list) else []
    except (OSError, ValueError):
        return []


def _write(studio: Studio, items: list[dict]) -> None:
    from engine.fsutil import write_json_atomic

    folder(studio).mkdir(parents=True, exist_ok=True)
    write_json_atomic(folder(studio) / INDEX, {"networks": items})


def entries(studio: Studio) -> list[dict]:
    """The published networks, in the order the owner published them: {'name', 'description', 'file', 'samples'}
    ('file' and 'samples' relative to <workdir>/published/; 'file' may be 'demo'). Ones whose file is gone are left
    out."""
    items = _read(studio)
    if items is None:
        items = [dict(DEMO_ENTRY)] if studio.demo_network.is_file() else []
    return [e for e in items if network_file(studio, e) is not None]


def names(studio: Studio) -> list[str]:
    return [e["name"] for e in entries(studio)]


def find(studio: Studio, name) -> dict:
    for e in entries(studio):
        if e["name"] == name:
            return e
    raise UserError(f"no published network is called {str(name)[:MAX_NAME]!r}: reload the page for the list")


def network_file(studio: Studio, entry: dict) -> "Path | None":
    if entry.get("file") == DEMO_FILE:
        return studio.demo_network if studio.demo_network.is_file() else None
    p = (folder(studio) / str(entry.get("file", ""))).resolve()
    return p if p.is_file() and folder(studio).resolve() in p.parents else None


def samples_file(studio: Studio, entry: dict) -> "Path | None":
    """The entry's sample grid, drawn now when it is missing (the demo's, the first time it is shown)."""
    name = safe_name(entry.get("samples") or "", "")
    if not name:
        return None
    p = folder(studio) / name
    if not p.is_file():
        try:
            _draw_samples(studio, network_file(studio, entry), p)
        except Exception:  # the page shows the rest; the owner's terminal says why
            import logging

            logging.getLogger("studio").exception("could not draw the sample grid of %s", entry.get("name"))
            return None
    return p


def _draw_samples(studio: Studio, path, dest: Path) -> None:
    from engine.generate import generate_images
    from engine.media import make_grid, save_image
    from ui.networks import load_file

    G = load_file(studio, path)["G_ema"]
    images = generate_images(G, SAMPLE_SEEDS, psi=0.7, class_idx=0 if G.c_dim else None)
    dest.parent.mkdir(parents=True, exist_ok=True)
    save_image(make_grid(images, 4, 2), dest)


def check_text(name, description) -> tuple[str, str]:
    name = " ".join(str(name or "").split())
    description = " ".join(str(description or "").split())
    if not name:
        raise UserError("give the network a name visitors will see, e.g. Cats")
    if len(name) > MAX_NAME:
        raise UserError(f"the name is {len(name)} characters long; at most {MAX_NAME}")
    if len(description) > MAX_DESCRIPTION:
        raise UserError(f"the description is {len(description)} characters long; at most {MAX_DESCRIPTION}")
    return name, description


def publish(studio: Studio, path, name, description="", replace: bool = False) -> dict:
    """Publish the network in `path` (inside the workdir, or the demo) as `name`. Its generator is copied, so the
    run may go on training or be deleted and the demo stays what was published. A name already published is
    refused unless replace (the command line's --publish, given again at each start)."""
    from engine.checkpoint import pack_network, save_snapshot
    from ui.networks import load_file

    name, description = check_text(name, description)
    path = studio.inside(path, "network")
    with _lock:
        items = _read(studio)
        items = [dict(DEMO_ENTRY)] if items is None and studio.demo_network.is_file() else (items or [])
        if any(e["name"] == name for e in items) and not replace:
            raise UserError(f"a network called {name!r} is already published: choose another name, or unpublish "
                            "that one first")
        G = load_file(studio, path)["G_ema"]
        stem = safe_name(name, "network")
        taken = {e.get("file") for e in items if e["name"] != name} | {e.get("samples") for e in items
                                                                          if e["name"] != name}
        i = 1
        base = stem
        while f"{stem}.pt" in taken or f"{stem}.png" in taken:
            i += 1
            stem = f"{base}-{i}"
        folder(studio).mkdir(parents=True, exist_ok=True)
        if path == studio.demo_network.resolve():
            file = DEMO_FILE
        else:
            file = f"{stem}.pt"
            save_snapshot(folder(studio) / file, {"format": "stylegan-studio", "version": 1,
                                                  "G_ema": pack_network(G)})
        _draw_samples(studio, path, folder(studio) / f"{stem}.png")
        entry = {"name": name, "description": description, "file": file, "samples": f"{stem}.png"}
        items = [e for e in items if e["name"] != name] + [entry]
        _write(studio, items)
    return entry


def unpublish(studio: Studio, name) -> None:
    """Take `name` off the demo page (its copy and sample grid are removed; the owner's own files stay)."""
    with _lock:
        items = _read(studio)
        items = [dict(DEMO_ENTRY)] if items is None and studio.demo_network.is_file() else (items or [])
        gone = [e for e in items if e["name"] == name]
        if not gone:
            raise UserError(f"{str(name)[:MAX_NAME]!r} is not published")
        _write(studio, [e for e in items if e["name"] != name])
    for e in gone:
        for part in (e.get("file"), e.get("samples")):
            if part and part != DEMO_FILE:
                p = folder(studio) / safe_name(part, "")
                if p.is_file():
                    p.unlink()


def resolve(studio: Studio, name_or_path) -> Path:
    """A picker label or a run's '<run folder> / <snapshot>' name, 'demo', or a network file -> its file."""
    from engine.runs import is_network_file
    from ui.networks import network_choices

    text = str(name_or_path or "").strip()
    if not text:
        raise UserError("--publish needs a network: a picker label, '<run folder> / <snapshot file>' or a file")
    if text.lower() == "demo":
        return studio.demo_network
    choices = network_choices(studio, aliases=True)
    if text in choices:
        return Path(choices[text])
    p = Path(text).expanduser()
    if not p.is_absolute() and not p.exists():
        p = studio.workdir / text
    if p.is_file() and is_network_file(p):
        return p.resolve()
    raise UserError(f"network not found: {text} (give a picker label, '<run folder> / <snapshot file>', 'demo' "
                    "or a .pt / .pkl file)")


def publish_path(studio: Studio, name_or_path, name=None, description="") -> dict:
    """The command line's --publish: a network from outside the workdir is copied into uploads/networks/ first."""
    import shutil

    src = resolve(studio, name_or_path)
    if src.resolve() != studio.demo_network.resolve():
        try:
            studio.inside(src)
        except UserError:
            dest = studio.uploads_dir / "networks" / f"{safe_name(src.stem, 'network')}{src.suffix.lower()}"
            dest.parent.mkdir(parents=True, exist_ok=True)
            if not dest.exists():
                shutil.copyfile(src, dest)
            src = dest
    return publish(studio, src, name or default_name(src), description, replace=True)


def default_name(path: Path) -> str:
    """A visitor-facing name for a file: its run's dataset name ('00003-cats-tiny' -> 'cats'), else its stem."""
    import re

    m = re.fullmatch(r"\d{5}-(.+?)(?:-(?:tiny|auto|stylegan2|paper\d+|cifar|small)\b.*)?", path.parent.name)
    return (m.group(1) if m else path.stem)[:MAX_NAME] or "network"


# ---------------------------------------------------------------------------------------------- the owner's panel


def panel(studio: Studio, network) -> dict:
    """'Publish on the demo page' below the Generate tab's picker `network` (a Dropdown of labels)."""
    with gr.Accordion("Publish on the demo page", open=False, elem_id="publish"):
        gr.Markdown("Visitors of the demo link (`--public-viewers` or `--viewer-auth`) see the published networks "
                    "only: the name and description below and sample grids, never files or runs.")
        with gr.Row():
            title = gr.Textbox(label="Name visitors see", max_length=MAX_NAME, elem_id="publish-name", scale=2)
            about = gr.Textbox(label="Short description", max_length=MAX_DESCRIPTION, elem_id="publish-description",
                               scale=4)
            publish_btn = gr.Button("Publish the picked network", elem_id="publish-btn", scale=1)
        with gr.Row():
            listed = gr.Dropdown(names(studio), value=None, label="Published", elem_id="publish-list", scale=4)
            unpublish_btn = gr.Button("Unpublish", size="sm", elem_id="unpublish-btn", scale=1)
        status = gr.Markdown(elem_id="publish-status")

    @friendly
    def do_publish(label, name_v, about_v):
        from ui.networks import network_choices

        if not label:
            raise UserError("no network picked: choose one in the list above")
        path = network_choices(studio, aliases=True).get(label)
        if path is None:
            raise UserError(f"network not found: {label}; press Refresh list")
        entry = publish(studio, path, name_v, about_v)
        return (f"Published **{html.escape(entry['name'])}**: visitors see it on the demo page.",
                gr.update(choices=names(studio), value=entry["name"]))

    @friendly
    def do_unpublish(name_v):
        if not name_v:
            raise UserError("choose a published network to take off the demo page")
        unpublish(studio, name_v)
        return f"{html.escape(str(name_v))} is no longer on the demo page.", gr.update(choices=names(studio),
                                                                                        value=None)

    publish_btn.click(do_publish, [network, title, about], [status, listed], api_name="publish")
    unpublish_btn.click(do_unpublish, listed, [status, listed], api_name="unpublish")
    return {"listed": listed}
