"""Fixtures shared across the suite."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from tests.fake_llm import FakeLLM
from tests.pgcluster import SKIP_ENV, ClusterError, fresh_schema, start_or_reuse
from tests.stack import Stack


@pytest.fixture(scope="session")
def pg_server() -> Iterator[str]:
    """The URL of a PostgreSQL database for the whole run: ``HERMES_TEST_PG_URL``, else a
    throwaway cluster on a free 127.0.0.1 port (``tests/pgcluster.py``), stopped at the end.
    No server binaries fail the test loudly, unless ``HERMES_TEST_PG_SKIP=1`` skips it."""
    try:
        url, cluster = start_or_reuse()
    except ClusterError as exc:
        if os.environ.get(SKIP_ENV) == "1":
            pytest.skip(f"PostgreSQL tests skipped ({SKIP_ENV}=1): {exc}")
        pytest.fail(str(exc))
    try:
        yield url
    finally:
        if cluster is not None:
            cluster.stop()


@pytest.fixture
async def pg_url(pg_server: str) -> AsyncIterator[str]:
    """A URL on an empty schema of its own in the test PostgreSQL database (dropped after)."""
    async with fresh_schema(pg_server) as url:
        yield url


@pytest.fixture
async def llm() -> AsyncIterator[FakeLLM]:
    """A fake OpenAI-compatible provider on 127.0.0.1 that records every request."""
    f = await FakeLLM().start()
    yield f
    await f.close()


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    """A relay process, a sidecar process and a fake provider on 127.0.0.1 (``tests/stack.py``)."""
    llm = await FakeLLM().start()
    st = Stack(tmp_path, llm)
    yield st
    await st.close()
    await llm.close()
