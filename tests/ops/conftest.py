"""Fixtures of the operator page tests: a real in-process sidecar on seeded state."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.runtime.sidecar import Sidecar
from tests.ops.seed import seed


@pytest.fixture
async def seeded_sidecar(tmp_path: Path) -> AsyncIterator[Sidecar]:
    """A sidecar (no relay, FakeClock at ``seed.NOW``, internal port on) over a seeded state.db."""
    s = await seed(tmp_path / "home")
    sc = Sidecar(s.config, port=0, clock=s.clock(), env=s.env, metrics_port=0)
    await sc.start()
    await sc.ops.history.flush()  # the start row is in state.db before anyone reads
    yield sc
    await sc.shutdown()
