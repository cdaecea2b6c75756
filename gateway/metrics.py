"""Prometheus metrics of one sidecar (a registry of its own, so tests can run several)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge


class Metrics:
    """Counters and gauges exported on ``/metrics``."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.inbound = Counter("hermes_inbound_total", "Inbound user messages admitted",
                               registry=r)
        self.duplicates = Counter("hermes_inbound_duplicates_total",
                                  "Inbound frames already stored (re-acked, not handled)",
                                  registry=r)
        self.turns = Counter("hermes_turns_total", "Agent turns by outcome", ["outcome"],
                             registry=r)
        self.pokes = Counter("hermes_wake_pokes_total", "Wake pokes by result", ["result"],
                             registry=r)
        self.transitions = Counter("hermes_watcher_transitions_total",
                                   "Idle watcher transitions by target state", ["state"],
                                   registry=r)
        self.state = Gauge("hermes_watcher_state", "1 for the current watcher state", ["state"],
                           registry=r)
        self.running = Gauge("hermes_running_work", "Running turns, jobs and tasks", registry=r)
        self.relay_connected = Gauge("hermes_relay_connected", "1 while the relay socket is up",
                                     registry=r)
        self.relay_dials = Gauge("hermes_relay_dial_attempts", "Relay dial attempts", registry=r)
