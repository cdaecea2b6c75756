"""A throwaway PostgreSQL cluster for tests and benches, from the server binaries on this machine.

``pg_url()`` is ``HERMES_TEST_PG_URL`` when set; otherwise ``ThrowawayCluster`` runs ``initdb`` and
``pg_ctl start`` on a free 127.0.0.1 port in a temporary folder (as the ``postgres`` user when
this process is root: the server refuses to run as root) and ``stop()`` removes it again.
Missing binaries are an error unless ``HERMES_TEST_PG_SKIP=1`` opts out (then PostgreSQL tests
are skipped): in CI a PostgreSQL test must never be silently skipped.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

PG_BIN_DIRS = ("/usr/lib/postgresql/15/bin", "/usr/lib/postgresql/16/bin", "/usr/lib/postgresql/17/bin")
"""Where the server binaries (``initdb``, ``pg_ctl``) are looked for, first hit wins (also PATH)."""
URL_ENV = "HERMES_TEST_PG_URL"
"""A ready database URL to use instead of a throwaway cluster (its tables are dropped per test)."""
SKIP_ENV = "HERMES_TEST_PG_SKIP"
"""``1``: skip PostgreSQL tests when no server binaries are found (never set in CI)."""


class ClusterError(RuntimeError):
    """The throwaway cluster could not be made or started (the message says which step and why)."""


def pg_bin_dir() -> Path | None:
    """The folder holding ``initdb`` and ``pg_ctl``, or None when there is none."""
    for d in PG_BIN_DIRS:
        if (Path(d) / "initdb").is_file():
            return Path(d)
    found = shutil.which("initdb")
    return Path(found).parent if found else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ThrowawayCluster:
    """One PostgreSQL cluster in a temporary folder, on ``127.0.0.1:<port>``, trust auth.

    ``start()`` returns the URL of its ``postgres`` database; ``stop()`` stops the server
    (``pg_ctl stop -m immediate``) and removes the folder. Raises ``ClusterError``.
    """

    def __init__(self, bin_dir: Path) -> None:
        self.bin_dir = bin_dir
        self.dir = Path(tempfile.mkdtemp(prefix="hermes-pg-"))
        self.data = self.dir / "data"
        self.port = _free_port()
        self._as_postgres = os.geteuid() == 0

    def _run(self, *args: str) -> None:
        cmd = [str(self.bin_dir / args[0]), *args[1:]]
        if self._as_postgres:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
        if done.returncode != 0:
            raise ClusterError(f"{args[0]} failed ({done.returncode}): {(done.stderr or done.stdout)[-800:]}")

    def start(self) -> str:
        """``initdb`` (trust auth, no fsync at init) and ``pg_ctl start -w``; the server's URL."""
        if self._as_postgres:
            pw = pwd.getpwnam("postgres")
            os.chown(self.dir, pw.pw_uid, pw.pw_gid)
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8")
        opts = (
            f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c max_connections=200"
            " -c shared_buffers=64MB"
        )
        self._run("pg_ctl", "-D", str(self.data), "-o", opts, "-l", str(self.dir / "log"), "-w", "start")
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def stop(self) -> None:
        """Stop the server at once (``-m immediate``) and remove its folder."""
        try:
            self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)


def start_or_reuse() -> tuple[str, ThrowawayCluster | None]:
    """``(url, cluster)``: ``HERMES_TEST_PG_URL`` (cluster None) or a new throwaway cluster.
    Raises ``ClusterError`` when there is neither (binaries missing, start failed)."""
    url = os.environ.get(URL_ENV)
    if url:
        return url, None
    bin_dir = pg_bin_dir()
    if bin_dir is None:
        raise ClusterError(
            f"no PostgreSQL server binaries (looked in {', '.join(PG_BIN_DIRS)} and PATH): install"
            f" postgresql, set {URL_ENV}, or set {SKIP_ENV}=1 to skip the PostgreSQL tests"
        )
    cluster = ThrowawayCluster(bin_dir)
    try:
        return cluster.start(), cluster
    except BaseException:
        cluster.stop()
        raise


def with_search_path(url: str, schema: str) -> str:
    """``url`` whose connections use ``schema`` (asyncpg passes unknown query keys to the server)."""
    return f"{url}{'&' if '?' in url else '?'}search_path={schema}"


@asynccontextmanager
async def fresh_schema(url: str) -> AsyncIterator[str]:
    """A new, empty schema in the database of ``url``; yields a URL using it, drops it after."""
    import asyncpg  # the tests that use PostgreSQL need it; the others never import it

    schema = f"t_{uuid.uuid4().hex[:16]}"
    con = await asyncpg.connect(url)
    try:
        await con.execute(f"CREATE SCHEMA {schema}")
    finally:
        await con.close()
    try:
        yield with_search_path(url, schema)
    finally:
        con = await asyncpg.connect(url)
        try:
            await con.execute(f"DROP SCHEMA {schema} CASCADE")
        finally:
            await con.close()
