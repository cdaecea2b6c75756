"""Store contract fixtures, shaped like APScheduler 4's ``tests/conftest.py``.

Each ``*_store`` fixture is parametrized over the backends in its ``*_BACKENDS`` table (an id and
an async context manager that yields a ready, empty store). The contract modules only ask for
the store, so another backend (PostgreSQL, say) joins by adding one entry to a table: every
contract test then runs against it too, with no new test.

Some contracts need a state the store has no public writer for (a task claimed by the
dispatcher, a cron run owned by another process). The ``*_SEAMS`` tables hold those per backend
too, so the tests never reach into a connection themselves.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from gateway.conversation.store import SessionStore
from gateway.cron.deliveries_store import DeliveryStore
from gateway.cron.store import CronStore
from gateway.kanban.store import TaskStore
from gateway.statedb import open_state_db
from relay.connector.store import BufferStore
from relay.connector.store_api import ConnectorStore
from tests.pgcluster import fresh_schema

Backend = Callable[[Path], AbstractAsyncContextManager[Any]]


@asynccontextmanager
async def _sqlite_state(tmp_path: Path, make: Callable[[Any], Any]) -> AsyncIterator[Any]:
    db = await open_state_db(tmp_path / "state.db")
    try:
        yield make(db)
    finally:
        await db.close()


@asynccontextmanager
async def _sqlite_buffer(tmp_path: Path) -> AsyncIterator[BufferStore]:
    store = await BufferStore.open(str(tmp_path / "relay.db"))
    try:
        yield store
    finally:
        await store.close()


@asynccontextmanager
async def _pg_buffer(url: str) -> AsyncIterator[ConnectorStore]:
    from relay.connector.pg.store import PgStore

    store = await PgStore.open(url)
    try:
        yield store
    finally:
        await store.close()


TASK_BACKENDS: dict[str, Backend] = {"sqlite": lambda p: _sqlite_state(p, TaskStore)}
CRON_BACKENDS: dict[str, Backend] = {"sqlite": lambda p: _sqlite_state(p, CronStore)}
DELIVERY_BACKENDS: dict[str, Backend] = {"sqlite": lambda p: _sqlite_state(p, DeliveryStore)}
SESSION_BACKENDS: dict[str, Backend] = {"sqlite": lambda p: _sqlite_state(p, SessionStore)}
BUFFER_BACKENDS: dict[str, Backend] = {"sqlite": _sqlite_buffer}
"""SQLite backends, made in a test's ``tmp_path``; PostgreSQL ones (``PG_BUFFER_BACKENDS``) are
made on a fresh schema of the session's server (``pg_server`` in ``tests/conftest.py``)."""
PG_BUFFER_BACKENDS: dict[str, Callable[[str], AbstractAsyncContextManager[Any]]] = {"postgres": _pg_buffer}


# --- seams: states the stores have no public writer for ------------------------------------


async def _sqlite_claim_task(
    store: TaskStore, task_id: int, lock: str | None, expires_at: float | None, now: float
) -> None:
    """A task put in ``running`` with any claim, also ones ``TaskStore.claim`` never writes (no
    owner, a lease already over): what requeue_lapsed must cope with after a crash."""
    await store.db.execute(
        "UPDATE tasks SET status = 'running', started_at = ?, claim_lock = ?, claim_expires_at = ?"
        " WHERE id = ?",
        (now, lock, expires_at, task_id),
    )


async def _sqlite_set_run_owner(store: CronStore, run_id: int, owner: str | None, lease_until: float) -> None:
    """A ledger row claimed by another process (``claim`` always records this one)."""
    await store.db.execute(
        "UPDATE job_runs SET owner = ?, lease_until = ? WHERE id = ?", (owner, lease_until, run_id)
    )


ClaimTask = Callable[[TaskStore, int, "str | None", "float | None", float], Awaitable[None]]
SetRunOwner = Callable[[CronStore, int, "str | None", float], Awaitable[None]]
TASK_SEAMS: dict[str, ClaimTask] = {"sqlite": _sqlite_claim_task}
CRON_SEAMS: dict[str, SetRunOwner] = {"sqlite": _sqlite_set_run_owner}


def _params(backends: dict[str, Backend]) -> list[Any]:
    return [pytest.param(name, id=name) for name in backends]


@pytest.fixture(params=_params(TASK_BACKENDS))
async def task_store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[TaskStore]:
    """An empty TaskStore on each backend."""
    async with TASK_BACKENDS[request.param](tmp_path) as store:
        yield store


@pytest.fixture(params=_params(CRON_BACKENDS))
async def cron_store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[CronStore]:
    """An empty CronStore on each backend."""
    async with CRON_BACKENDS[request.param](tmp_path) as store:
        yield store


@pytest.fixture(params=_params(DELIVERY_BACKENDS))
async def delivery_store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[DeliveryStore]:
    """An empty DeliveryStore on each backend."""
    async with DELIVERY_BACKENDS[request.param](tmp_path) as store:
        yield store


@pytest.fixture(params=_params(SESSION_BACKENDS))
async def session_store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[SessionStore]:
    """An empty SessionStore on each backend."""
    async with SESSION_BACKENDS[request.param](tmp_path) as store:
        yield store


@pytest.fixture(params=_params({**BUFFER_BACKENDS, **PG_BUFFER_BACKENDS}))
async def buffer_store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[ConnectorStore]:
    """An empty, open connector store on each backend (closed, and so flushed, afterwards)."""
    if request.param in PG_BUFFER_BACKENDS:
        server = request.getfixturevalue("pg_server")  # started on first use, once per run
        async with fresh_schema(server) as url, PG_BUFFER_BACKENDS[request.param](url) as store:
            yield store
        return
    async with BUFFER_BACKENDS[request.param](tmp_path) as store:
        yield store


@pytest.fixture
def claim_task(request: pytest.FixtureRequest) -> ClaimTask:
    """The ``task_store`` backend's way to put a task in ``running`` (the dispatcher's claim)."""
    return TASK_SEAMS[request.node.callspec.params["task_store"]]


@pytest.fixture
def set_run_owner(request: pytest.FixtureRequest) -> SetRunOwner:
    """The ``cron_store`` backend's way to give a ledger row another owner and lease."""
    return CRON_SEAMS[request.node.callspec.params["cron_store"]]
