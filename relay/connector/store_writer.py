"""The connector store's single writer: every write is queued and grouped into one
``synchronous=FULL`` transaction (group commit); one queued job never spans two transactions.
``GroupWriter`` is the backend-neutral queue, batching and settling (the PostgreSQL store in
``relay/connector/pg`` uses it too); ``StoreWriter`` is its SQLite form, the base the table
stores (``store``, ``store_platform``, ``store_idempotency``) share.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import sqlite3
from typing import Any

import aiosqlite

from common.sqlite import execute_rows, run_tx

log = logging.getLogger("relay.store")

ACK_SQL = "UPDATE buffer SET acked_at = ? WHERE buffer_id = ? AND gateway_id = ? AND acked_at IS NULL"
"""The buffer ack statement; the writer recognises it (by identity) to settle ``_acking``."""

Statement = tuple[str, tuple[Any, ...]]
"""One SQL statement and its parameters."""
Job = tuple[tuple[Statement, ...], "asyncio.Future[None] | None"]
"""One queued job: statements that commit together, and the future its caller awaits (or None)."""


PRUNE_SQL = (
    ("DELETE FROM buffer WHERE acked_at IS NOT NULL AND acked_at < {p}", "before"),
    ("DELETE FROM outbox WHERE at < {p}", "before"),
    ("DELETE FROM telegram_updates WHERE created_at < {p}", "before"),
    ("DELETE FROM idempotency WHERE created_at < {p}", "keys_before"),
    ("DELETE FROM platform_sends WHERE done_at IS NOT NULL AND done_at < {p}", "keys_before"),
)
"""``GroupWriter.prune``'s statements, each with its one parameter's name ({p}: the dialect's
placeholder). Never an unacked entry or a platform send not yet done."""


class GroupWriter:
    """One writer task draining a queue of jobs (each a tuple of statements that commit
    together) in groups of up to 5000, one transaction per group (``_commit``, per backend);
    with ``ack_lane``, a second one for the acks.
    ``ack_sql`` is the backend's buffer ack statement (recognised by identity to settle
    ``_acking``). Must be made inside a running event loop."""

    ack_sql: str = ACK_SQL
    placeholder: str = "?"
    """The backend's first bound parameter (``$1`` on PostgreSQL)."""
    ack_lane: bool = False
    """Acks get a queue and writer of their own (PostgreSQL: a group of acks alone, or of
    appends alone, is one round trip; mixed, five). An entry is acked only after its append
    committed, and this instance's reads count queued acks at once (``_acking``); the one write
    that must follow the acks sent before it, the flip, waits for them (``acks_committed``).
    SQLite keeps one queue: its one connection would take the groups in turn."""

    def __init__(self) -> None:
        self._queue: asyncio.Queue[Job] = asyncio.Queue()
        self._acks: asyncio.Queue[Job] = asyncio.Queue() if self.ack_lane else self._queue
        self._writers = [asyncio.create_task(self._write_loop(self._queue), name="relay-store-writer")]
        if self.ack_lane:
            self._writers.append(asyncio.create_task(self._write_loop(self._acks), name="relay-store-acks"))
        # Acks received but not yet committed: reads treat them as acked already, so a replay
        # never resends an acked entry and needs no flush (and no fsync) first.
        self._acking: set[str] = set()

    async def close(self) -> None:
        """Flush what is queued (errors ignored), stop the writer and close both connections."""
        with contextlib.suppress(Exception):
            await self.flush()
        for writer in self._writers:
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await writer
        await self._close_connections()

    async def _close_connections(self) -> None:
        """Close the backend's connections (after the writer stopped)."""
        raise NotImplementedError

    async def _commit(self, jobs: list[Job]) -> None:
        """Run ``jobs`` in one transaction; roll it back and raise on any error."""
        raise NotImplementedError

    def ack(self, gateway_id: str, buffer_id: str, now: float) -> None:
        """Mark an entry acked (queued; committed with the next group, seen by reads at once)."""
        self._acking.add(buffer_id)
        self._enqueue_job(((self.ack_sql, (now, buffer_id, gateway_id)),), wait=False, queue=self._acks)

    def ack_many(self, gateway_id: str, buffer_ids: list[str], now: float) -> None:
        """Mark many entries acked (PROTOCOL.md 7.3's batch): one queued job, one commit (on
        SQLite one ``UPDATE`` for the run, ``apply_statements``); seen by reads at once."""
        if not buffer_ids:
            return
        self._acking.update(buffer_ids)
        statements = tuple((self.ack_sql, (now, bid, gateway_id)) for bid in buffer_ids)
        self._enqueue_job(statements, wait=False, queue=self._acks)

    async def prune(self, before: float, keys_before: float) -> None:
        """Forget what nobody needs any more, in one transaction (awaits its commit): buffer
        entries acked before ``before``, outbox rows and seen Telegram update ids from before
        ``before``; idempotency keys and finished platform sends from before ``keys_before``
        (Unix seconds). Unacked entries and unfinished sends are never touched."""
        values = {"before": before, "keys_before": keys_before}
        statements = tuple((sql.format(p=self.placeholder), (values[name],)) for sql, name in PRUNE_SQL)
        fut = self._enqueue_job(statements, wait=True)
        assert fut is not None
        await fut

    # --- writer ----------------------------------------------------------------------------

    def _enqueue(self, sql: str, params: tuple[Any, ...], wait: bool) -> asyncio.Future[None] | None:
        return self._enqueue_job(((sql, params),), wait)

    def _enqueue_job(
        self, statements: tuple[Statement, ...], wait: bool, queue: asyncio.Queue[Job] | None = None
    ) -> asyncio.Future[None] | None:
        """Queue statements that must commit together (one queue item is never split), on the
        main queue unless ``queue`` names the ack lane."""
        fut = asyncio.get_running_loop().create_future() if wait else None
        (self._queue if queue is None else queue).put_nowait((statements, fut))
        return fut

    async def _write_loop(self, queue: asyncio.Queue[Job]) -> None:
        while True:
            batch = [await queue.get()]
            while not queue.empty() and len(batch) < 5000:
                batch.append(queue.get_nowait())
            try:
                await self._commit(batch)
            except Exception as exc:
                # One bad job (a duplicate key, a constraint) must not take the jobs grouped
                # with it down: each is retried in a transaction of its own, so only the bad
                # one fails, and an ack never silently disappears.
                log.warning(
                    "connector store group write failed (%s); retrying its %d job(s) one by one",
                    exc,
                    len(batch),
                )
                for job in batch:
                    try:
                        await self._commit([job])
                    except Exception as job_exc:
                        log.error("connector store write failed: %s", job_exc)
                        self._settle([job], job_exc)
                    else:
                        self._settle([job], None)
                continue
            self._settle(batch, None)

    def _settle(self, jobs: list[Job], error: Exception | None) -> None:
        """Resolve the jobs' futures (``error`` None: committed) and release their acks from
        the in-flight set either way (a failed ack is unacked again: the entry is resent)."""
        for statements, fut in jobs:
            for sql, params in statements:
                if sql is self.ack_sql:
                    self._acking.discard(params[1])
            if fut is not None and not fut.done():
                if error is None:
                    fut.set_result(None)
                else:
                    fut.set_exception(error)

    async def acks_committed(self) -> None:
        """Return once every ack queued before this call has committed: a write that states
        what the acks mean (the flip: "all I was sent is persisted") goes after them, as it
        would in one queue (a restart or another instance reads the tables, not ``_acking``).
        Immediate without an ack lane."""
        if self._acks is self._queue:
            return
        fut = self._enqueue_job((("", ()),), wait=True, queue=self._acks)
        assert fut is not None
        await fut

    async def flush(self) -> None:
        """Return once everything queued before this call has committed (both lanes)."""
        fut = self._enqueue("", (), wait=True)
        assert fut is not None
        await asyncio.gather(fut, self.acks_committed())


class StoreWriter(GroupWriter):
    """The SQLite write connection ``wdb`` (one writer task) and the read connection ``rdb``
    (WAL: reads only see committed rows). Must be made inside a running event loop."""

    def __init__(self, wdb: aiosqlite.Connection, rdb: aiosqlite.Connection) -> None:
        self._w = wdb
        self._r = rdb
        super().__init__()

    async def _close_connections(self) -> None:
        await self._w.close()
        await self._r.close()

    async def _commit(self, jobs: list[Job]) -> None:
        """Run ``jobs`` in one transaction in one hop to the write connection's thread
        (``run_tx``: BEGIN IMMEDIATE ... COMMIT, rolled back and raised on any error)."""
        ops = [st for statements, _ in jobs for st in statements]
        await run_tx(self._w, lambda conn: apply_statements(conn, ops))


_ACK_MANY = (
    "UPDATE buffer SET acked_at = ? WHERE +gateway_id = ? AND acked_at IS NULL"
    " AND buffer_id IN (SELECT value FROM json_each(?))"
)
"""``ACK_SQL`` for many buffer ids: the unary ``+`` keeps SQLite on the ``buffer_id`` index
(not a walk of the gateway's unacked entries)."""
_ROW = re.compile(r"^(INSERT [^;]* VALUES )(\(\?(?:, \?)*\))$")
"""A one-row ``INSERT ... VALUES (?, ...)`` with nothing after its values."""


def apply_statements(conn: sqlite3.Connection, ops: list[Statement]) -> None:
    """Run ``ops`` in order on the database thread, inside the caller's transaction, with as
    few statement steps as the same effect allows: consecutive acks of one gateway at one
    time become one ``UPDATE ... IN (json_each)``; consecutive rows of one ``INSERT ... VALUES``
    become multi-row statements of up to ``ROWS_PER_INSERT`` rows; anything else runs as one
    ``executemany`` per run of equal SQL. Each step lets go of the GIL and must win it back
    from the event loop (issue #16): one step per row was most of a busy connector's wait.
    Raises ``sqlite3.Error`` as the statements do (a conflicting row as ``executemany``
    would)."""
    i = 0
    while i < len(ops):
        sql = ops[i][0]
        j = i
        while j < len(ops) and ops[j][0] == sql and _same_ack(sql, ops[i][1], ops[j][1]):
            j += 1
        run = [params for _, params in ops[i:j]]
        single = _ROW.match(sql) if sql else None
        if not sql:
            pass  # a flush marker
        elif sql == ACK_SQL:
            now, _, gateway_id = run[0]
            conn.execute(_ACK_MANY, (now, gateway_id, json.dumps([p[1] for p in run])))
        elif single is not None and len(run) > 1:
            head, one = single.groups()
            for _chunk, _cur in execute_rows(conn, head, one, run):
                pass  # each iteration runs one multi-row statement
        else:
            conn.executemany(sql, run)
        i = j


def _same_ack(sql: str, first: tuple[Any, ...], other: tuple[Any, ...]) -> bool:
    """Whether ``other`` joins ``first``'s run: always, except acks of another time or gateway."""
    return sql != ACK_SQL or (first[0] == other[0] and first[2] == other[2])
