"""The composition root: wires config, state.db, the relay transport, the inbox, the idle
watcher and the HTTP server into one running sidecar, and owns their lifecycles."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import socket
from collections.abc import Callable, Mapping
from typing import Any

import aiohttp
from aiohttp import web

from common.clock import Clock, SystemClock
from common.errors import StartupError
from common.listen import bind_listener, prepare_home
from common.sqlite import write_tx
from common.timefmt import rfc3339
from gateway.agent.spend import SpendLedger, TurnReport
from gateway.config import Config, load_config
from gateway.conversation.chat import Conversation
from gateway.conversation.store import SessionStore
from gateway.core.activity import Activity
from gateway.core.policy import ArmInputs, arm_blockers
from gateway.core.resume import ResumeDetector
from gateway.core.watcher import WatchState
from gateway.cron.runner import CronContext
from gateway.cron.scheduler import CronScheduler
from gateway.cron.store import CronStore, Job
from gateway.http.server import build_app, build_internal_app
from gateway.inbox.store import InboxStore
from gateway.kanban.board import Board
from gateway.kanban.execute import TaskExecutor
from gateway.kanban.sources import add_inbound_tasks, cron_ref, parse_inbox_ref
from gateway.kanban.store import TaskStore
from gateway.metrics import Metrics
from gateway.ops.overview import build_overview
from gateway.ops.recorder import OpsRecorder
from gateway.runtime.deliveries import Deliveries
from gateway.runtime.fly import FLY_API_SOCKET, suspend_machine
from gateway.runtime.inbox_worker import InboxWorker, relay_send
from gateway.runtime.watcher import IdleWatcher
from gateway.statedb import open_state_db
from gateway.telemetry.writer import TelemetryWriter
from relay.client.machine import ConnState
from relay.client.transport import RelayTransport, TransportConfig
from relay.protocol.frames import DEFAULT_MAX_MESSAGE_LENGTH

log = logging.getLogger("gateway.sidecar")

SHUTDOWN_FLIP_BUDGET_S = 2.0


class Sidecar:
    """One sidecar process. ``await start()``, then ``await serve_forever()`` or ``shutdown()``.

    ``host``/``port``: where the HTTP surface listens (port 0 picks a free one; ``self.port``
    then holds it). ``env`` is the environment used for provider keys and Fly ids.

    ``metrics_port``: the internal port serving ``/metrics`` on the same host (SPEC 8.3).
    ``None`` (the default here) serves none; an int is a port, 0 a free one (``self.metrics_port``
    then holds it). The CLI maps ``METRICS_PORT=0`` / ``--metrics-port 0`` ("off") to ``None``.

    ``loader``: how a reload (SIGHUP, ``/admin/notify``) reads the config again; default
    ``load_config(config.home, env, strict=True)``. ``dev`` passes one that re-applies its
    demo overrides.
    """

    def __init__(
        self,
        config: Config,
        *,
        host: str = "127.0.0.1",
        port: int = 8080,
        clock: Clock | None = None,
        env: Mapping[str, str] | None = None,
        metrics_port: int | None = None,
        loader: Callable[[], Config] | None = None,
    ) -> None:
        self.config = config
        self.host = host
        self.port = port
        self.metrics_port = metrics_port
        self._loader = loader
        self.dormant_since: float | None = None  # wall time of the last entry into dormant
        self.clock: Clock = clock or SystemClock()
        self.env = dict(os.environ if env is None else env)
        self.metrics = Metrics()
        self.activity = Activity(self.clock)
        self.resume = ResumeDetector(self.clock.wall(), self.clock.monotonic())
        self.admin_token = secrets.token_hex(16)
        self.last_poke_at: float | None = None
        self.presence_streams = 0
        self.fly_api_socket = FLY_API_SOCKET
        self.transport: RelayTransport | None = None
        if config.relay_url:
            self.transport = RelayTransport(
                TransportConfig(
                    url=config.relay_url,
                    identities=config.relay_identities,
                    gateway_id=config.relay_id,
                    secret=config.relay_secret,
                    wake_url=config.wake_url,
                    max_frame_bytes=config.relay_max_frame_bytes,
                    ack_timeout_s=config.scale_to_zero.ack_timeout_s,
                ),
                on_inbound=self._on_inbound,
                on_interrupt=self._on_interrupt,
                clock=self.clock,
            )
        self.blockers = arm_blockers(
            ArmInputs(
                enabled=config.scale_to_zero.enabled,
                relay_only=True,
                wake_url=config.wake_url,
                relay_configured=self.transport is not None,
                external_waker=config.scale_to_zero.external_waker,
            )
        )
        self.watcher = IdleWatcher(
            clock=self.clock,
            settings=config.scale_to_zero,
            activity=self.activity,
            transport=self.transport,
            blockers=self.blockers,
        )
        self.watcher.on_dormant.append(self._entered_dormant)
        self.watcher.on_live.append(self._left_dormant)
        self._tasks: list[asyncio.Task[Any]] = []
        self._suspend_task: asyncio.Task[None] | None = None
        self._runner: web.AppRunner | None = None
        self._internal_runner: web.AppRunner | None = None
        self._stop = asyncio.Event()
        self._background: set[asyncio.Task[None]] = set()
        self._started = False  # the scheduler and the board exist (built in start())
        self.http: aiohttp.ClientSession
        self.inbox: InboxStore

    # --- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        """Open state, serve HTTP, queue unfinished inbox work, start the relay and watcher.

        Raises ``StartupError`` (before anything else opens) when the app port or the internal
        (metrics) port is in use or ``$HERMES_HOME`` cannot be created or written.
        """
        listener = bind_listener(self.host, self.port, "sidecar HTTP")
        internal: socket.socket | None = None
        try:
            if self.metrics_port is not None:
                internal = bind_listener(self.host, self.metrics_port, "sidecar metrics")
                self.metrics_port = internal.getsockname()[1]
            prepare_home(self.config.home)
            self.port = listener.getsockname()[1]
            await self._open(listener, internal)
        except BaseException:
            listener.close()
            if internal is not None:
                internal.close()
            await self._abort_start()
            raise
        log.info(
            "hermes-sidecar started on http://%s:%d (state %s, home %s, metrics %s)",
            self.host,
            self.port,
            self.state_name(),
            self.config.home,
            f"on port {self.metrics_port}" if self.metrics_port is not None else "off",
        )

    async def _abort_start(self) -> None:
        """Close whatever a failed ``start()`` opened (no thread or socket left behind)."""
        for t in self._tasks:
            t.cancel()
        if self.transport is not None:
            with contextlib.suppress(Exception):
                await self.transport.disconnect()
        for closer in ("_runner", "_internal_runner", "telemetry", "ops", "http", "db"):
            obj = getattr(self, closer, None)
            if obj is None:
                continue
            with contextlib.suppress(Exception):
                if closer in ("_runner", "_internal_runner"):
                    await obj.cleanup()
                elif closer == "telemetry":
                    await obj.aclose()
                elif closer == "ops":
                    await obj.history.aclose()
                else:
                    await obj.close()

    async def _open(self, listener: socket.socket, internal: socket.socket | None) -> None:
        self.db = await open_state_db(self.config.state_db)
        self.inbox = InboxStore(self.db)
        # State history for the operator page (SPEC 8.5): hooks queue rows, never block.
        self.ops = OpsRecorder(self.db, clock=self.clock, metrics=self.metrics, transport=self.transport)
        self.ops.start(self.watcher.state.value)
        self.watcher.on_transition.append(self.ops.on_watcher)
        self.watcher.on_wake.append(self.ops.on_wake)
        if self.transport is not None:
            self.transport.listeners.append(self.ops.on_relay)
        self.http = aiohttp.ClientSession()
        self.cron_store = CronStore(self.db)
        self.deliveries = Deliveries(self.cron_store, self.transport, self.clock, self.activity)
        self.telemetry = TelemetryWriter(
            self.db,
            clock=self.clock,
            on_record=self.metrics.observe_skill,
            on_dropped=self.metrics.telemetry_dropped.inc,
        )
        self.telemetry.start()
        self.cron_ctx = CronContext(
            config=self.config,
            store=self.cron_store,
            clock=self.clock,
            http=self.http,
            env=self.env,
            deliver=self.deliver,
            telemetry=self.telemetry,
            on_start=self.ops.on_cron_start,
        )
        t = self.transport
        self.worker = InboxWorker(
            inbox=self.inbox,
            config=self.config,
            http=self.http,
            env=self.env,
            clock=self.clock,
            send=relay_send(
                t,
                lambda: self.board.accepting,
                self.clock,
                give_up_hours=self.config.delivery_give_up_hours,
                bot_id_for=self._bot_id_for,
            ),
            chunk_limit=lambda: t.max_message_length if t is not None else DEFAULT_MAX_MESSAGE_LENGTH,
            on_report=self.metrics.observe_turn,
            ledger=SpendLedger(self.db),
            on_model_retry=self.metrics.model_retries.inc,
            conversation=Conversation(SessionStore(self.db), self.config),
        )
        self.tasks = TaskStore(self.db)
        self.board = Board(
            self.tasks,
            config=self.config,
            clock=self.clock,
            activity=self.activity,
            execute=TaskExecutor(self.cron_ctx, self.inbox, self.worker.turn),
            on_blocked=self._task_blocked,
        )
        self.scheduler = CronScheduler(
            self.cron_ctx,
            activity=self.activity,
            max_concurrent=self.config.cron_max_concurrent,
            on_due=self._on_due,
            run_fn=self._run_cron_task,
        )
        self._started = True
        self.scheduler.on_planned = self.watcher.kick
        self.watcher.next_due_wall = lambda: self.scheduler.next_due
        if self.transport is not None:
            self.transport.listeners.append(self.deliveries.on_transport_change)
        self._runner = web.AppRunner(build_app(self), handle_signals=False, access_log=None)
        await self._runner.setup()
        await web.SockSite(self._runner, listener).start()
        if internal is not None:
            self._internal_runner = web.AppRunner(
                build_internal_app(self), handle_signals=False, access_log=None
            )
            await self._internal_runner.setup()
            await web.SockSite(self._internal_runner, internal).start()
        self._write_discovery()
        leftover = await self.inbox.unfinished()
        if leftover:
            log.info("resuming %d unfinished inbox item(s) from the last run", len(leftover))
            async with write_tx(self.db):  # a no-op for items whose task exists
                await add_inbound_tasks(self.tasks, leftover, self.clock.wall())
        self._tasks.append(asyncio.create_task(self.board.run(), name="dispatch-board"))
        self._tasks.append(asyncio.create_task(self._retention(), name="history-retention"))
        if self.transport is not None:
            await self.transport.start()
        else:
            log.info("no relay configured: cron-only mode")
        self._tasks.append(asyncio.create_task(self.scheduler.run(), name="cron-scheduler"))
        self._tasks.append(asyncio.create_task(self.watcher.run(), name="idle-watcher"))

    async def serve_forever(self) -> None:
        await self._stop.wait()

    def request_stop(self) -> None:
        self._stop.set()

    async def shutdown(self) -> None:
        """Graceful stop: no new turns, running turns finish (bounded), flip, exit cleanly.

        Unfinished inbox items stay ``pending``/``running`` in state.db for the next start.
        """
        log.info("shutdown: accepting no new turns; %d task(s) running", self.board.running)
        self.board.accepting = False
        self.watcher.dormant.set()  # ends /presence streams: this process is going away
        await self.board.stop(self.config.shutdown_timeout_s)
        if self.transport is not None and self.transport.state is ConnState.CONNECTED:
            with contextlib.suppress(TimeoutError):
                flipped = await asyncio.wait_for(self.transport.go_dormant(), SHUTDOWN_FLIP_BUDGET_S)
                log.info("shutdown: relay flip %s", "acknowledged" if flipped else "not acked")
        if self.transport is not None:
            await self.transport.disconnect()
        for t in [*self._tasks, *self._background]:
            t.cancel()
        for t in [*self._tasks, *self._background]:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        if self._suspend_task is not None:
            self._suspend_task.cancel()
        if self._runner is not None:
            await self._runner.cleanup()
        if self._internal_runner is not None:
            await self._internal_runner.cleanup()
        await self.telemetry.aclose()
        await self.ops.aclose(self.watcher.state.value)
        await self.http.close()
        await self.db.close()
        self._remove_discovery()
        log.info("shutdown complete")

    # --- config reload -----------------------------------------------------------------------

    def reload_config(self) -> bool:
        """Re-read config.yaml and the environment (SIGHUP, every ``/admin/notify``, SPEC 8.3).

        The new values are copied into the one ``Config`` object every component holds
        (``Config.update_from``), so the next turn, job or dispatch sees them. A config that
        does not load keeps the current one with one WARNING; False then. Settings fixed at
        start (the relay, the arm decision, cron concurrency) log one WARNING when changed.
        """
        try:
            fresh = (
                self._loader()
                if self._loader is not None
                else load_config(self.config.home, self.env, strict=True)
            )
        except StartupError as exc:
            log.warning("config reload failed, keeping the current config: %s", exc)
            return False
        except Exception as exc:  # a loader bug must not take the sidecar down
            log.warning("config reload failed, keeping the current config: %s: %s", type(exc).__name__, exc)
            return False
        pending = self.config.update_from(fresh)
        if pending:
            log.warning("config reloaded; changed but only applied at the next start: %s", ", ".join(pending))
        else:
            log.info("config reloaded")
        if self._started:
            self.board.kick()
        return True

    # --- discovery file --------------------------------------------------------------------

    @property
    def discovery_path(self) -> Any:
        return self.config.home / "sidecar.json"

    def _write_discovery(self) -> None:
        path = self.discovery_path
        tmp = path.with_suffix(".json.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(
                {"port": self.port, "host": self.host, "pid": os.getpid(), "token": self.admin_token}, f
            )
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)

    def _remove_discovery(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            data = json.loads(self.discovery_path.read_text())
            if data.get("pid") == os.getpid():
                self.discovery_path.unlink()

    # --- relay handlers ----------------------------------------------------------------------

    def _on_due(self) -> None:
        self.watcher.wake("due job")

    def _bot_id_for(self, platform: str) -> str | None:
        """The ``botId`` a reply on ``platform`` is sent from: the first configured identity."""
        for p, bot_id in self.config.relay_identities:
            if p == platform:
                return bot_id
        return None

    async def _retention(self) -> None:
        """Delete conversation messages older than ``agent.history_retention_days`` (SPEC 8.2)
        and state history older than ``gateway.history_retention_days`` (SPEC 8.5): at start,
        then once a day."""
        sessions = SessionStore(self.db)
        while True:
            await self.ops.prune(self.config.ops_history_retention_days)
            cutoff = self.clock.wall() - self.config.history_retention_days * 86400.0
            try:
                pruned = await sessions.prune(cutoff)
            except Exception as exc:  # retention is housekeeping: never stop the sidecar for it
                log.warning("history retention failed: %s", exc)
            else:
                if pruned:
                    log.info(
                        "history retention: %d message(s) older than %g day(s) deleted",
                        pruned,
                        self.config.history_retention_days,
                    )
            await self.clock.sleep(86400.0)

    async def _on_inbound(self, frames: list[dict[str, Any]]) -> None:
        now = self.clock.wall()
        admission = await self.inbox.admit(
            frames, now, in_tx=lambda items: add_inbound_tasks(self.tasks, items, now)
        )
        new, dupes = admission.new, admission.duplicates
        self.ops.on_inbound_persisted()  # the transport acks this batch next (wake latency)
        for rejected in admission.rejected:
            self.metrics.rejected.labels(reason=rejected.reason).inc()
            log.warning(
                "inbound frame quarantined (bufferId %r, %s): %s",
                rejected.buffer_id,
                rejected.reason,
                rejected.error,
            )
        if dupes:
            self.metrics.duplicates.inc(dupes)
        if new:
            self.metrics.inbound.inc(len(new))
            log.info(
                "admitted %d inbound message(s)%s",
                len(new),
                f" ({dupes} duplicate(s) re-acked)" if dupes else "",
            )
            self.activity.inbound()
            self.board.kick()

    async def _task_blocked(self, task_id: int, error: str) -> None:
        """An inbound task blocked by an unknown profile: the user hears why (in the
        background, counted as work), and its inbox row is closed."""
        task = await self.tasks.get(task_id)
        item_id = None if task is None else parse_inbox_ref(task.ref)  # None: not inbound
        item = None if item_id is None else await self.inbox.get(item_id)
        if item is None:
            return

        async def refuse() -> None:
            with self.activity.work("turn"):
                await self.worker.refuse(item, error)

        self._background.add(t := asyncio.create_task(refuse()))
        t.add_done_callback(self._background.discard)

    async def _run_cron_task(self, ctx: CronContext, job: Job, scheduled_for: float) -> int | None:
        """The scheduler's ``run_fn``: the occurrence becomes a board task on the job's profile
        and runs when the caps allow; returns its ledger run id (None: another process has it).
        A task blocked by an unknown profile is recorded on the ledger as failed."""
        task = await self.board.submit(
            title=f"cron {job.name or job.id}",
            body=job.prompt,
            assignee=job.profile or "default",
            source="cron",
            ref=cron_ref(job.id, scheduled_for),
        )
        if task is None:
            return None
        outcome = await self.board.wait(task.id)
        profile = job.profile or "default"
        if outcome.status == "blocked":
            self.metrics.observe_turn(TurnReport("cron", profile, "blocked"))
            return await ctx.store.record(
                job.id, scheduled_for, "failed", self.clock.wall(), error=outcome.error
            )
        run_id: int | None = json.loads(outcome.result)["run_id"] if outcome.result else None
        row = None if run_id is None else await ctx.store.run_row(run_id)
        if row is not None:
            self.metrics.observe_turn(
                TurnReport("cron", profile, str(row["status"]), row.get("model"), row.get("cost_usd"))
            )
        return run_id

    async def _on_interrupt(self, frame: dict[str, Any]) -> None:
        log.info("interrupt_inbound for session %r", frame.get("session_key"))

    # --- wake, resume, dormancy ----------------------------------------------------------

    def on_poke(self) -> None:
        """A poke, a resume or a change notification: the scheduler re-plans at once."""
        if self._started:
            self.scheduler.replan()
            self.board.kick()

    async def deliver(self, platform: str, chat_id: str, text: str) -> None:
        """Cron results and alerts: see ``Deliveries.deliver``."""
        await self.deliveries.deliver(platform, chat_id, text)

    async def run_job_now(self, job_id: str) -> dict[str, Any] | None:
        """``cron run``: one occurrence now through the scheduler's path; the ledger row."""
        job = await self.cron_store.get(job_id)
        if job is None:
            return None
        with self.activity.work("job"):
            run_id = await self._run_cron_task(self.cron_ctx, job, self.clock.wall())
        return None if run_id is None else await self.cron_store.run_row(run_id)

    def check_resume(self) -> None:
        """Wake if the wall clock jumped against the monotonic one (a resumed machine)."""
        jump = self.resume.check(self.clock.wall(), self.clock.monotonic())
        if jump is not None:
            log.info("resume detected: wall clock moved %.1f s against monotonic", jump)
            self.watcher.wake("resume")
            self.on_poke()

    def _entered_dormant(self) -> None:
        self.dormant_since = self.clock.wall()
        self.metrics.transitions.labels(state="dormant").inc()
        if self.config.scale_to_zero.suspend == "fly-api":
            self._suspend_task = asyncio.create_task(self._suspend_after_cooldown())

    def _left_dormant(self) -> None:
        self.metrics.transitions.labels(state="live").inc()
        if self._suspend_task is not None:
            self._suspend_task.cancel()
            self._suspend_task = None

    async def _suspend_after_cooldown(self) -> None:
        await self.clock.sleep(self.config.scale_to_zero.cooldown_s)
        if self.watcher.state is WatchState.DORMANT:
            await suspend_machine(self.env, socket_path=self.fly_api_socket)

    # --- status --------------------------------------------------------------------------

    async def overview(self) -> dict[str, Any]:
        """The operator overview (``GET /api/overview``, the page's data; SPEC 8.5)."""
        await self.ops.sync_cron_runs()
        return await build_overview(self.db, self.config, self.env, self.state_name(), self.clock.wall())

    def refresh_gauges(self) -> None:
        """Bring the point-in-time gauges of ``/metrics`` up to date."""
        t, w = self.transport, self.watcher
        self.metrics.running.set(sum(self.activity.running.values()))
        for s in ("live", "draining", "dormant"):
            self.metrics.state.labels(state=s).set(1 if w.state.value == s else 0)
        self.metrics.relay_connected.set(1 if t is not None and t.connected else 0)
        self.metrics.sync_dial_attempts(t.dial_attempts if t is not None else 0)

    def state_name(self) -> str:
        if self.transport is not None and self.transport.state is ConnState.REVOKED:
            return "revoked"
        if self.transport is None and self.watcher.state is WatchState.LIVE:
            return "cron-only"
        return self.watcher.state.value

    async def status(self) -> dict[str, Any]:
        """The ``/status`` document (SPEC section 2)."""
        now = self.clock.monotonic()
        t = self.transport
        w = self.watcher
        cooldown = None
        if w.cooldown_until is not None and w.cooldown_until > now:
            cooldown = rfc3339(self.clock.wall() + (w.cooldown_until - now))
        last = self.activity.last_inbound_wall
        return {
            "state": self.state_name(),
            "armed": w.armed,
            "arm_blockers": list(self.blockers),
            "last_inbound_at": rfc3339(last) if last is not None else None,
            "idle_for_s": round(now - self.activity.idle_since, 3),
            "idle_timeout_s": self.config.scale_to_zero.idle_timeout_s,
            "cooldown_until": cooldown,
            "dormant_since": (
                rfc3339(self.dormant_since)
                if w.state is WatchState.DORMANT and self.dormant_since is not None
                else None
            ),
            "running_turns": self.board.running,  # every agent turn is a board task
            "tasks": await self.tasks.counts(),
            "next_job_due_at": (
                rfc3339(self.scheduler.next_due) if self.scheduler.next_due is not None else None
            ),
            "jobs_may_run_late": bool(
                w.state is WatchState.DORMANT and (t is None or not t.supports_wake_at)
            ),
            "drift_alerts": await self.cron_store.drift_episodes(),
            "substitution_alerts": await SpendLedger(self.db).substitutions(),
            "relay": {
                "connected": bool(t is not None and t.connected),
                "dial_attempts": t.dial_attempts if t is not None else 0,
                "last_close_code": t.last_close_code if t is not None else None,
                "supports_wake_at": bool(t is not None and t.supports_wake_at),
            },
        }
