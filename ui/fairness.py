"""Sharing one device among many visitors of a demo page: who a visitor is, how much a visitor may ask for, and the
one line they wait in.

- visitor_key(request): the visitor's address (behind a local proxy such as the share tunnel, the address the proxy
  names in X-Forwarded-For); a visitor whose address is not known (a proxy that names none) is told apart by page.
- Limits: what one visitor may ask for (images per grid, GIF frames, projection steps, requests a minute, requests
  waiting at once). The owner has none of these.
- FairGate: the device's one line. Visitors' jobs run one at a time, served in turn (the visitor served longest ago
  goes next; one visitor's many requests cannot starve the others); the owner's work never waits in it, and while
  the owner has work running no visitor's job starts.

Plain Python (threads and asyncio), no gradio: engine-free and testable on its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import itertools
import threading
import time
from collections import OrderedDict, deque
from dataclasses import dataclass

from engine.errors import UserError


@dataclass(frozen=True)
class Limits:
    """What one visitor may ask for. A request over a limit is refused with a one-line message naming it."""

    seeds: int = 16          # images in one grid
    frames: int = 120        # frames of one GIF
    steps: int = 200         # steps of one projection
    per_minute: int = 30     # requests a minute (a live-view frame counts a tenth)
    pending: int = 3         # requests waiting or running at once

    @classmethod
    def parse(cls, text: str) -> "Limits":
        """'seeds=16,frames=120,steps=200,per_minute=30,pending=3' (any subset) -> Limits."""
        values = {}
        names = [f for f in cls.__dataclass_fields__]
        for part in filter(None, (p.strip() for p in str(text or "").split(","))):
            key, eq, value = part.partition("=")
            key = key.strip().replace("-", "_")
            if not eq or key not in names:
                raise UserError(f"cannot read viewer limit {part!r}: use NAME=NUMBER with NAME one of "
                                f"{', '.join(names)}")
            try:
                number = int(value)
            except ValueError:
                raise UserError(f"viewer limit {key}={value.strip()!r} is not a whole number") from None
            if number < 1:
                raise UserError(f"viewer limit {key}={number} must be at least 1")
            values[key] = number
        return cls(**values)

    def describe(self) -> str:
        return (f"up to {self.seeds} images per grid, GIFs of up to {self.frames} frames, projections of up to "
                f"{self.steps} steps and {self.per_minute} requests a minute")


def _is_local(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host in ("localhost", "testclient")


def visitor_key(request) -> str:
    """Who is asking, for turns and limits: 'ip:<address>' or, when only a local proxy's address is known,
    'page:<session>'. A forwarded address counts only from a local peer (the share tunnel, a reverse proxy on this
    machine): anyone else could write any address into that header."""
    if request is None:
        return "page:none"
    client = getattr(request, "client", None)
    host = getattr(client, "host", None) or ""
    if host and not _is_local(host):
        return f"ip:{host}"
    headers = getattr(request, "headers", None) or {}
    forwarded = headers.get("x-forwarded-for", "") if hasattr(headers, "get") else ""
    last = forwarded.split(",")[-1].strip() if forwarded else ""
    if last and not _is_local(last):
        return f"ip:{last}"
    return f"page:{getattr(request, 'session_hash', None) or host or 'none'}"


class RateWindow:
    """Requests of each visitor over the last minute; refuses one that would go over the limit."""

    def __init__(self, window_s: float = 60.0):
        self.window_s = window_s
        self._lock = threading.Lock()
        self._seen: dict[str, deque] = {}

    def take(self, key: str, limit: int, cost: float = 1.0, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        with self._lock:
            q = self._seen.setdefault(key, deque())
            while q and q[0][0] <= now - self.window_s:
                q.popleft()
            used = sum(c for _, c in q)
            if used + cost > limit + 1e-9:
                wait = max(1, int(q[0][0] + self.window_s - now + 0.999)) if q else 1
                raise UserError(f"that is more than {limit} requests a minute, the most a visitor may make: "
                                f"try again in {wait} s")
            q.append((now, cost))
            if len(self._seen) > 10000:  # forget visitors who went quiet
                for k in [k for k, v in self._seen.items() if not v or v[-1][0] <= now - self.window_s][:5000]:
                    del self._seen[k]


class _Waiter:
    __slots__ = ("key", "loop", "future", "granted")

    def __init__(self, key, loop, future):
        self.key, self.loop, self.future, self.granted = key, loop, future, False


class FairGate:
    """The device's line (one per process: one device). See the module's docstring for the rules.

    Waiting costs no thread: each waiter is an asyncio future on its own event loop (every gradio server in this
    process has one), granted from whichever thread releases the device.
    """

    def __init__(self, slots: int = 1):
        self.slots = slots
        self._lock = threading.Lock()
        self._owner_active = 0
        self._busy = 0
        self._waiting: "OrderedDict[str, deque[_Waiter]]" = OrderedDict()
        self._pending: dict[str, int] = {}
        self._last_turn: dict[str, int] = {}
        self._turns = itertools.count()

    # ------------------------------------------------------------------ the owner
    @contextlib.asynccontextmanager
    async def owner(self):
        """The owner's work: starts at once; no visitor's job starts while it runs."""
        with self._lock:
            self._owner_active += 1
        try:
            yield
        finally:
            with self._lock:
                self._owner_active -= 1
                self._dispatch()

    # ------------------------------------------------------------------ visitors
    @contextlib.asynccontextmanager
    async def visitor(self, key: str, max_pending: int):
        """One job of visitor `key` on the device, in turn. UserError when the visitor already has `max_pending`
        requests waiting or running."""
        loop = asyncio.get_running_loop()
        with self._lock:
            if self._pending.get(key, 0) >= max_pending:
                raise UserError(f"you already have {max_pending} requests waiting: wait for them to finish")
            self._pending[key] = self._pending.get(key, 0) + 1
            waiter = _Waiter(key, loop, loop.create_future())
            self._waiting.setdefault(key, deque()).append(waiter)
            self._dispatch()
        try:
            await waiter.future
        except BaseException:
            with self._lock:
                if waiter.granted:
                    self._busy -= 1
                else:
                    self._remove(waiter)
                self._drop_pending(key)
                self._dispatch()
            raise
        try:
            yield
        finally:
            with self._lock:
                self._busy -= 1
                self._drop_pending(key)
                self._dispatch()

    def waiting(self) -> int:
        with self._lock:
            return sum(len(q) for q in self._waiting.values())

    # ------------------------------------------------------------------ inside the lock
    def _remove(self, waiter):
        q = self._waiting.get(waiter.key)
        if q is not None:
            with contextlib.suppress(ValueError):
                q.remove(waiter)
            if not q:
                del self._waiting[waiter.key]

    def _drop_pending(self, key):
        n = self._pending.get(key, 0) - 1
        if n > 0:
            self._pending[key] = n
        else:
            self._pending.pop(key, None)
            if len(self._last_turn) > 10000:
                self._last_turn.pop(key, None)

    def _dispatch(self):
        while self._owner_active == 0 and self._busy < self.slots and self._waiting:
            # In turn: the visitor whose last job started longest ago (a new visitor first), then who came first.
            key = min(self._waiting, key=lambda k: self._last_turn.get(k, -1))
            q = self._waiting[key]
            waiter = q.popleft()
            if not q:
                del self._waiting[key]
            self._last_turn[key] = next(self._turns)
            try:
                waiter.loop.call_soon_threadsafe(_grant, waiter.future)
            except RuntimeError:  # its server was closed meanwhile: nobody is waiting there any more
                self._drop_pending(key)
                continue
            waiter.granted = True
            self._busy += 1


def _grant(future):
    if not future.done():
        future.set_result(None)


GATE = FairGate()
RATES = RateWindow()
