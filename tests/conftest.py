"""Fixtures shared across the suite."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.fake_llm import FakeLLM
from tests.stack import Stack


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
