"""StyleGAN Studio dashboard: python app.py [--host 127.0.0.1] [--port 7860] [--workdir ./studio] [--share --auth u:p]
[--public-viewers | --viewer-auth u:p] [--publish NAME_OR_PATH]

Prepare datasets, train, watch and generate from the browser. Everything is kept in the workdir: datasets/,
runs/, outputs/, uploads/, published/. Training runs as `python -m engine train` subprocesses that outlive the page.
With viewers (--public-viewers, --viewer-auth) the demo page for visitors is served at / and the owner's dashboard,
behind --auth, at /studio/.
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
    v = p.add_argument_group("a demo link for visitors (they generate and explore the published networks only)")
    v.add_argument("--viewer-auth", action="append", default=[], metavar="USER:PASS",
                   help="a visitor's login (repeatable); the demo page is served at / and the dashboard at /studio/")
    v.add_argument("--public-viewers", action="store_true",
                   help="visitors need no login for the demo page; the owner still logs in (--auth) at /studio/")
    v.add_argument("--publish", default=None, metavar="NAME_OR_PATH",
                   help="publish this network on the demo page at start: a picker label, '<run folder> / "
                        "<snapshot file>', 'demo' or a .pt / .pkl file (the built-in demo is published by default)")
    v.add_argument("--publish-name", default=None, metavar="TEXT", help="the name visitors see for --publish")
    v.add_argument("--publish-description", default="", metavar="TEXT",
                   help="a short description visitors see for --publish")
    v.add_argument("--viewer-limits", default="", metavar="NAME=N,...",
                   help="what one visitor may ask for: seeds (per grid, default 16), frames (per GIF, 120), steps "
                        "(per projection, 200), per_minute (requests, 30), pending (waiting at once, 3)")
    args = p.parse_args(argv)
    if args.share and not args.auth and not args.share_no_auth:
        p.error("--share makes the dashboard public: add --auth user:pass (or --share-no-auth if you really mean it)")
    if args.auth is not None and (":" not in args.auth or not args.auth.split(":", 1)[0]
                                  or not args.auth.split(":", 1)[1]):
        p.error("--auth takes user:password, both non-empty")
    if args.max_upload_mb < 1:
        p.error("--max-upload-mb must be at least 1")
    for login in args.viewer_auth:
        if ":" not in login or not login.split(":", 1)[0] or not login.split(":", 1)[1]:
            p.error(f"--viewer-auth takes user:password, both non-empty (got {login.split(':', 1)[0]!r}...)")
        if args.auth and login.split(":", 1)[0] == args.auth.split(":", 1)[0]:
            p.error(f"--viewer-auth user {login.split(':', 1)[0]!r} is the owner's (--auth): give visitors "
                    "another name")
    if (args.viewer_auth or args.public_viewers) and not args.auth:
        p.error("a demo for viewers needs the owner's own login: add --auth user:pass (the owner's dashboard is "
                "then at /studio/)")
    if args.viewer_auth and args.public_viewers:
        p.error("--public-viewers lets every visitor in without a login: leave out --viewer-auth, or "
                "--public-viewers")
    if (args.publish_name or args.publish_description) and not args.publish:
        p.error("--publish-name and --publish-description describe --publish NAME_OR_PATH: add it")
    from ui.fairness import Limits

    try:
        args.limits = Limits.parse(args.viewer_limits)
    except Exception as e:
        p.error(f"--viewer-limits: {e}")
    if not 0 < args.port < 65536:
        p.error(f"--port {args.port} is not a port number (1-65535)")
    return args


def serve(studio, host="127.0.0.1", port=7860, auth=None, quiet=True, access=None):
    """Build the dashboard for `studio` and start serving it without blocking; returns the Blocks, or with viewers
    (access: a ui.roles.Access with viewers) a DemoServer serving the demo page at / and the dashboard at /studio/."""
    from starlette.middleware import Middleware

    from ui import roles
    from ui.common import ASSETS
    from ui.data_tab import remove_stale_uploads

    access = access or roles.Access(owner=tuple(auth) if auth else None)
    remove_stale_uploads(studio)
    _keep_session_components_bounded()
    demo = build_app(studio)
    roles.install(demo, access)
    css = (ASSETS / "style.css").read_text("utf-8") if (ASSETS / "style.css").is_file() else None
    # Several visitors generating at once wait their turn instead of competing for one device.
    demo.queue(default_concurrency_limit=1, max_size=64)
    if access.has_viewers:
        return _serve_with_viewers(studio, demo, access, host, port, css, quiet)
    demo.launch(server_name=host, server_port=port, auth=auth, share=False, css=css,
                app_kwargs={"middleware": [Middleware(FileGuard)]},
                allowed_paths=[str(studio.workdir), str(ASSETS)], max_file_size=f"{studio.max_upload_mb}mb",
                show_error=False, prevent_thread_lock=True, favicon_path=_favicon(), quiet=quiet)
    return demo


OWNER_PATH = "/studio"


class DemoServer:
    """One server for two apps: the demo page (`page`) at / and the owner's dashboard (`dashboard`) at /studio/.
    Offers what main() and the tests use of a launched Blocks (local_url, server_port, close(), block_thread())."""

    def __init__(self, page, dashboard, server, server_name, server_port, local_url):
        self.page, self.dashboard, self.server = page, dashboard, server
        self.server_name, self.server_port, self.local_url = server_name, server_port, local_url
        self.owner_url = local_url.rstrip("/") + OWNER_PATH + "/"
        self.share_token = dashboard.share_token
        self.auth = True  # the owner always logs in; visitors per --viewer-auth / --public-viewers
        self.share_url = None
        self.is_running = True

    def close(self):
        if not self.is_running:
            return
        self.is_running = False
        import shutil

        for blocks in (self.page, self.dashboard):
            try:
                blocks._queue.close()
                blocks.is_running = False
                app = getattr(blocks._queue, "server_app", None)
                if app is not None:
                    app.stop_event.set()  # open pages' heartbeats end now, so the server stops at once
            except AttributeError:
                pass
        self.server.close()
        scratch = getattr(self.page, "studio_scratch", None)
        if scratch:
            shutil.rmtree(scratch, ignore_errors=True)

    def block_thread(self):
        import time

        try:
            while self.is_running:
                time.sleep(0.1)
        except KeyboardInterrupt:
            self.close()


def _serve_with_viewers(studio, dashboard, access, host, port, css, quiet):
    """The demo page at / (no login with public viewers; else the viewers' logins and the owner's) and the
    dashboard at /studio/ (the owner's login only), both behind the role guard, in one server."""
    import secrets

    import gradio as gr
    from fastapi import FastAPI
    from gradio import http_server

    from ui import demo_page, roles
    from ui.common import ASSETS

    page = demo_page.build(studio, access)
    roles.install(page, access)
    # Visitors' jobs all reach the fair line at once; it, not gradio's first-come queue, decides whose turn it is.
    page.queue(default_concurrency_limit=64, max_size=256)
    if dashboard.share_token is None:
        dashboard.share_token = secrets.token_urlsafe(32)
    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(FileGuard)
    common = dict(server_name=host, server_port=port, show_error=False, css=css,
                  max_file_size=f"{studio.max_upload_mb}mb")
    gr.mount_gradio_app(app, dashboard, OWNER_PATH, auth=[tuple(access.owner)],
                        allowed_paths=[str(studio.workdir), str(ASSETS)], **common)
    # The demo page serves no file of the workdir: its pictures reach it as arrays, its GIFs from a temporary folder.
    gr.mount_gradio_app(app, page, "/", auth=access.demo_logins(), allowed_paths=[], favicon_path=_favicon(),
                        footer_links=["gradio"], **common)
    server_name, server_port, local_url, server = http_server.start_server(app, server_name=host, server_port=port)
    for blocks in (page, dashboard):
        blocks.server_name, blocks.server_port, blocks.local_url = server_name, server_port, local_url
    if not quiet:
        print(f"Running on {local_url}", flush=True)
    return DemoServer(page, dashboard, server, server_name, server_port, local_url)


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
    from ui import roles

    access = roles.Access(owner=auth, viewers=[tuple(v.split(":", 1)) for v in args.viewer_auth],
                          public=args.public_viewers, limits=args.limits)
    if args.publish and not _publish(studio, args):
        return 2
    demo = serve(studio, args.host, args.port, auth, access=access)
    base = f"http://{_show_host(args.host)}:{demo.server_port}"
    if access.has_viewers:
        who = "anyone" if access.public else f"{len(access.viewers)} viewer login(s)"
        print(f"StyleGAN Studio demo page on {base}/  ({who}); your dashboard on {base}{OWNER_PATH}/  "
              f"(workdir {studio.workdir})", flush=True)
    else:
        print(f"StyleGAN Studio on {base}  (workdir {studio.workdir})", flush=True)
    if args.share:
        _open_tunnel(demo)
    try:
        demo.block_thread()
    except KeyboardInterrupt:
        pass
    return 0


def _publish(studio, args) -> bool:
    """--publish at start: True when published, else one line saying why (and the app does not start)."""
    from engine.errors import UserError
    from ui import published

    try:
        entry = published.publish_path(studio, args.publish, args.publish_name, args.publish_description)
    except UserError as e:
        print(f"error: --publish: {e}", file=sys.stderr, flush=True)
        return False
    print(f"Published {entry['name']!r} on the demo page.", flush=True)
    return True


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
        if isinstance(demo, DemoServer):
            print(f"Public demo link: {url}  (your dashboard: {url.rstrip('/')}{OWNER_PATH}/, login required)",
                  flush=True)
        else:
            print(f"Public link: {url}  (login required)" if demo.auth else f"Public link: {url}", flush=True)
    except Exception as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        print(f"Could not make the public link ({reason}); the dashboard keeps serving locally.", flush=True)


if __name__ == "__main__":
    sys.exit(main())
