"""Wake latency, measured (pure: plain values and an injected clock).

A wake starts when the idle watcher leaves dormancy (``IdleWatcher.on_wake``): a ``/wake``
poke, a due job or a detected resume. A poke that arrives while a flip is in flight is applied
when the flip completes, so its wake starts then (the time spent finishing the flip is not a
wake). The measurement ends, and ``ended_by`` says which, at the first of:

- ``first replayed inbound acked``: the handshake announced buffered entries (the relay is
  ``replaying``) and the first inbound batch after it has been persisted. The sidecar marks this
  when its inbound handler returns; the transport sends the ``inbound_ack`` on its very next
  step, so this is the persisted-and-acking moment, not the connector's receipt of the ack;
- ``relay connected``: the handshake completed with nothing buffered (nothing to replay);
- ``replay window closed``: entries were announced but none arrived before the transport gave
  up waiting (``ack_timeout_seconds``);
- ``live``: no relay is configured (cron-only with an external waker): the wake is the state
  change itself, latency 0.

A wake still open when another starts is recorded with no latency (``superseded``). Latencies
use the monotonic clock; ``at`` is the wall time the wake started.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from common.clock import Clock

REPLAYED = "first replayed inbound acked"
CONNECTED = "relay connected"
WINDOW_CLOSED = "replay window closed"
NO_RELAY = "live"
SUPERSEDED = "superseded"


@dataclass
class _Open:
    trigger: str
    at: float
    started: float  # monotonic
    awaiting_replay: bool = False


@dataclass(frozen=True)
class WakeResult:
    at: float
    trigger: str
    latency_s: float | None
    ended_by: str


class WakeTracker:
    """Follows one wake at a time; ``on_done(WakeResult)`` is called when it ends."""

    def __init__(self, clock: Clock, on_done: Callable[[WakeResult], None]) -> None:
        self.clock = clock
        self.on_done = on_done
        self._open: _Open | None = None

    @property
    def pending(self) -> bool:
        return self._open is not None

    def started(self, trigger: str, *, relay: bool) -> None:
        """A wake left dormancy. Without a relay it is complete at once."""
        if self._open is not None:
            self._finish(SUPERSEDED, measured=False)
        self._open = _Open(trigger, self.clock.wall(), self.clock.monotonic())
        if not relay:
            self._finish(NO_RELAY)

    def relay_changed(self, *, connected: bool, replaying: bool) -> None:
        """The transport changed state (any listener notification)."""
        w = self._open
        if w is None or not connected:
            return
        if not w.awaiting_replay:
            if replaying:
                w.awaiting_replay = True
            else:
                self._finish(CONNECTED)
        elif not replaying:
            self._finish(WINDOW_CLOSED)

    def inbound_persisted(self) -> None:
        """An inbound batch was persisted (its ack goes out next)."""
        if self._open is not None and self._open.awaiting_replay:
            self._finish(REPLAYED)

    def _finish(self, ended_by: str, *, measured: bool = True) -> None:
        w, self._open = self._open, None
        assert w is not None
        latency = self.clock.monotonic() - w.started if measured else None
        self.on_done(WakeResult(w.at, w.trigger, latency, ended_by))
