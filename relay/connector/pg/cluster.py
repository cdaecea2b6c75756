"""``PgCluster``: several connector instances on one PostgreSQL database (``Coordinator``).

- **Live delivery anywhere.** Every append queues a ``buf`` event; the instance holding the
  gateway's socket wakes that socket's sender, which reads the buffer from its cursor (per
  gateway, seq order is commit order: see ``pg/writer.py``). After every (re)connect of the
  listener every local sender re-reads, so a lost event delays delivery, never loses it.
- **Newest handshake wins across instances.** A handshake bumps the gateway's ``generation``
  (``claim_socket``); every instance hears ``sock`` and closes its older socket of that gateway
  with 4409 ``"replaced"``; the catch-up compares generations again.
- **One poker, one platform sender.** The instance holding the leader lock (``Leadership``)
  runs every ``WakePoker`` and the Telegram send workers; the others only tell it, through the
  tables and events (``buf``, ``flip``, ``poke``, ``queued``; ``sock``/``gone`` spare it a read per
  buffered event of a gateway live elsewhere). The leader derives pokes from the
  tables (flipped gateways, their ``wakeAt`` and unacked entries) when it gains the lock and
  after every listener reconnect, so each due poke is sent by exactly one instance.
- **Routes.** ``route`` events (and the catch-up) keep every instance's identity routes and wake
  URLs in step, so ingress on any instance reaches a gateway announced on another.
"""

from __future__ import annotations

import contextlib
import logging
from typing import TYPE_CHECKING, Any, Protocol

from common.clock import Clock
from relay.connector.pg.events import EventListener, Leadership, leader_lock_key
from relay.connector.pg.store import PgStore
from relay.connector.wake import WakePoker

if TYPE_CHECKING:
    from collections.abc import Coroutine

    from relay.connector.platform_outbox import PlatformOutbox
    from relay.connector.surface import OutboundView, Session

log = logging.getLogger("relay.cluster")

_UNSET = object()


class ClusterHost(Protocol):
    """The connector members ``PgCluster`` reads or calls."""

    @property
    def clock(self) -> Clock: ...

    @property
    def sessions(self) -> dict[str, Session]: ...

    @property
    def routes(self) -> dict[tuple[str, str], str]: ...

    @property
    def wake_urls(self) -> dict[str, str]: ...

    @property
    def pokers(self) -> dict[str, WakePoker]: ...

    @property
    def platform_outbox(self) -> PlatformOutbox: ...

    @property
    def outbound(self) -> OutboundView: ...

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> Any: ...

    def local_poker(self, gateway_id: str) -> WakePoker: ...


class ClusterPoker:
    """A gateway's pokes as a non-leading code path asks for them: the tables already say what
    is due (``buf``/``flip``/``sock`` events wake the leader), so only an immediate poke (a flip
    with unacked entries, PROTOCOL.md 7.2) needs an event of its own."""

    def __init__(self, cluster: PgCluster, gateway_id: str) -> None:
        self.cluster = cluster
        self.gateway_id = gateway_id

    def request(self, *, immediate: bool = False) -> None:
        """An immediate poke goes to the leader; a buffered-event poke is the append's ``buf``."""
        if immediate:
            self.cluster.store.publish("poke", g=self.gateway_id)

    def schedule_wake_at(self, wake_at: float | None) -> None:
        """Stored by ``set_flip`` already; its ``flip`` event makes the leader schedule it."""

    def cancel(self) -> None:
        """A handshake cancels pokes through its ``sock`` event."""


class PgCluster:
    """The ``Coordinator`` of a connector on ``PgStore``; see the module docstring."""

    def __init__(self, host: ClusterHost, store: PgStore) -> None:
        self.c = host
        self.store = store
        self.gens: dict[Session, int] = {}  # generation of each local handshaken socket
        self.newest: dict[str, int] = {}  # highest generation heard of per gateway
        self._scheduled: dict[str, float | None] = {}  # leader: wakeAt handed to each poker
        # Gateways a ``sock`` event said are live (until ``flip``/``gone``): a buffered event for
        # one needs no read to know nobody must be poked. Cleared by every catch-up.
        self._live: set[str] = set()
        self.listener = EventListener(store.url, store.channel, host.clock, self._on_event, self._catch_up)
        self.leadership = Leadership(
            store.url, leader_lock_key(store.channel), host.clock, self._gain, self._loss
        )

    @property
    def leader(self) -> bool:
        """This instance holds the leader lock (it pokes and sends platform calls)."""
        return self.leadership.leader

    def start(self) -> None:
        """Start listening and competing for the leader lock."""
        self.c.spawn(self.listener.run())
        self.c.spawn(self.leadership.run())

    def poker(self, gateway_id: str) -> ClusterPoker:
        """Pokes as a route module asks for them (see ``ClusterPoker``)."""
        return ClusterPoker(self, gateway_id)

    # --- sockets ---------------------------------------------------------------------------

    async def socket_up(self, s: Session) -> None:
        """Claim the gateway's next generation; a newer one heard meanwhile replaces ``s``."""
        gen = await self.store.claim_socket(s.gateway_id, self.c.clock.wall())
        self.gens[s] = gen
        if self.newest.get(s.gateway_id, 0) > gen:
            self._replace(s)
        else:
            self.newest[s.gateway_id] = gen

    def socket_down(self, s: Session) -> None:
        """Release the gateway's live mark if ``s`` still holds the newest generation."""
        gen = self.gens.pop(s, None)
        if gen is not None:
            self.store.release_socket(s.gateway_id, gen, self.c.clock.wall())
            self.store.publish("gone", g=s.gateway_id, n=gen)

    def _replace(self, s: Session) -> None:
        gid = s.gateway_id
        if self.c.sessions.get(gid) is s:
            del self.c.sessions[gid]
        log.info("gateway %s: a newer handshake on another instance replaces this socket (4409)", gid)
        self.c.spawn(s.ws.close(code=4409, message=b"replaced"))

    # --- events ----------------------------------------------------------------------------

    def _on_event(self, ev: dict[str, Any]) -> None:
        kind, gid = ev.get("k"), ev.get("g")
        if kind == "queued":
            if self.leader and isinstance(ev.get("b"), str):
                self.c.platform_outbox.poke(ev["b"])
            return
        if kind == "sent":
            if ev.get("i") != self.store.instance and isinstance(ev.get("s"), str):
                self.c.spawn(self._sent_elsewhere(ev["s"]))
            return
        if not isinstance(gid, str):
            return
        if kind == "buf":
            s = self.c.sessions.get(gid)
            if s is not None and s.live:
                s.notify.set()
            elif self.leader and gid not in self._live and not self.c.local_poker(gid).busy:
                self.c.spawn(self._poke_if_away(gid))
        elif kind == "sock" and isinstance(ev.get("n"), int):
            self._on_sock(gid, ev["n"])
        elif kind == "route":
            platform, bot_id, wake_url = ev.get("p"), ev.get("b"), ev.get("w")
            if isinstance(platform, str) and isinstance(bot_id, str):
                self.c.routes[(platform, bot_id)] = gid
            if isinstance(wake_url, str) and wake_url:
                self.c.wake_urls[gid] = wake_url
        elif kind == "flip":
            self._live.discard(gid)
            if self.leader:
                self.c.spawn(self._apply_flip(gid))
        elif kind == "gone":
            if ev.get("n") == self.newest.get(gid):
                self._live.discard(gid)
        elif kind == "poke" and self.leader:
            self.c.local_poker(gid).request(immediate=True)

    def _on_sock(self, gid: str, gen: int) -> None:
        self.newest[gid] = max(self.newest.get(gid, 0), gen)
        self._live.add(gid)
        if self.leader:  # the gateway is back: its pokes stop (PROTOCOL.md 5.4)
            self._scheduled.pop(gid, None)
            poker = self.c.pokers.get(gid)
            if poker is not None:
                poker.cancel()
        s = self.c.sessions.get(gid)
        mine = self.gens.get(s) if s is not None else None
        if s is not None and mine is not None and mine < gen:
            self._replace(s)

    async def _poke_if_away(self, gid: str) -> None:
        """Leader: a buffered event for a gateway no instance holds live pokes it."""
        poker = self.c.local_poker(gid)
        if poker.busy or gid in self._live or await self.store.gateway_live(gid):
            return
        poker.request()

    async def _apply_flip(self, gid: str) -> None:
        rec = (await self.store.gateways()).get(gid)
        if rec is not None and rec.flipped:
            self._schedule(gid, rec.wake_at)

    def _schedule(self, gid: str, wake_at: float | None) -> None:
        if self._scheduled.get(gid, _UNSET) == wake_at:
            return  # already handed to the poker (a catch-up must not poke a past wakeAt again)
        self._scheduled[gid] = wake_at
        self.c.local_poker(gid).schedule_wake_at(wake_at)

    async def _sent_elsewhere(self, send_id: str) -> None:
        """Another instance finished a platform send: answer it here if the socket is here."""
        send = await self.store.platform_send(send_id)
        if send is None or send.result is None:
            return
        self.c.platform_outbox.resolve(send.send_id, send.result)
        await self.c.outbound.platform_done(send, send.result)

    # --- catch-up and leadership -----------------------------------------------------------

    async def _catch_up(self) -> None:
        """After every listener (re)connect: re-read what an event may have said meanwhile."""
        self._live.clear()  # events were missed: liveness comes from the table again
        self.c.routes.update(await self.store.identities())
        for gid, rec in (await self.store.gateways()).items():
            if rec.wake_url:
                self.c.wake_urls[gid] = rec.wake_url
        local = dict(self.c.sessions)
        for s in local.values():
            s.notify.set()  # every sender re-reads from its cursor
        gens = await self.store.generations(list(local))
        for gid, s in local.items():
            mine = self.gens.get(s)
            if mine is not None and gens.get(gid, 0) > mine:
                self._replace(s)
        for send_id in self.c.platform_outbox.waiting():
            send = await self.store.platform_send(send_id)
            if send is not None and send.result is not None:
                self.c.platform_outbox.resolve(send_id, send.result)
        if self.leader:
            await self._restore_pokes()

    async def _restore_pokes(self) -> None:
        """Leader: pokes due by the tables (as a lone connector restores them at start)."""
        for gid, rec in (await self.store.gateways()).items():
            if rec.wake_url:
                self.c.wake_urls[gid] = rec.wake_url
            if not rec.flipped:
                continue
            self._schedule(gid, rec.wake_at)
            poker = self.c.local_poker(gid)
            if not poker.busy and await self.store.unacked_count(gid):
                poker.request()
        for bot_id in self.c.platform_outbox.tokens:
            self.c.platform_outbox.poke(bot_id)

    async def _gain(self) -> None:
        await self._restore_pokes()
        self.c.platform_outbox.start()

    async def _loss(self) -> None:
        for poker in self.c.pokers.values():
            poker.cancel()
        self._scheduled.clear()
        with contextlib.suppress(Exception):
            await self.c.platform_outbox.close()
