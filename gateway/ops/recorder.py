"""The sidecar's hooks for the operator page: what happens goes to state history and metrics.

``OpsRecorder`` is attached by the sidecar to the idle watcher (``on_transition``,
``on_wake``), the relay transport (a listener), the inbound handler and the cron runner
(``CronContext.on_start``). Every hook is synchronous and cheap: rows are queued on the
``HistoryStore`` (written in the background), metrics are in-memory.

Which relay transitions are worth showing: the watcher already records the flip and the
wake, so of the relay's own states only those that tell something the watcher does not are
stored: reaching ``connected`` (each handshake, with how many entries were buffered), falling
into ``backoff`` (the close code and reason), ``revoked`` and ``closed``. Dialing, handshaking,
flipping and dormant are steps of a flip or a wake and would only repeat the watcher rows.

``hermes_transitions_total{from,to}`` counts watcher transitions (``stopped`` on either side
for the process start and stop); relay states are not mixed into it, since both machines
have a ``dormant`` state. ``hermes_cron_runs_total{status}`` is synced from the ledger
(``job_runs`` rows settled since this process started, by status) on every ``/metrics`` scrape
and page render: every occurrence leaves a ledger row (SPEC 5), including ``missed`` and
``skipped_overlap`` rows the scheduler writes without running anything.
"""

from __future__ import annotations

import logging

import aiosqlite

from common.clock import Clock
from common.sqlite import read_all
from gateway.core.watcher import WatchState
from gateway.cron.store import Job
from gateway.metrics import Metrics
from gateway.ops.history import HistoryStore
from gateway.ops.wakes import WakeResult, WakeTracker
from relay.client.machine import ConnState
from relay.client.transport import RelayTransport

log = logging.getLogger("gateway.ops")

STOPPED = "stopped"
RELAY_SHOWN = (ConnState.CONNECTED, ConnState.BACKOFF, ConnState.REVOKED, ConnState.CLOSED)


class OpsRecorder:
    """State history and operator metrics of one sidecar."""

    def __init__(
        self,
        db: aiosqlite.Connection,
        *,
        clock: Clock,
        metrics: Metrics,
        transport: RelayTransport | None,
    ) -> None:
        self.db = db
        self.clock = clock
        self.metrics = metrics
        self.transport = transport
        self.history = HistoryStore(db)
        self.wakes = WakeTracker(clock, self._wake_done)
        self.started_at = clock.wall()
        self._relay_state: ConnState | None = transport.state if transport is not None else None

    # --- lifecycle ---------------------------------------------------------------------

    def start(self, state: str) -> None:
        """Start the writer and record the process start (``stopped -> <state>``)."""
        self.history.start()
        self.started_at = self.clock.wall()
        self.watcher_transition(STOPPED, state, "sidecar started")

    async def aclose(self, state: str) -> None:
        """Record a graceful stop (``<state> -> stopped``) and write what is queued."""
        self.watcher_transition(state, STOPPED, "shutdown")
        await self.history.aclose()

    # --- hooks -------------------------------------------------------------------------

    def on_watcher(self, before: WatchState, after: WatchState, reason: str) -> None:
        """``IdleWatcher.on_transition``."""
        self.watcher_transition(before.value, after.value, reason)

    def watcher_transition(self, before: str, after: str, reason: str) -> None:
        self.metrics.state_transitions.labels(before, after).inc()
        self.history.transition("watcher", before, after, reason, self.clock.wall())

    def on_wake(self, trigger: str) -> None:
        """``IdleWatcher.on_wake``: a wake leaves dormancy."""
        self.wakes.started(trigger, relay=self.transport is not None)

    def on_relay(self) -> None:
        """A transport listener: record shown relay transitions, follow an open wake."""
        t = self.transport
        if t is None:
            return
        state = t.state
        before, self._relay_state = self._relay_state, state
        if before is not state and state in RELAY_SHOWN:
            self.history.transition(
                "relay", before.value if before else "", state.value, self._relay_reason(t), self.clock.wall()
            )
        self.wakes.relay_changed(connected=t.connected, replaying=t.replaying)

    @staticmethod
    def _relay_reason(t: RelayTransport) -> str:
        if t.state is ConnState.CONNECTED:
            buffered = t.descriptor.buffered if t.descriptor is not None else None
            return f"handshake ok; {buffered or 0} buffered"
        if t.last_close_code is not None:
            return f"close {t.last_close_code} {t.last_close_reason}".strip()
        return ""

    def on_inbound_persisted(self) -> None:
        """The sidecar's inbound handler persisted a batch (its ack is sent next)."""
        self.wakes.inbound_persisted()

    def on_cron_start(self, job: Job, scheduled_for: float, started_at: float) -> None:
        """``CronContext.on_start``: lateness = started_at - scheduled_for (>= 0)."""
        self.metrics.cron_lateness.observe(max(0.0, started_at - scheduled_for))

    def _wake_done(self, w: WakeResult) -> None:
        latency_ms = None if w.latency_s is None else round(w.latency_s * 1000.0, 3)
        if w.latency_s is not None:
            self.metrics.wake_latency.observe(w.latency_s)
        log.info(
            "wake by %s complete: %s (%s)",
            w.trigger,
            "-" if latency_ms is None else f"{latency_ms:.1f} ms",
            w.ended_by,
        )
        self.history.wake(w.at, w.trigger, latency_ms, w.ended_by)

    # --- periodic ------------------------------------------------------------------------

    async def sync_cron_runs(self) -> None:
        """Bring ``hermes_cron_runs_total`` up to the ledger (rows settled since start)."""
        try:
            rows = await read_all(
                self.db,
                "SELECT status, COUNT(*) FROM job_runs WHERE finished_at >= ? AND status != 'running'"
                " GROUP BY status",
                (self.started_at,),
            )
        except Exception as exc:  # a scrape must still answer
            log.warning("cron run counts unavailable: %s", exc)
            return
        self.metrics.sync_cron_runs({str(s): int(n) for s, n in rows})

    async def prune(self, retention_days: float) -> int:
        """Apply ``gateway.history_retention_days``; one WARNING on failure (never raises)."""
        try:
            pruned = await self.history.prune(self.clock.wall() - retention_days * 86400.0)
        except Exception as exc:
            log.warning("state history retention failed: %s", exc)
            return 0
        if pruned:
            log.info(
                "state history retention: %d row(s) older than %g day(s) deleted", pruned, retention_days
            )
        return pruned
