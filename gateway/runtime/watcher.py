"""The idle watcher's async shell: sleeps until the idle deadline or an event, then flips.

Drives ``gateway.core.watcher`` (the table) with ``gateway.core.policy`` (the predicate). It
never stops anything: dormant is a state of the running process, and only a wake (poke,
resume, due job) leaves it. Every transition is one log line with its reason.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from common.clock import Clock, wait_for_event
from gateway.config import ScaleToZero
from gateway.core.activity import Activity
from gateway.core.policy import IdleInputs, idle_deadline, is_idle
from gateway.core.watcher import WatchEvent, WatchState, transition
from relay.client.machine import ConnState
from relay.client.transport import RelayTransport

log = logging.getLogger("gateway.watcher")

ABORT_PAUSE_S = 1.0
"""Seconds after an aborted flip before the next may start (a cooldown of its own)."""


class IdleWatcher:
    """live -> draining -> dormant -> (wake) live, with a cooldown after every wake.

    ``next_due_wall()`` gives the Unix time of the next due job (or None); ``blockers`` are the
    arm blockers (empty = armed). ``dormant`` is an Event set while dormant (``/presence``
    streams end on it). ``on_dormant``/``on_live`` hooks run on those transitions.
    ``on_transition(before, after, reason)`` hooks run on every transition and ``on_wake(trigger)``
    hooks when a wake leaves dormancy (before the transition to live): the operator page's
    history (``gateway.ops``). A hook that raises is logged and never stops the watcher.
    """

    def __init__(
        self,
        *,
        clock: Clock,
        settings: ScaleToZero,
        activity: Activity,
        transport: RelayTransport | None,
        blockers: list[str],
        next_due_wall: Callable[[], float | None] = lambda: None,
    ) -> None:
        self.clock = clock
        self.settings = settings
        self.activity = activity
        self.transport = transport
        self.blockers = blockers
        self.next_due_wall = next_due_wall
        self.state = WatchState.LIVE
        self.cooldown_until: float | None = None  # monotonic
        self.dormant = asyncio.Event()
        self.on_dormant: list[Callable[[], None]] = []
        self.on_live: list[Callable[[], None]] = []
        self.on_transition: list[Callable[[WatchState, WatchState, str], None]] = []
        self.on_wake: list[Callable[[str], None]] = []
        self.loops = 0  # loop evaluations: a busy loop shows here (tests, bench)
        self._kick = asyncio.Event()
        self._wake_pending: str | None = None
        self.flips = 0
        self.wakes = 0
        activity.listeners.append(self._on_activity)
        if transport is not None:
            transport.listeners.append(self._kick.set)

    def kick(self) -> None:
        """Re-evaluate now (activity, a new due time, a relay change)."""
        self._kick.set()

    @property
    def armed(self) -> bool:
        return not self.blockers

    def _fire(self, event: WatchEvent, reason: str) -> None:
        before = self.state
        self.state = transition(self.state, event)
        log.info("watcher %s -> %s: %s", before.value, self.state.value, reason)
        for observe in self.on_transition:
            try:
                observe(before, self.state, reason)
            except Exception as exc:  # history is an observer: it must never stop the watcher
                log.warning("watcher transition hook failed: %s", exc)
        if self.state is WatchState.DORMANT:
            self.dormant.set()
            for hook in self.on_dormant:
                hook()
        elif self.state is WatchState.LIVE:
            self.dormant.clear()
            if before is WatchState.DORMANT:
                for hook in self.on_live:
                    hook()
        self._kick.set()

    def _on_activity(self, what: str) -> None:
        if self.state is WatchState.DRAINING and (what == "inbound" or what.endswith("started")):
            if self.transport is not None:
                self.transport.abort_flip(what)
        self._kick.set()

    def next_due_in(self) -> float | None:
        due = self.next_due_wall()
        return None if due is None else due - self.clock.wall()

    def idle_inputs(self) -> IdleInputs:
        return IdleInputs(
            now=self.clock.monotonic(),
            idle_since=self.activity.idle_since,
            busy=self.activity.busy,
            next_due_in=self.next_due_in(),
            timeout=self.settings.idle_timeout_s,
        )

    def in_cooldown(self) -> bool:
        return self.cooldown_until is not None and self.clock.monotonic() < self.cooldown_until

    def wake(self, reason: str) -> bool:
        """Leave dormancy at once (re-dial); True if this wake changed anything.

        During draining the wake is remembered and applied as soon as the flip completes.
        """
        if self.state is WatchState.DORMANT:
            if self.transport is not None:
                self.transport.wake(reason)
            self.wakes += 1
            for started in self.on_wake:
                try:
                    started(reason)
                except Exception as exc:  # never stops a wake
                    log.warning("watcher wake hook failed: %s", exc)
            self.cooldown_until = self.clock.monotonic() + self.settings.cooldown_s
            self._fire(WatchEvent.WOKEN, f"woken by {reason}; cooldown {self.settings.cooldown_s:.0f} s")
            return True
        if self.state is WatchState.DRAINING:
            self._wake_pending = reason
            if self.transport is not None:
                self.transport.wake(reason)
            return True
        if self.transport is not None:
            # Live but backing off: a poke means the connector is there now.
            return self.transport.wake(reason)
        return False

    async def run(self) -> None:
        """The watcher loop; returns only when cancelled."""
        if self.armed:
            log.info(
                "watcher armed: idle timeout %.0f s, cooldown %.0f s",
                self.settings.idle_timeout_s,
                self.settings.cooldown_s,
            )
        else:
            log.info("watcher not armed: %s", "; ".join(self.blockers))
        while True:
            self.loops += 1
            self._kick.clear()
            if self.state is WatchState.LIVE and self.armed and self._may_flip():
                await self._flip()
                continue
            await self._sleep_until(self._next_deadline())

    def _relay_ready(self) -> bool:
        """A flip needs a handshaken socket that is not already flipping and whose announced
        replay (PROTOCOL 7.2) has been persisted (no relay: ready). Any cooldown, 0 included,
        therefore delivers every buffered message before the next flip (SPEC 8.1)."""
        t = self.transport
        return t is None or (t.state is ConnState.CONNECTED and not t.replaying)

    def _may_flip(self) -> bool:
        if self.in_cooldown():
            return False
        if not self._relay_ready():
            return False
        return is_idle(self.idle_inputs())

    def _next_deadline(self) -> float | None:
        """When to look again (monotonic), or None: wait for a kick. While the relay is not
        ready (dialing, backing off, flipping) the transport's state change is the kick; a
        past idle deadline must not turn into a busy loop during a long backoff."""
        if self.state is not WatchState.LIVE or not self.armed or not self._relay_ready():
            return None
        deadlines = []
        d = idle_deadline(self.idle_inputs())
        if d is not None:
            deadlines.append(d)
        if self.in_cooldown() and self.cooldown_until is not None:
            deadlines.append(self.cooldown_until)
        return max(deadlines) if deadlines else None

    async def _sleep_until(self, deadline: float | None) -> None:
        if deadline is None:
            await self._kick.wait()
            return
        delay = deadline - self.clock.monotonic()
        if delay <= 0:
            await asyncio.sleep(0)  # never a synchronous spin, whatever the inputs
            return
        await wait_for_event(self.clock, self._kick, delay)

    async def _flip(self) -> None:
        idle_for = self.clock.monotonic() - self.activity.idle_since
        self._fire(WatchEvent.IDLE, f"idle for {idle_for:.1f} s >= {self.settings.idle_timeout_s:.0f} s")
        wake_at = self.next_due_wall()
        ok = True
        if self.transport is not None:
            ok = await self.transport.go_dormant(wake_at)
        if not ok:
            # A short pause before the next try: an ack that never comes (a connector that
            # cannot flip, ack_timeout_seconds 0) must not turn into a re-dial loop.
            pause_until = self.clock.monotonic() + ABORT_PAUSE_S
            self.cooldown_until = max(self.cooldown_until or pause_until, pause_until)
            self._fire(
                WatchEvent.ABORTED,
                "flip aborted (work arrived or no going_idle_ack); "
                f"re-handshaking; next try in >= {ABORT_PAUSE_S:.0f} s",
            )
            self._wake_pending = None
            await asyncio.sleep(0)  # a flip refused at once must not make a loop that never yields
            return
        self.flips += 1
        self._fire(
            WatchEvent.FLIP_ACKED,
            "going_idle_ack received; relay closed 1000 dormant"
            if self.transport is not None
            else "no relay: dormant until a poke",
        )
        if self._wake_pending is not None:
            reason, self._wake_pending = self._wake_pending, None
            self.wake(reason)
