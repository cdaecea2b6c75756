"""The connector store's one interface (``ConnectorStore``) and the choice of backend by ``--db``.

Two backends pass the same contract (``tests/contracts/test_buffer_store.py``): SQLite
(``relay.connector.store.BufferStore``: a file, one connector process) and PostgreSQL
(``relay.connector.pg.store.PgStore``: a ``postgresql://`` URL, any number of connector
processes on one database). ``open_store`` picks one by the shape of ``--db``.
"""

from __future__ import annotations

import asyncio
import sqlite3
from typing import Any, Protocol
from urllib.parse import urlsplit

from common.errors import SidecarError
from relay.connector.store import BufferStore, GatewayRecord
from relay.connector.store_platform import PlatformSend

PG_SCHEMES = ("postgres", "postgresql")
"""URL schemes of ``--db`` that select the PostgreSQL store (anything else is a SQLite path)."""


class StoreIntegrityError(SidecarError):
    """A write broke a uniqueness rule (a ``buffer_id`` or an idempotency key stored already)."""


INTEGRITY_ERRORS: tuple[type[Exception], ...] = (sqlite3.IntegrityError, StoreIntegrityError)
"""What a duplicate write raises: ``sqlite3.IntegrityError`` on SQLite, ``StoreIntegrityError``
on PostgreSQL."""


def is_pg_url(db: str) -> bool:
    """True when ``db`` is a ``postgres://`` or ``postgresql://`` URL (case-insensitive scheme)."""
    scheme, sep, _ = db.partition("://")
    return bool(sep) and scheme.lower() in PG_SCHEMES


def redact_url(db: str) -> str:
    """``db`` with the password of a URL replaced by ``***`` (safe for logs and errors); a
    SQLite path comes back unchanged. Pure string work: it never fails, whatever ``db`` holds."""
    if not is_pg_url(db):
        return db
    scheme, _, rest = db.partition("://")
    cut = min((i for i in (rest.find("/"), rest.find("?"), rest.find("#")) if i >= 0), default=len(rest))
    netloc, tail = rest[:cut], rest[cut:]
    userinfo, at, host = netloc.rpartition("@")
    if not at or ":" not in userinfo:
        return db
    user = userinfo.partition(":")[0]
    return f"{scheme}://{user}:***@{host}{tail}"


class StoreOpenError(SidecarError):
    """The store named by ``--db`` cannot be opened; the message names the (redacted) URL and why."""


async def open_store(db: str) -> ConnectorStore:
    """The store for ``--db``: ``PgStore`` for a ``postgres(ql)://`` URL, else the SQLite
    ``BufferStore`` at that path.

    Raises ``StoreOpenError`` (PostgreSQL: asyncpg missing, bad URL, unreachable, refused; the
    password never appears), or ``OSError`` / ``sqlite3.Error`` for a SQLite file.
    """
    if not is_pg_url(db):
        return await BufferStore.open(db)
    try:
        from relay.connector.pg.store import PgStore
    except ImportError:
        raise StoreOpenError(
            f"{redact_url(db)}: PostgreSQL needs asyncpg; install hermes-sidecar[postgres]"
        ) from None
    try:
        return await PgStore.open(db)
    except ValueError as exc:  # asyncpg's URL parsing
        raise StoreOpenError(f"{redact_url(db)}: not a usable PostgreSQL URL: {_scrub(db, exc)}") from None
    except Exception as exc:  # asyncpg raises many kinds; each becomes one redacted line
        why = _scrub(db, exc)
        raise StoreOpenError(f"{redact_url(db)}: cannot open the connector database: {why}") from None


def _scrub(db: str, exc: Exception) -> str:
    """``exc`` as text (type name when it has none) with the URL's password cut out."""
    text = str(exc).strip() or type(exc).__name__
    try:
        password = urlsplit(db).password
    except ValueError:
        password = None
    if password:
        text = text.replace(password, "***")
    first = text.splitlines()[0] if text else type(exc).__name__
    return first if len(first) <= 300 else first[:297] + "..."


class ConnectorStore(Protocol):
    """The connector's durable state, whatever the backend. The docstrings of
    ``relay.connector.store.BufferStore`` (and its mix-ins) are the contract of each member.

    Writes go through one group-commit writer per process; the awaited ones return after their
    transaction committed and raise its error (``INTEGRITY_ERRORS`` for a duplicate key) there.
    Reads see committed rows only, except acks: a received ack counts at once.
    """

    async def append(
        self,
        *,
        buffer_id: str,
        gateway_id: str,
        platform: str,
        bot_id: str,
        chat_id: str,
        frame: str,
        now: float,
        telegram_update: tuple[str, int] | None = None,
    ) -> None: ...

    async def update_seen(self, bot_id: str, update_id: int) -> bool: ...

    def ack(self, gateway_id: str, buffer_id: str, now: float) -> None: ...

    def ack_many(self, gateway_id: str, buffer_ids: list[str], now: float) -> None: ...

    async def unacked_after(self, gateway_id: str, after_seq: int, limit: int) -> list[tuple[int, str]]: ...

    async def unacked_count(self, gateway_id: str) -> int: ...

    async def buffer_rows(self) -> list[dict[str, Any]]: ...

    async def remember(
        self, gateway_id: str, platform: str, bot_id: str, wake_url: str | None, now: float
    ) -> None: ...

    async def set_flip(self, gateway_id: str, flipped: bool, wake_at: float | None, now: float) -> None: ...

    def clear_flip(self, gateway_id: str, now: float) -> None: ...

    async def identities(self) -> dict[tuple[str, str], str]: ...

    async def gateways(self) -> dict[str, GatewayRecord]: ...

    def record_outbound(
        self,
        *,
        gateway_id: str,
        platform: str,
        bot_id: str,
        action: dict[str, Any],
        now: float,
        idempotency_key: str | None = None,
        result: dict[str, Any] | None = None,
        platform_send: tuple[str, str | None] | None = None,
    ) -> asyncio.Future[None]: ...

    async def outbox(self, chat_id: str | None = None) -> list[dict[str, Any]]: ...

    async def idempotent_result(self, gateway_id: str, key: str) -> dict[str, Any] | None: ...

    async def prune(self, before: float, keys_before: float) -> None: ...

    async def pending_platform_sends(
        self, platform: str, bot_id: str, limit: int = 100
    ) -> list[PlatformSend]: ...

    async def platform_send_by_key(self, gateway_id: str, key: str) -> PlatformSend | None: ...

    async def platform_send(self, send_id: str) -> PlatformSend | None: ...

    async def platform_sends(self) -> list[PlatformSend]: ...

    def note_platform_attempt(self, send_id: str, error: str) -> None: ...

    async def finish_platform_send(self, send: PlatformSend, result: dict[str, Any], now: float) -> None: ...

    async def flush(self) -> None: ...

    async def close(self) -> None: ...


async def import_into(store: ConnectorStore, path: str, now: float) -> dict[str, int] | None:
    """Import the SQLite connector database at ``path`` into the PostgreSQL ``store`` (see
    ``relay/connector/pg/importer.py``): the rows inserted per table, ``{}`` when it was imported
    before, None when there is no such file. Raises ``StoreOpenError`` naming the file and why
    when it cannot be imported (nothing committed or renamed) or when its rename failed after
    the commit (the message says so; the next start only renames it)."""
    from relay.connector.pg.importer import SqliteImportError, import_sqlite
    from relay.connector.pg.store import PgStore

    assert isinstance(store, PgStore)
    try:
        return await import_sqlite(path, store, now)
    except SqliteImportError as exc:
        raise StoreOpenError(f"--import-sqlite {exc}") from None
    except Exception as exc:
        raise StoreOpenError(
            f"--import-sqlite {path}: copying into {redact_url(store.url)} failed: {_scrub(store.url, exc)}"
        ) from None
