"""The batched telemetry writer: ``record_skill_invocation`` queues a row and returns at once;
a background task writes the queue in one transaction when it reaches ``max_batch`` rows or
``flush_interval_s`` (250 ms) after the first queued row, whichever comes first. A burst of
runs therefore never waits on SQLite, and 1M rows go in as a few hundred ``executemany`` calls.

Telemetry is best effort by design: a failed write logs one WARNING naming the cause and the
number of rows dropped, bumps ``hermes_telemetry_dropped_rows_total``, and never fails a run.
``flush()`` writes everything queued so far (tests and ``cron run`` call it before reading);
``aclose()`` flushes and stops the task (shutdown).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import aiosqlite

from common.clock import Clock, SystemClock, wait_for_event
from gateway.telemetry.record import Invocation, insert_invocations

log = logging.getLogger("gateway.telemetry")

FLUSH_INTERVAL_S = 0.25
MAX_BATCH = 5000


class TelemetryWriter:
    """Queue of ``skill_invocations`` rows written in batches.

    ``db``: the state.db connection (writes go through ``write_tx``). ``clock``: times the flush
    interval (a FakeClock in tests). ``max_batch``: rows that trigger an immediate flush (> 0).
    ``on_record``: called with each queued ``Invocation`` (the sidecar's per-skill metrics).
    """

    def __init__(
        self,
        db: aiosqlite.Connection,
        *,
        clock: Clock | None = None,
        flush_interval_s: float = FLUSH_INTERVAL_S,
        max_batch: int = MAX_BATCH,
        on_record: Callable[[Invocation], None] | None = None,
        on_dropped: Callable[[int], None] | None = None,
    ) -> None:
        if max_batch <= 0:
            raise ValueError(f"max_batch must be a positive int, got {max_batch!r}")
        if flush_interval_s < 0:
            raise ValueError(f"flush_interval_s must be >= 0 seconds, got {flush_interval_s!r}")
        self.db = db
        self.clock: Clock = clock or SystemClock()
        self.flush_interval_s = flush_interval_s
        self.max_batch = max_batch
        self.on_record = on_record
        self.on_dropped = on_dropped
        self._queue: list[Invocation] = []
        self._queued = asyncio.Event()  # the queue went from empty to non-empty
        self._full = asyncio.Event()  # the queue reached max_batch
        self._lock = asyncio.Lock()  # one flush at a time keeps rows in order
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self.written = 0
        self.dropped = 0

    @property
    def queued(self) -> int:
        """Rows waiting for the next flush."""
        return len(self._queue)

    def start(self) -> None:
        """Start the background flusher (idempotent). Without it, rows wait for ``flush()``."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="telemetry-writer")

    def record(self, row: Invocation) -> None:
        """Queue one row; never blocks and never raises for a write problem."""
        self._queue.append(row)
        if self.on_record is not None:
            try:
                self.on_record(row)
            except Exception as exc:  # a metrics bug must not fail a run either
                log.warning("telemetry on_record hook failed: %s", exc)
        self._queued.set()
        if len(self._queue) >= self.max_batch:
            self._full.set()

    def record_many(self, rows: list[Invocation]) -> None:
        """Queue several rows (one cron run's skills)."""
        for r in rows:
            self.record(r)

    def record_skill_invocation(
        self,
        *,
        skill_name: str,
        invoked_at: float,
        completed_at: float | None = None,
        run_id: int | None = None,
        cron_id: str | None = None,
        skill_version: str | None = None,
        model: str | None = None,
        provider: str | None = None,
        duration_seconds: float | None = None,
        input_tokens: int | None = None,
        output_tokens: int | None = None,
        cache_read_tokens: int | None = None,
        cache_write_tokens: int | None = None,
        estimated_cost_usd: float | None = None,
        success: int | None = None,
        end_reason: str | None = None,
        quality_score: float | None = None,
    ) -> None:
        """Queue one invocation (keyword-only; times are Unix seconds, cost USD, ``success``
        1/0/None). ``duration_seconds`` defaults to ``completed_at - invoked_at``."""
        if duration_seconds is None and completed_at is not None:
            duration_seconds = completed_at - invoked_at
        self.record(
            Invocation(
                run_id,
                cron_id,
                skill_name,
                skill_version,
                invoked_at,
                completed_at,
                model,
                provider,
                duration_seconds,
                input_tokens,
                output_tokens,
                cache_read_tokens,
                cache_write_tokens,
                estimated_cost_usd,
                success,
                end_reason,
                quality_score,
            )
        )

    async def flush(self) -> int:
        """Write every queued row now; return how many were written (0 after a failure)."""
        async with self._lock:
            batch, self._queue = self._queue, []
            self._queued.clear()
            self._full.clear()
            if not batch:
                return 0
            try:
                await insert_invocations(self.db, batch)
            except Exception as exc:
                self.dropped += len(batch)
                if self.on_dropped is not None:
                    self.on_dropped(len(batch))
                log.warning("telemetry write failed, %d row(s) dropped: %s", len(batch), exc)
                return 0
            self.written += len(batch)
            return len(batch)

    async def _run(self) -> None:
        while not self._closing:
            await self._queued.wait()
            await wait_for_event(self.clock, self._full, self.flush_interval_s)
            await self.flush()

    async def aclose(self) -> None:
        """Write what is queued and stop the flusher. The task is asked to finish, not
        cancelled, so a batch is never cut off half-way through its write."""
        self._closing = True
        self._queued.set()
        self._full.set()
        if self._task is not None:
            await self._task
            self._task = None
        await self.flush()
