"""StyleGAN Studio dashboard: python app.py [--host 127.0.0.1] [--port 7860] [--workdir ./studio] [--share --auth u:p]

Prepare datasets, train, watch and generate from the browser. Everything is kept in the workdir: datasets/,
runs/, outputs/, uploads/. Training runs as `python -m engine train` subprocesses that outlive the page.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def build_app(studio, sup=None):
    """The Gradio Blocks of the dashboard for `studio` (a ui.common.Studio)."""
    import gradio as gr

    from ui import data_tab, explore_tab, generate_tab, guide, system_tab, train_tab
    from ui.supervisor import Supervisor

    sup = sup or Supervisor(studio.workdir)
    speed = ""
    for v in sup.runs():
        if v.sec_per_kimg:
            speed = f"Your run {v.name} went at {float(v.sec_per_kimg):.1f} s per kimg."
            break
    # Gradio's own copies of uploads are purged after a day (checked hourly): what is kept is copied to the workdir.
    with gr.Blocks(title="StyleGAN Studio", analytics_enabled=False, delete_cache=(3600, 86400)) as demo:
        with gr.Row(elem_id="studio-header"):
            gr.HTML("<div class='studio-title'><img src='" + _logo_data_url() +
                    "' alt='' class='studio-logo'/><span>StyleGAN Studio</span></div>"
                    + ("<span class='studio-badge'>shared</span>" if studio.shared else ""))
        with gr.Accordion("Getting started", open=not guide.has_history(studio), elem_id="guide") as guide_box:
            gr.Markdown(guide.guide_markdown(studio, speed))
        guide_folded = gr.State(False)
        with gr.Tabs(selected="generate", elem_id="tabs") as tabs:
            with gr.Tab("Data", id="data", elem_id="tab-data") as t_data:
                data = data_tab.build(studio)
            with gr.Tab("Train", id="train", elem_id="tab-train") as t_train:
                train = train_tab.build(studio, sup)
            with gr.Tab("Generate", id="generate", elem_id="tab-generate") as t_gen:
                gen = generate_tab.build(studio)
            with gr.Tab("Explore", id="explore", elem_id="tab-explore"):
                explore = explore_tab.build(studio)
            with gr.Tab("System", id="system", elem_id="tab-system") as t_sys:
                system = system_tab.build(studio, sup)
        # Lists that another tab may have changed are refreshed when their tab is opened.
        t_data.select(data["refresh"], None, data["refresh_outputs"], api_name=False)
        t_train.select(train["refresh"], train["refresh_inputs"], train["outputs"], api_name=False).then(
            train["watch"], train["watch_inputs"], train["watch_outputs"], api_name=False)
        t_gen.select(gen["on_tab"], gen["tab_inputs"], gen["load_outputs"], api_name=False).then(
            gen["on_saved"], gen["saved_inputs"], gen["saved_outputs"], api_name=False)
        t_sys.select(system["refresh"], None, system["markdown"], api_name=False)
        # The guide folds itself once there is a dataset and a run (at a page load, or on the next tab change).
        for tab in (t_data, t_train, t_gen, t_sys):
            tab.select(lambda f: guide.fold_once(studio, f), guide_folded, [guide_box, guide_folded], api_name=False)
        demo.load(lambda f: guide.fold_once(studio, f), guide_folded, [guide_box, guide_folded], api_name=False)
        demo.load(explore["on_network"], explore["network"], explore["load_outputs"], api_name=False)
        demo.load(gen["on_load"], None, gen["load_outputs"], api_name=False).then(
            gen["on_network"], gen["network"], [gen["info"], gen["class_idx"]], api_name=False).then(
            gen["on_saved"], gen["saved_inputs"], gen["saved_outputs"], api_name=False)
        # A reloaded page shows the watched run's settings, so Resume and Start act on what the user sees.
        demo.load(train["fill"], train["fill_inputs"], train["fill_outputs"], api_name=False)
    demo._studio_tabs = tabs
    return demo


def _logo_data_url() -> str:
    # Inlined so that the page (and /config) never carries the app's folder in a file URL.
    import base64

    p = ROOT / "assets" / "logo.svg"
    data = p.read_bytes() if p.is_file() else b""
    return "data:image/svg+xml;base64," + base64.b64encode(data).decode("ascii")


# Types a browser would run or render as a page of this origin: a file of the workdir is never served as one.
_ACTIVE_TYPES = ("text/html", "image/svg", "application/xhtml", "text/xml", "application/xml", "text/javascript",
                 "application/javascript", "application/x-javascript", "application/ecmascript", "text/ecmascript",
                 "application/wasm", "text/vtt", "application/pdf", "multipart/", "text/xsl")


class FileGuard:
    """ASGI middleware for gradio's file routes (/file=..., /file/...).

    Everything served from them may come from a visitor (uploads, datasets, outputs), so each response says
    `nosniff` and carries a sandboxing Content-Security-Policy; one whose type a browser would render as an active
    document (SVG, HTML, XML, scripts) is sent as an attachment of type application/octet-stream instead.
    """

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope.get("type") != "http" or not _is_file_route(scope.get("path", "")):
            return await self.app(scope, receive, send)

        async def guarded_send(message):
            if message.get("type") == "http.response.start":
                message = dict(message)
                message["headers"] = _guard_headers(list(message.get("headers") or []))
            await send(message)

        return await self.app(scope, receive, guarded_send)


def _is_file_route(path: str) -> bool:
    return "/file=" in path or "/file/" in path


def _guard_headers(headers):
    drop = {b"x-content-type-options", b"content-security-policy"}
    ctype = b""
    for k, v in headers:
        if k.lower() == b"content-type":
            ctype = v.lower()
    active = any(ctype.startswith(t.encode()) for t in _ACTIVE_TYPES) or b"xml" in ctype or b"script" in ctype
    if active:
        drop |= {b"content-type", b"content-disposition"}
    out = [(k, v) for k, v in headers if k.lower() not in drop]
    out.append((b"x-content-type-options", b"nosniff"))
    out.append((b"content-security-policy", b"sandbox; default-src 'none'; img-src 'self' data:; media-src 'self'"))
    if active:
        out.append((b"content-type", b"application/octet-stream"))
        out.append((b"content-disposition", b"attachment"))
    return out


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python app.py", description="StyleGAN Studio dashboard")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1: this machine only); another address without "
                        "--auth runs in shared mode (no server folders, nothing outside the workdir)")
    p.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    p.add_argument("--workdir", default="./studio", help="folder for datasets, runs and outputs (default ./studio)")
    p.add_argument("--share", action="store_true", help="also make a public gradio.live link (needs --auth)")
    p.add_argument("--auth", default=None, metavar="USER:PASS", help="require this login")
    p.add_argument("--share-no-auth", action="store_true", help="allow --share without a login (anyone can use it)")
    p.add_argument("--max-upload-mb", type=int, default=500, help="largest upload accepted, in MB (default 500)")
    args = p.parse_args(argv)
    if args.share and not args.auth and not args.share_no_auth:
        p.error("--share makes the dashboard public: add --auth user:pass (or --share-no-auth if you really mean it)")
    if args.auth is not None and (":" not in args.auth or not args.auth.split(":", 1)[0]
                                  or not args.auth.split(":", 1)[1]):
        p.error("--auth takes user:password, both non-empty")
    if args.max_upload_mb < 1:
        p.error("--max-upload-mb must be at least 1")
    if not 0 < args.port < 65536:
        p.error(f"--port {args.port} is not a port number (1-65535)")
    return args


def serve(studio, host="127.0.0.1", port=7860, auth=None, quiet=True):
    """Build the dashboard for `studio` and start serving it without blocking; returns the Blocks."""
    from starlette.middleware import Middleware

    from ui.common import ASSETS
    from ui.data_tab import remove_stale_uploads

    remove_stale_uploads(studio)
    _keep_session_components_bounded()
    demo = build_app(studio)
    css = (ASSETS / "style.css").read_text("utf-8") if (ASSETS / "style.css").is_file() else None
    # Several visitors generating at once wait their turn instead of competing for one device.
    demo.queue(default_concurrency_limit=1, max_size=64)
    demo.launch(server_name=host, server_port=port, auth=auth, share=False, css=css,
                app_kwargs={"middleware": [Middleware(FileGuard)]},
                allowed_paths=[str(studio.workdir), str(ASSETS)], max_file_size=f"{studio.max_upload_mb}mb",
                show_error=False, prevent_thread_lock=True, favicon_path=_favicon(), quiet=quiet)
    return demo


def _keep_session_components_bounded() -> None:
    """Keep a page's stored components to one per component, however often its events run.

    An event that changes a component's properties (gr.update(maximum=..., choices=...)) makes gradio build a new
    component and store it in the page's session under the original's id, but the new one carries an id of its
    own; the next event that reads the component as an input then stores it a second time under that new id.
    Each Train-tab poll (every 3 s, the grid slider) and each network-list refresh so kept one more component
    (about 5 KB) for as long as the session lived: some 6 MB an hour per open Train tab. Giving the new component
    the id it is stored under, as gradio's own re-rendered components have, keeps one per component.
    """
    try:
        from gradio.blocks import Block
        from gradio.state_holder import SessionState
    except ImportError:
        return
    store = SessionState.__setitem__
    if getattr(store, "_keeps_ids", False):
        return

    def setitem(self, key, value):
        if isinstance(value, Block) and getattr(value, "_id", key) != key and key in self.blocks_config.blocks:
            value._id = key
        store(self, key, value)

    setitem._keeps_ids = True
    SessionState.__setitem__ = setitem


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    from ui.common import Studio

    # A visitor of a public link is a stranger: the same rules apply on a LAN address without a login.
    exposed = args.share or (args.host not in ("127.0.0.1", "localhost", "::1") and not args.auth)
    studio = Studio(Path(args.workdir), shared=exposed, max_upload_mb=args.max_upload_mb)
    auth = tuple(args.auth.split(":", 1)) if args.auth else None
    demo = serve(studio, args.host, args.port, auth)
    print(f"StyleGAN Studio on http://{_show_host(args.host)}:{demo.server_port}  (workdir {studio.workdir})",
          flush=True)
    if args.share:
        _open_tunnel(demo)
    try:
        demo.block_thread()
    except KeyboardInterrupt:
        pass
    return 0


def _show_host(host: str) -> str:
    return "127.0.0.1" if host in ("0.0.0.0", "::") else host


def _favicon():
    p = ROOT / "assets" / "logo.svg"
    return str(p) if p.is_file() else None


def _open_tunnel(demo) -> None:
    """Make the public link; without internet say so in one line and keep serving locally."""
    from gradio import networking

    try:
        url = networking.setup_tunnel(local_host=demo.server_name, local_port=demo.server_port,
                                      share_token=demo.share_token, share_server_address=None,
                                      share_server_tls_certificate=None)
        demo.share_url = url
        print(f"Public link: {url}  (login required)" if demo.auth else f"Public link: {url}", flush=True)
    except Exception as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        print(f"Could not make the public link ({reason}); the dashboard keeps serving locally.", flush=True)


if __name__ == "__main__":
    sys.exit(main())
