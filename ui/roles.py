"""Who may do what: the owner (everything) and the viewers of a demo page (generate and explore the published
networks), decided on the server for every event a page can trigger.

The guard sits where every event of a Blocks runs (Blocks.process_api, reached by the page's queue, /call, /run and
the unload hooks alike): an event function is the owner's unless its event was marked with for_viewers(). The role
comes from the login of the request's session (gradio's request.username), never from anything the page sends, so
an endpoint added later without a mark refuses viewers by itself. Viewers' device work also waits its turn in the
fair line (ui.fairness) and counts towards their limits; the owner's work goes first.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import gradio as gr

from engine.errors import UserError
from ui.fairness import GATE, RATES, Limits, visitor_key

OWNER = "owner"
VIEWER = "viewer"

REFUSED = ("this is for the owner of this studio: visitors of the demo can generate and explore the published "
           "networks only")
LOGIN = "log in first, with the owner's login or a viewer's"


@dataclass
class Access:
    """The logins of a dashboard. owner: (user, password) of --auth, or None (then whoever reaches the dashboard is
    its owner: 127.0.0.1, or --share-no-auth). viewers: (user, password) pairs of --viewer-auth. public: viewers need
    no login (--public-viewers)."""

    owner: "tuple[str, str] | None" = None
    viewers: list = field(default_factory=list)
    public: bool = False
    limits: Limits = field(default_factory=Limits)

    @property
    def has_viewers(self) -> bool:
        return bool(self.viewers) or self.public

    def role(self, username) -> "str | None":
        """OWNER, VIEWER or None (refused) for the login of a request (None: no login)."""
        if username is not None:
            if self.owner is not None and username == self.owner[0]:
                return OWNER
            if any(username == u for u, _ in self.viewers):
                return VIEWER
            return None
        if self.public:
            return VIEWER
        return OWNER if self.owner is None and not self.viewers else None

    def demo_logins(self) -> "list[tuple[str, str]] | None":
        """The logins the demo page takes: none when it is public, else the viewers' and the owner's."""
        if self.public:
            return None
        return [tuple(v) for v in self.viewers] + ([tuple(self.owner)] if self.owner else [])


def for_viewers(event, device: bool = False, cost: float = 1.0):
    """Mark an event (what .click()/.change()/... returned) as open to viewers. device: its work takes the device,
    so a viewer's call waits its turn and counts towards the viewer's requests a minute (cost: how much one call
    counts; a live-view frame is a tenth). Returns the event."""
    from gradio.context import get_blocks_context

    blocks = get_blocks_context()
    fn = blocks.fns[event["id"]] if blocks is not None else None
    if fn is None:
        raise ValueError("for_viewers() marks an event inside the Blocks that defines it")
    fn.studio_for_viewers = True
    fn.studio_device = bool(device)
    fn.studio_cost = float(cost)
    return event


def is_for_viewers(block_fn) -> bool:
    return getattr(block_fn, "studio_for_viewers", False) is True


def endpoints(blocks) -> list[dict]:
    """Every event function of `blocks` (named or not): {'id', 'api_name', 'name', 'for_viewers', 'device'}."""
    return [{"id": i, "api_name": fn.api_name, "name": fn.name, "for_viewers": is_for_viewers(fn),
             "device": bool(getattr(fn, "studio_device", False))}
            for i, fn in sorted(blocks.fns.items())]


def request_role(access: Access, request) -> "str | None":
    if isinstance(request, list):
        request = request[0] if request else None
    return access.role(getattr(request, "username", None))


def install(blocks, access: Access, gate=GATE, rates=RATES) -> None:
    """Put the guard in front of every event of `blocks` (call after it is built, before it is served)."""
    if getattr(blocks, "studio_access", None) is not None:
        blocks.studio_access = access
        return
    blocks.studio_access = access
    process_api = blocks.process_api

    async def guarded(block_fn, inputs, state=None, request=None, iterator=None, *args, **kwargs):
        fn = blocks.fns[block_fn] if isinstance(block_fn, int) else block_fn
        acc = blocks.studio_access
        role = request_role(acc, request)
        one = request[0] if isinstance(request, list) and request else request
        if role == OWNER:
            if not acc.has_viewers:  # nobody to go ahead of
                return await process_api(block_fn, inputs, state, request, iterator, *args, **kwargs)
            async with gate.owner():
                return await process_api(block_fn, inputs, state, request, iterator, *args, **kwargs)
        if role != VIEWER or not is_for_viewers(fn):
            raise gr.Error(REFUSED if role == VIEWER else LOGIN, print_exception=False)
        if not getattr(fn, "studio_device", False):
            return await process_api(block_fn, inputs, state, request, iterator, *args, **kwargs)
        key = visitor_key(one)
        try:
            if iterator is None:  # a streaming job counts once, at its start
                rates.take(key, acc.limits.per_minute, getattr(fn, "studio_cost", 1.0))
            async with gate.visitor(key, acc.limits.pending):
                return await process_api(block_fn, inputs, state, request, iterator, *args, **kwargs)
        except UserError as e:
            raise gr.Error(str(e), print_exception=False) from None

    blocks.process_api = guarded
