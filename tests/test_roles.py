"""Owner and viewers: the role table, the guard in front of every event, the fair line, the published networks, and
the role matrix over HTTP (owner, viewer, no login; a local and a shared studio), endpoint by endpoint."""

import asyncio
import json
import secrets
import shutil
import socket
import tempfile
from pathlib import Path

import gradio as gr
import httpx
import pytest

from engine.errors import UserError
from ui import published, roles
from ui.common import ROOT, Studio
from ui.fairness import FairGate, Limits, RateWindow, visitor_key

OWNER = ("owner", "owner-pass")
VIEWER = ("guest", "guest-pass")
# Every event of the demo page, by name; a new one must be added here on purpose (and marked for viewers).
DEMO_API = {"demo_network", "demo_networks", "demo_generate", "demo_gif", "demo_live", "demo_project"}


class FakeRequest:
    def __init__(self, username=None, host="127.0.0.1", session_hash="s1", headers=None):
        self.username = username
        self.client = type("C", (), {"host": host})()
        self.session_hash = session_hash
        self.headers = headers or {}


# ---------------------------------------------------------------------------------------------- fast


def test_role_table():
    local = roles.Access()
    assert local.role(None) == roles.OWNER  # 127.0.0.1 without a login: whoever is there owns it
    owner_only = roles.Access(owner=OWNER)
    assert owner_only.role("owner") == roles.OWNER and owner_only.role(None) is None
    assert owner_only.role("guest") is None and not owner_only.has_viewers
    with_viewers = roles.Access(owner=OWNER, viewers=[VIEWER])
    assert with_viewers.role("guest") == roles.VIEWER and with_viewers.role("owner") == roles.OWNER
    assert with_viewers.role(None) is None and with_viewers.role("stranger") is None
    assert with_viewers.demo_logins() == [VIEWER, OWNER]
    public = roles.Access(owner=OWNER, public=True)
    assert public.role(None) == roles.VIEWER and public.role("owner") == roles.OWNER
    assert public.demo_logins() is None


def test_limits_parse():
    assert Limits.parse("") == Limits()
    assert Limits.parse("seeds=4, per-minute=9") == Limits(seeds=4, per_minute=9)
    with pytest.raises(UserError, match="NAME=NUMBER"):
        Limits.parse("colour=3")
    with pytest.raises(UserError, match="seeds='x'"):
        Limits.parse("seeds=x")
    with pytest.raises(UserError, match="at least 1"):
        Limits.parse("steps=0")


def test_parse_args_viewer_flags(capsys):
    import app

    args = app.parse_args(["--auth", "o:p", "--public-viewers", "--viewer-limits", "seeds=8"])
    assert args.public_viewers and args.limits.seeds == 8
    args = app.parse_args(["--auth", "o:p", "--viewer-auth", "a:1", "--viewer-auth", "b:2"])
    assert args.viewer_auth == ["a:1", "b:2"]
    for bad, said in ((["--public-viewers"], "needs the owner's own login"),
                      (["--auth", "o:p", "--viewer-auth", "o:x"], "is the owner's"),
                      (["--auth", "o:p", "--viewer-auth", "guest"], "user:password"),
                      (["--auth", "o:p", "--viewer-auth", "a:1", "--public-viewers"], "leave out"),
                      (["--auth", "o:p", "--public-viewers", "--viewer-limits", "seeds=-1"], "at least 1"),
                      (["--publish-name", "Cats"], "add it")):
        with pytest.raises(SystemExit):
            app.parse_args(bad)
        assert said in capsys.readouterr().err


def test_visitor_key():
    assert visitor_key(FakeRequest(host="203.0.113.5")) == "ip:203.0.113.5"
    # A forwarded address counts from a local proxy only (the share tunnel); from anyone else it is ignored.
    assert visitor_key(FakeRequest(headers={"x-forwarded-for": "1.2.3.4, 198.51.100.7"})) == "ip:198.51.100.7"
    assert visitor_key(FakeRequest(host="203.0.113.5", headers={"x-forwarded-for": "9.9.9.9"})) == "ip:203.0.113.5"
    assert visitor_key(FakeRequest(session_hash="abc")) == "page:abc"


def test_rate_window():
    r = RateWindow()
    for i in range(3):
        r.take("a", 3, now=100.0 + i)
    with pytest.raises(UserError, match=r"more than 3 requests a minute.*try again in 57 s"):
        r.take("a", 3, now=103.0)
    r.take("b", 3, now=103.0)  # another visitor has their own
    r.take("a", 3, cost=0, now=103.0)  # what costs nothing always passes
    r.take("a", 3, now=160.5)  # the first went out of the window


def test_fair_gate_takes_visitors_in_turn_and_the_owner_first():
    gate = FairGate()
    order = []

    async def job(key, tag, hold=0.02, pending=10):
        async with gate.visitor(key, pending):
            order.append(tag)
            await asyncio.sleep(hold)

    async def owner_job():
        async with gate.owner():
            order.append("owner")
            await asyncio.sleep(0.05)

    async def refused():
        hold = asyncio.create_task(job("z", "z0", hold=0.05))
        await asyncio.sleep(0.005)
        with pytest.raises(UserError, match="already have 1 requests waiting"):
            await job("z", "z1", pending=1)
        await hold

    async def run():
        tasks = [asyncio.create_task(job("a", f"a{i}")) for i in range(4)]
        await asyncio.sleep(0.005)
        tasks += [asyncio.create_task(job("b", "b0")), asyncio.create_task(job("c", "c0"))]
        await asyncio.sleep(0.005)
        tasks.append(asyncio.create_task(owner_job()))
        await asyncio.gather(*tasks)
        await refused()

    asyncio.run(run())
    assert order[:2] == ["a0", "owner"]  # the owner does not wait behind visitors
    # then in turn: the visitors not yet served before the greedy one's second request
    assert order[2:] == ["b0", "c0", "a1", "a2", "a3", "z0"]
    assert gate.waiting() == 0 and gate._busy == 0 and gate._pending == {}


def test_fair_gate_cancelled_waiter_gives_its_turn_back():
    gate = FairGate()
    order = []

    async def job(key, hold):
        async with gate.visitor(key, 5):
            order.append(key)
            await asyncio.sleep(hold)

    async def run():
        first = asyncio.create_task(job("a", 0.05))
        await asyncio.sleep(0.005)
        gone = asyncio.create_task(job("b", 0))
        later = asyncio.create_task(job("c", 0))
        await asyncio.sleep(0.005)
        gone.cancel()  # the visitor closed the page
        await asyncio.gather(first, later, return_exceptions=True)

    asyncio.run(run())
    assert order == ["a", "c"] and gate._busy == 0 and gate._pending == {}


def _tiny_blocks(access):
    with gr.Blocks() as blocks:
        box = gr.Textbox()
        out = gr.Textbox()
        roles.for_viewers(gr.Button("open").click(lambda x: "open:" + x, box, out, api_name="open"))
        gr.Button("owner").click(lambda x: "owner:" + x, box, out, api_name="owner_only")
        roles.for_viewers(gr.Button("dev").click(lambda x: "dev:" + x, box, out, api_name="dev"), device=True)
    roles.install(blocks, access)
    return blocks


def test_guard_refuses_every_unmarked_event_to_viewers():
    access = roles.Access(owner=OWNER, public=True, limits=Limits(per_minute=2))
    blocks = _tiny_blocks(access)
    by_name = {fn.api_name: fn for fn in blocks.fns.values()}

    def call(name, username=None, session="s"):
        out = asyncio.run(blocks.process_api(by_name[name], ["x"], None, FakeRequest(username, session_hash=session)))
        return out["data"][0]

    assert call("open") == "open:x"
    with pytest.raises(gr.Error, match="for the owner of this studio"):
        call("owner_only")
    assert call("owner_only", "owner") == "owner:x"
    with pytest.raises(gr.Error, match="log in"):
        call("owner_only", "someone-else")  # an unknown login is no owner
    assert call("dev") == "dev:x" and call("dev") == "dev:x"
    with pytest.raises(gr.Error, match="more than 2 requests a minute"):
        call("dev")  # device work counts towards the visitor's limit
    assert call("dev", session="other") == "dev:x"
    assert call("dev", "owner") == "dev:x"  # the owner has no limits
    assert [e["for_viewers"] for e in roles.endpoints(blocks)] == [True, False, True]
    viewers_only = roles.Access(owner=OWNER, viewers=[VIEWER])
    blocks.studio_access = viewers_only
    with pytest.raises(gr.Error, match="log in first"):
        call("open")  # no login where viewers must log in


@pytest.mark.slow
def test_publish_and_unpublish(tmp_path):
    studio = Studio(tmp_path / "studio")
    assert published.names(studio) == ["Emoji"]  # the demo, until the owner decides
    entry = published.publish(studio, studio.demo_network, "  Emoji   again ", "Faces,\n made of dots")
    assert entry["name"] == "Emoji again" and entry["description"] == "Faces, made of dots"
    assert published.names(studio) == ["Emoji", "Emoji again"]
    assert published.samples_file(studio, entry).is_file()
    with pytest.raises(UserError, match="already published"):
        published.publish(studio, studio.demo_network, "Emoji again")
    with pytest.raises(UserError, match="give the network a name"):
        published.publish(studio, studio.demo_network, " ")
    with pytest.raises(UserError, match="at most 300"):
        published.publish(studio, studio.demo_network, "x", "y" * 301)
    with pytest.raises(UserError, match="outside the studio folder"):
        published.publish(studio, tmp_path / "elsewhere.pt", "x")
    published.unpublish(studio, "Emoji")
    assert published.names(studio) == ["Emoji again"]
    with pytest.raises(UserError, match="is not published"):
        published.unpublish(studio, "Emoji")
    index = json.loads((published.folder(studio) / "index.json").read_text())
    assert str(studio.workdir) not in json.dumps(index)  # names relative to published/ only


# ---------------------------------------------------------------------------------------------- over HTTP


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Session:
    """One browser's worth of HTTP: its cookies (a login, or none) and a page session."""

    def __init__(self, base, login=None):
        self.base = base.rstrip("/")
        self.http = httpx.Client(timeout=60)
        self.hash = secrets.token_hex(8)
        self.logged_in = False
        if login:
            r = self.http.post(f"{self.base}/login", data={"username": login[0], "password": login[1]})
            assert r.status_code in (200, 400), r.text  # 400: a login this app does not take
            self.logged_in = r.status_code == 200

    def run(self, calls):
        """[(fn_index, data)] -> {fn_index: (ok, error message)}; every call joins the queue at once.
        A call the server does not let in at all (no login) is (False, 'HTTP 401')."""
        results, waiting = {}, {}
        for fn_index, data in calls:
            r = self.http.post(f"{self.base}/gradio_api/queue/join",
                               json={"data": data, "fn_index": fn_index, "session_hash": self.hash,
                                     "event_data": None, "trigger_id": None, "username": OWNER[0]})
            if r.status_code != 200:
                results[fn_index] = (False, f"HTTP {r.status_code}")
            else:
                waiting[r.json()["event_id"]] = fn_index
        if waiting:
            with self.http.stream("GET", f"{self.base}/gradio_api/queue/data",
                                  params={"session_hash": self.hash}) as stream:
                for line in stream.iter_lines():
                    if not line.startswith("data:"):
                        continue
                    msg = json.loads(line[5:])
                    if msg.get("msg") == "process_completed" and msg.get("event_id") in waiting:
                        out = msg.get("output") or {}
                        results[waiting.pop(msg["event_id"])] = (bool(msg.get("success")), str(out.get("error")))
                        if not waiting:
                            break
        return results


def _inputs(blocks, fn_index):
    return [None] * len(blocks.fns[fn_index].inputs)


def _serve(shared, access):
    import app as studio_app

    work = Path(tempfile.mkdtemp(prefix="studio-roles-test-")) / "studio"
    studio = Studio(work, shared=shared)
    server = studio_app.serve(studio, "127.0.0.1", _free_port(), access.owner, access=access)
    return studio, server


@pytest.fixture(scope="module", params=[False, True], ids=["local", "shared"])
def with_viewers(request):
    """A studio with a viewer login (local) or public viewers (shared), and small visitor limits."""
    shared = request.param
    limits = Limits(seeds=4, frames=20, steps=20, per_minute=8, pending=3)
    access = roles.Access(owner=OWNER, viewers=[] if shared else [VIEWER], public=shared, limits=limits)
    studio, server = _serve(shared, access)
    yield studio, server, access
    server.close()
    shutil.rmtree(studio.workdir.parent, ignore_errors=True)


def _all_calls(blocks):
    return [(i, _inputs(blocks, i)) for i in sorted(blocks.fns)]


@pytest.mark.slow
def test_role_matrix_every_endpoint(with_viewers):
    studio, server, access = with_viewers
    page, dashboard = server.page, server.dashboard
    demo_url, owner_url = server.local_url, server.owner_url
    viewer_login = None if access.public else VIEWER

    # The dashboard: a viewer's login does not open it, and every endpoint, named or not, refuses a viewer and a
    # visitor without a login...
    assert not Session(owner_url, VIEWER).logged_in
    for who in (viewer_login, None):
        res = Session(owner_url, who).run(_all_calls(dashboard))
        assert len(res) == len(dashboard.fns) > 60
        assert all(not ok for ok, _ in res.values()), [dashboard.fns[i].api_name for i, (ok, _) in res.items() if ok]
    # ...and serves the owner.
    owner = Session(owner_url, OWNER)
    by_name = {fn.api_name: i for i, fn in dashboard.fns.items()}
    res = owner.run([(by_name["system"], []), (by_name["random_seeds"], [])])
    assert all(ok for ok, _ in res.values()), res

    # The demo page: what is marked for viewers is the allow-list, and nothing else is on it.
    marked = {e["api_name"] for e in roles.endpoints(page) if e["for_viewers"] and not e["api_name"].startswith(
        "false")}
    assert marked == DEMO_API
    assert all(e["for_viewers"] for e in roles.endpoints(page))
    viewer = Session(demo_url, viewer_login)
    res = viewer.run(_all_calls(page))
    assert all(roles.REFUSED not in err and "log in" not in err for _, err in res.values()), res
    if not access.public:
        res = Session(demo_url, None).run(_all_calls(page))
        assert all(err == "HTTP 401" for _, err in res.values()), res


@pytest.mark.slow
def test_the_guard_alone_refuses_viewers_every_dashboard_endpoint(tmp_path):
    """The dashboard with the viewer's login let in at the door: the guard alone refuses each endpoint, whatever
    the request says (its body names the owner)."""
    import app as studio_app

    access = roles.Access(owner=OWNER, viewers=[VIEWER])
    studio = Studio(tmp_path / "studio")
    demo = studio_app.build_app(studio)
    roles.install(demo, access)
    demo.queue(default_concurrency_limit=1)
    demo.launch(server_name="127.0.0.1", server_port=_free_port(), auth=[OWNER, VIEWER], prevent_thread_lock=True,
                quiet=True, show_error=False)
    try:
        res = Session(demo.local_url, VIEWER).run(_all_calls(demo))
        assert len(res) == len(demo.fns)
        refused = {i for i, (ok, err) in res.items() if not ok and roles.REFUSED in err}
        assert refused == set(demo.fns), [demo.fns[i].api_name for i in set(demo.fns) - refused]
        assert not (studio.datasets_dir.exists() and any(studio.datasets_dir.iterdir()))
    finally:
        demo.close()


@pytest.mark.slow
def test_viewer_limits_and_no_server_paths(with_viewers):
    from gradio_client import Client

    studio, server, access = with_viewers
    auth = None if access.public else VIEWER
    viewer = Client(server.local_url, auth=auth, verbose=False, download_files=False)
    gallery = viewer.predict("Emoji", "0-3", 0.7, None, api_name="/demo_generate")
    assert [g["caption"] for g in gallery] == [f"seed {i}" for i in range(4)]
    with pytest.raises(Exception, match="at most 4"):
        viewer.predict("Emoji", "0-4", 0.7, None, api_name="/demo_generate")
    with pytest.raises(Exception, match="24 frames is more than the 20"):
        viewer.predict("Emoji", "0-3", 6, 0.7, None, api_name="/demo_gif")
    with pytest.raises(Exception, match="no published network is called"):
        viewer.predict(str(studio.workdir / "runs"), "0", 0.7, None, api_name="/demo_generate")
    # The page, its settings and its answers carry no folder of the server.
    http = httpx.Client(timeout=30)
    if auth:
        http.post(f"{server.local_url}login", data={"username": auth[0], "password": auth[1]})
    for text in (http.get(server.local_url).text, http.get(f"{server.local_url}config").text, json.dumps(gallery)):
        assert str(studio.workdir) not in text and str(ROOT) not in text
    # Requests a minute: this client has made 4 (errors included); 8 is the most.
    for _ in range(4):
        viewer.predict("Emoji", "1", 0.7, None, api_name="/demo_generate")
    with pytest.raises(Exception, match="more than 8 requests a minute"):
        viewer.predict("Emoji", "1", 0.7, None, api_name="/demo_generate")
    # The owner, logged in on the demo page where viewers log in too, has the dashboard's limits.
    if not access.public:
        owner = Client(server.local_url, auth=OWNER, verbose=False, download_files=False)
        assert len(owner.predict("Emoji", "0-9", 0.7, None, api_name="/demo_generate")) == 10


@pytest.mark.slow
def test_owner_publishes_and_viewers_see_it(with_viewers):
    from gradio_client import Client

    studio, server, access = with_viewers
    owner = Client(server.owner_url, auth=OWNER, verbose=False, download_files=False)
    name = f"Faces {'shared' if access.public else 'local'}"
    status, listed = owner.predict(published.DEMO_ENTRY["name"] and "Demo: emoji (built in)", name,
                                   "Emoji faces at 32 px", api_name="/publish")
    assert "Published" in status
    viewer = Client(server.local_url, auth=None if access.public else VIEWER, verbose=False, download_files=False)
    about = viewer.predict(name, api_name="/demo_network")[0]
    assert name in about and "Emoji faces at 32 px" in about and "run" not in about.lower()
    owner.predict(name, api_name="/unpublish")
    with pytest.raises(Exception, match="no published network is called"):
        viewer.predict(name, "0", 0.7, None, api_name="/demo_generate")
