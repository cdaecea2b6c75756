"""Prometheus metrics of one sidecar (a registry of its own, so tests can run several).

Served on the internal port (``METRICS_PORT``, SPEC 8.3). No ``*_created`` series: they are
disabled process-wide when this module is imported.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics

from gateway.agent.spend import TurnReport
from gateway.telemetry.record import Invocation

disable_created_metrics()  # type: ignore[no-untyped-call]


class Metrics:
    """Counters and gauges exported on ``/metrics``."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.inbound = Counter("hermes_inbound_total", "Inbound user messages admitted", registry=r)
        self.duplicates = Counter(
            "hermes_inbound_duplicates_total",
            "Inbound frames already stored (re-acked, not handled)",
            registry=r,
        )
        self.turns = Counter(
            "hermes_turns_total",
            "Agent turns by source (inbound, cron), profile and outcome",
            ["source", "profile", "outcome"],
            registry=r,
        )
        self.turn_cost = Counter(
            "hermes_turn_cost_usd_total", "Spend of agent turns in USD", ["profile", "model"], registry=r
        )
        self.provider_latency = Histogram(
            "hermes_provider_latency_seconds",
            "Duration of provider calls, seconds",
            registry=r,
            buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 80, 120),
        )
        self.substitutions = Counter(
            "hermes_model_substitutions_total",
            "Turns answered by another model than the one asked",
            ["asked", "answered"],
            registry=r,
        )
        self.pokes = Counter("hermes_wake_pokes_total", "Wake pokes by result", ["result"], registry=r)
        self.transitions = Counter(
            "hermes_watcher_transitions_total",
            "Idle watcher transitions by target state",
            ["state"],
            registry=r,
        )
        self.state = Gauge("hermes_watcher_state", "1 for the current watcher state", ["state"], registry=r)
        self.running = Gauge("hermes_running_work", "Running turns, jobs and tasks", registry=r)
        self.relay_connected = Gauge("hermes_relay_connected", "1 while the relay socket is up", registry=r)
        self.relay_dials = Counter(
            "hermes_relay_dial_attempts", "Relay dial attempts (exported with _total)", registry=r
        )
        self._dials_counted = 0
        # Operator page metrics (SPEC 8.5).
        self.wake_latency = Histogram(
            "hermes_wake_latency_seconds",
            "Wake latency: poke, due job or resume to the first replayed inbound acked, or to the"
            " relay connected when nothing was buffered (gateway/ops/wakes.py)",
            registry=r,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
        )
        self.state_transitions = Counter(
            "hermes_transitions_total",
            "Idle watcher transitions by state left and state entered (stopped: process start/stop)",
            ["from", "to"],
            registry=r,
        )
        self.cron_lateness = Histogram(
            "hermes_cron_lateness_seconds",
            "Cron run start lateness: started_at - scheduled_for, seconds",
            registry=r,
            buckets=(0.01, 0.1, 0.5, 1, 5, 15, 60, 300, 900, 3600, 21600, 86400),
        )
        self.cron_runs = Counter(
            "hermes_cron_runs_total",
            "Cron ledger rows settled since this process started, by status",
            ["status"],
            registry=r,
        )
        self._cron_runs_counted: dict[str, int] = {}
        self.skill_invocations = Counter(
            "hermes_skill_invocations_total",
            "Skill invocations by skill, model and outcome (success, failure, scaffolding)",
            ["skill", "model", "outcome"],
            registry=r,
        )
        self.skill_cost = Counter(
            "hermes_skill_cost_usd_total",
            "Estimated spend in USD by skill and model (split evenly across a run's skills)",
            ["skill", "model"],
            registry=r,
        )
        self.model_retries = Counter(
            "hermes_turn_model_retries_total",
            "Model calls repeated because a restart found an inbound turn's call unfinished",
            registry=r,
        )
        self.rejected = Counter(
            "hermes_inbound_rejected_total",
            "Inbound frames quarantined (kept as rejected, acked) by reason",
            ["reason"],
            registry=r,
        )
        self.telemetry_dropped = Counter(
            "hermes_telemetry_dropped_rows_total", "Telemetry rows lost to a failed write", registry=r
        )

    def sync_dial_attempts(self, attempts: int) -> None:
        """Bring ``hermes_relay_dial_attempts_total`` up to the transport's own dial count (it
        only grows; a smaller number is ignored, so the series stays monotonic)."""
        if attempts > self._dials_counted:
            self.relay_dials.inc(attempts - self._dials_counted)
            self._dials_counted = attempts

    def sync_cron_runs(self, settled: dict[str, int]) -> None:
        """Bring ``hermes_cron_runs_total{status}`` up to the ledger's counts of rows settled
        since start (``settled``: status -> rows). Counts only grow: a smaller one (rows pruned)
        is ignored, so each series stays monotonic."""
        for status, n in settled.items():
            seen = self._cron_runs_counted.get(status, 0)
            if n > seen:
                self.cron_runs.labels(status=status).inc(n - seen)
                self._cron_runs_counted[status] = n

    def observe_turn(self, report: TurnReport) -> None:
        """Count one finished turn: outcome, spend, provider latency, substitution."""
        self.turns.labels(report.source, report.profile, report.outcome).inc()
        if report.model is not None and report.cost_usd:
            self.turn_cost.labels(report.profile, report.model).inc(report.cost_usd)
        if report.latency_s is not None:
            self.provider_latency.observe(report.latency_s)
        if report.model is not None and report.substituted_by is not None:
            self.substitutions.labels(report.model, report.substituted_by).inc()

    def observe_skill(self, row: Invocation) -> None:
        """Count one skill invocation (``TelemetryWriter.on_record``); ``success`` NULL is a
        scaffolding outcome, never a model failure."""
        if row.success is None:
            outcome = "scaffolding"
        else:
            outcome = "success" if row.success else "failure"
        model = row.model or ""
        self.skill_invocations.labels(row.skill_name, model, outcome).inc()
        if row.estimated_cost_usd:
            self.skill_cost.labels(row.skill_name, model).inc(row.estimated_cost_usd)
